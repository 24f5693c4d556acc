"""A key reference, as stored in etcd: which node's token holds a key and its CKA_ID there (SPEC §5)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from authsim.cluster.errors import ValidationError, quoted

_HEX = re.compile(r"^(?:[0-9a-f]{2})+$")


@dataclass(frozen=True)
class KeyRef:
    """Which node's token holds a key (`host_id`) and its CKA_ID there (`key_id`, lower-case hex)."""

    host_id: str
    key_id: str

    def __post_init__(self) -> None:
        problems = []
        if not self.host_id:
            problems.append("host_id: must not be empty")
        if not _HEX.fullmatch(self.key_id):
            problems.append(f"key_id: must be lower-case hex of the key's CKA_ID, got {quoted(self.key_id)}")
        if problems:
            raise ValidationError(problems)

    def to_dict(self) -> dict[str, str]:
        return {"host_id": self.host_id, "key_id": self.key_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyRef:
        return cls(host_id=str(data.get("host_id", "")), key_id=str(data.get("key_id", "")))
