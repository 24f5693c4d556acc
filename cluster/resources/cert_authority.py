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


ROTATION_PHASES = ("standby", "init", "update_clients", "update_servers", "rollback")
ROTATING_PHASES = ("init", "update_clients", "update_servers")  # a rotation is in progress


@dataclass(frozen=True)
class RotationKey:
    """A key a rotation keeps track of on one node: its token object and its public key hash."""

    key_id: str
    public_key_hash: str

    def to_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "public_key_hash": self.public_key_hash}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RotationKey:
        return cls(str(data["key_id"]), str(data["public_key_hash"]))

    @classmethod
    def of(cls, pair: CAKeyPair) -> RotationKey:
        return cls(pair.key.key_id, pair.public_key_hash)


@dataclass(frozen=True)
class NodeRotation:
    """One node's part of a rotation: its keys before it, its new key, the last phase it finished."""

    old: tuple[RotationKey, ...] = ()
    new: RotationKey | None = None
    done: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": [k.to_dict() for k in self.old],
            "new": None if self.new is None else self.new.to_dict(),
            "done": self.done,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeRotation:
        new = data.get("new")
        return cls(
            tuple(RotationKey.from_dict(k) for k in data.get("old", [])),
            None if new is None else RotationKey.from_dict(new),
            str(data.get("done", "")),
        )


@dataclass(frozen=True)
class Rotation:
    """The `rotation` block: the phase, when the rotation started, the keys active before it (what a
    rollback restores) and each node's part, by host id."""

    phase: str = "standby"
    started: str = ""
    old_active: tuple[str, ...] = ()  # public key hashes
    nodes: dict[str, NodeRotation] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return "in_progress" if self.phase in ROTATING_PHASES else "standby"

    def pending(self) -> list[str]:
        """Host ids whose part of the current phase is not done yet."""
        return [host for host, part in self.nodes.items() if part.done != self.phase]

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "phase": self.phase,
            "started": self.started,
            "old_active": list(self.old_active),
            "nodes": {host: part.to_dict() for host, part in sorted(self.nodes.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rotation:
        return cls(
            phase=str(data.get("phase", "standby")),
            started=str(data.get("started", "")),
            old_active=tuple(str(h) for h in data.get("old_active", [])),
            nodes={str(h): NodeRotation.from_dict(p) for h, p in data.get("nodes", {}).items()},
        )

    def to_proto(self, node_names: dict[str, str]) -> pb.Rotation:
        return pb.Rotation(
            phase=self.phase,
            started=self.started,
            old_active=self.old_active,
            nodes=[
                pb.NodeRotation(
                    host_id=host,
                    node_name=node_names.get(host, ""),
                    old_keys=[k.public_key_hash for k in part.old],
                    new_key="" if part.new is None else part.new.public_key_hash,
                    done=part.done,
                )
                for host, part in sorted(self.nodes.items())
            ],
        )


@dataclass(frozen=True)
class CertAuthority:
    """The CA of one type: active keys sign, additional trusted keys are trusted and await rotation."""

    cluster_name: str
    ca_type: str
    active_keys: tuple[CAKeyPair, ...] = ()
    additional_trusted_keys: tuple[CAKeyPair, ...] = ()
    rotation: Rotation = field(default_factory=Rotation)
    revision: int = field(default=0, compare=False)

    @property
    def rotation_state(self) -> str:
        return self.rotation.state

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
                "rotation": self.rotation.to_dict(),
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
            rotation=Rotation.from_dict(spec.get("rotation", {})),
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

    def to_proto(self, node_names: dict[str, str] | None = None) -> pb.CertAuthority:
        return pb.CertAuthority(
            cluster_name=self.cluster_name,
            type=self.ca_type,
            revision=self.revision,
            active_keys=[k.to_proto() for k in self.active_keys],
            additional_trusted_keys=[k.to_proto() for k in self.additional_trusted_keys],
            rotation_state=self.rotation_state,
            rotation=self.rotation.to_proto(node_names or {}),
        )

    @classmethod
    def from_proto(cls, msg: pb.CertAuthority) -> CertAuthority:
        return cls(
            cluster_name=msg.cluster_name,
            ca_type=msg.type,
            active_keys=tuple(CAKeyPair.from_proto(k) for k in msg.active_keys),
            additional_trusted_keys=tuple(CAKeyPair.from_proto(k) for k in msg.additional_trusted_keys),
            rotation=_rotation_from_proto(msg.rotation),
            revision=msg.revision,
        )


def _rotation_from_proto(msg: pb.Rotation) -> Rotation:
    """The rotation block as a client sees it: hashes only (key ids stay with the nodes)."""
    return Rotation(
        phase=msg.phase or "standby",
        started=msg.started,
        old_active=tuple(msg.old_active),
        nodes={
            n.host_id: NodeRotation(
                tuple(RotationKey("", h) for h in n.old_keys),
                RotationKey("", n.new_key) if n.new_key else None,
                n.done,
            )
            for n in msg.nodes
        },
    )
