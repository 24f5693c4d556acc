"""The `cert_authority` resource: one per CA type, its keys and their self-signed CA certificates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.yaml_codec import dump_yaml


@dataclass(frozen=True)
class CAKeyPair:
    """A CA key: its self-signed CA certificate (PEM) and the token key it belongs to."""

    cert_pem: str
    key: KeyRef
    public_key_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"cert": self.cert_pem, "key": self.key.to_dict(), "public_key_hash": self.public_key_hash}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CAKeyPair:
        return cls(str(data["cert"]), KeyRef.from_dict(data["key"]), str(data["public_key_hash"]))

    def to_proto(self) -> pb.CAKeyPair:
        key = pb.KeyRef(host_id=self.key.host_id, key_id=self.key.key_id)
        return pb.CAKeyPair(cert=self.cert_pem, key=key, public_key_hash=self.public_key_hash)

    @classmethod
    def from_proto(cls, msg: pb.CAKeyPair) -> CAKeyPair:
        return cls(msg.cert, KeyRef(msg.key.host_id, msg.key.key_id), msg.public_key_hash)


@dataclass(frozen=True)
class CertAuthority:
    """The CA of one type: active keys sign, additional trusted keys are trusted and await rotation."""

    cluster_name: str
    ca_type: str
    active_keys: tuple[CAKeyPair, ...] = ()
    additional_trusted_keys: tuple[CAKeyPair, ...] = ()
    rotation_state: str = "standby"
    revision: int = field(default=0, compare=False)

    def all_keys(self) -> list[tuple[str, CAKeyPair]]:
        """Every key with its role, active first."""
        return [("active", k) for k in self.active_keys] + [
            ("additional", k) for k in self.additional_trusted_keys
        ]

    def keys_of_host(self, host_id: str) -> list[tuple[str, CAKeyPair]]:
        return [(role, k) for role, k in self.all_keys() if k.key.host_id == host_id]

    def with_additional_key(self, pair: CAKeyPair) -> CertAuthority:
        return replace(self, additional_trusted_keys=(*self.additional_trusted_keys, pair))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cert_authority",
            "sub_kind": self.ca_type,
            "version": "v2",
            "metadata": {"name": self.cluster_name, "revision": self.revision},
            "spec": {
                "cluster_name": self.cluster_name,
                "type": self.ca_type,
                "active_keys": {"tls": [k.to_dict() for k in self.active_keys]},
                "additional_trusted_keys": {"tls": [k.to_dict() for k in self.additional_trusted_keys]},
                "rotation": {"state": self.rotation_state},
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], revision: int = 0) -> CertAuthority:
        spec = data["spec"]
        return cls(
            cluster_name=str(spec["cluster_name"]),
            ca_type=str(spec["type"]),
            active_keys=tuple(CAKeyPair.from_dict(k) for k in spec["active_keys"]["tls"]),
            additional_trusted_keys=tuple(
                CAKeyPair.from_dict(k) for k in spec["additional_trusted_keys"]["tls"]
            ),
            rotation_state=str(spec.get("rotation", {}).get("state", "standby")),
            revision=revision,
        )

    def to_json(self) -> bytes:
        """Stored form in etcd (the revision is etcd's own, so it is not stored)."""
        data = self.to_dict()
        del data["metadata"]["revision"]
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, revision: int = 0) -> CertAuthority:
        return cls.from_dict(json.loads(raw), revision)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def to_proto(self) -> pb.CertAuthority:
        return pb.CertAuthority(
            cluster_name=self.cluster_name,
            type=self.ca_type,
            revision=self.revision,
            active_keys=[k.to_proto() for k in self.active_keys],
            additional_trusted_keys=[k.to_proto() for k in self.additional_trusted_keys],
            rotation_state=self.rotation_state,
        )

    @classmethod
    def from_proto(cls, msg: pb.CertAuthority) -> CertAuthority:
        return cls(
            cluster_name=msg.cluster_name,
            ca_type=msg.type,
            active_keys=tuple(CAKeyPair.from_proto(k) for k in msg.active_keys),
            additional_trusted_keys=tuple(CAKeyPair.from_proto(k) for k in msg.additional_trusted_keys),
            rotation_state=msg.rotation_state,
            revision=msg.revision,
        )
