"""A public key named the way every command displays it: a unique prefix of its hash (SPEC §5 hash).

Commands show 16 hex characters of a key's hash; any prefix of at least 8, in any case, names the key
when exactly one of the keys the cluster knows for that CA type starts with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from authsim.cluster.errors import NotFoundError, ValidationError, quoted

MIN_PREFIX = 8
SHOWN = 16  # how many hex characters of a hash messages show
_HEX = re.compile(r"[0-9a-f]{1,64}")


def resolve_key_hash(value: str, known: Iterable[str], where: str, field: str = "public_key") -> str:
    """The one hash among `known` starting with `value`; `where` names what `known` are the keys of."""
    prefix = value.strip().lower()
    if not _HEX.fullmatch(prefix):
        raise ValidationError(
            [
                f"{field}: must be a public key hash or a prefix of one: 8 to 64 hex characters "
                f"(any case), got {quoted(value)}"
            ]
        )
    if len(prefix) < MIN_PREFIX:
        count = len(prefix)
        raise ValidationError([f"{field}: {prefix} is {count} hex characters, give at least {MIN_PREFIX}"])
    keys = sorted(set(known))
    matches = [k for k in keys if k.startswith(prefix)]
    if len(matches) > 1:
        raise ValidationError(
            [
                f"{field}: {prefix} is the start of {len(matches)} keys of {where}: {', '.join(matches)}; "
                "give more characters"
            ]
        )
    if not matches:
        listed = ", ".join(k[:SHOWN] for k in keys) or "none"
        raise NotFoundError(f"{field}: no key of {where} starts with {prefix} (its keys: {listed})")
    return matches[0]
