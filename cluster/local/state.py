"""The cluster's state file `cluster.yaml`: name and id, etcd endpoints and the node processes."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from authsim.auth_node.events import DEFAULT_RETENTION
from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.store import EtcdTLS
from authsim.hsm.pkcs11_store import DEFAULT_CALL_TIMEOUT
from authsim.hsm.provision import HSM_INPROCESS

DEFAULT_DIR = Path(".authsim")


def cluster_dir(path: str | Path | None) -> Path:
    """`--dir`, else $AUTHSIM_DIR, else ./.authsim, as an absolute path."""
    return Path(path or os.environ.get("AUTHSIM_DIR") or DEFAULT_DIR).absolute()


def host_names(directory: Path) -> dict[str, str]:
    """host id -> node name for the nodes provisioned in `directory` (empty for a remote cluster)."""
    nodes = ClusterLayout(directory).provisioned_nodes()
    return {node.host_id.read_text().strip(): name for name, node in nodes.items()}


@dataclass
class NodeEntry:
    name: str
    address: str
    pid: int | None = None
    hsm_pid: int | None = None  # its HSM process (`hsm: process`), started in its own session
    user: str | None = None  # the OS user it runs as, isolated from its token (hsm_users); None: ours
    not_isolated: str | None = None  # why a root launcher could not isolate it (hsm_users.unreachable)


def admin_address(directory: Path, entry: NodeEntry) -> str:
    """Where the admin tools reach `entry`: its local socket (`unix:PATH`) when the node's dir is in
    `directory` and the socket exists, which a flood on its TCP port cannot fill; else its TCP address."""
    socket = ClusterLayout(directory).node(entry.name).local_socket
    return f"unix:{socket}" if socket.is_socket() else entry.address


@dataclass
class EtcdEntry:
    endpoints: list[str]
    embedded: bool
    client_port: int | None = None
    peer_port: int | None = None
    pid: int | None = None
    tls: EtcdTLS | None = None  # client TLS to an external etcd (`up --etcd-cacert/--etcd-cert/--etcd-key`)


@dataclass
class TargetEntry:
    """A downstream target process: `desktop` (NTAuth) or `db` (TLS client-certificate trust)."""

    address: str
    pid: int | None = None


@dataclass
class ServerEntry:
    """A real server behind a target: `kdc` (the desktop's KDC) or `postgres` (the database's)."""

    address: str
    pid: int | None = None


@dataclass
class ClusterState:
    cluster_name: str
    etcd: EtcdEntry
    nodes: list[NodeEntry] = field(default_factory=list)
    targets: dict[str, TargetEntry] = field(default_factory=dict)
    servers: dict[str, ServerEntry] = field(default_factory=dict)
    event_retention: int = DEFAULT_RETENTION  # `up --event-retention`; every node's config gets it
    cluster_id: str | None = None  # made by the first `up` and kept in etcd too; None before that
    # `up --hsm`: `process` (an HSM process per node) or `inprocess`; a new cluster's is the launcher's
    # DEFAULT_HSM, one recorded before `hsm` was (its nodes load their tokens themselves) is `inprocess`
    hsm: str = HSM_INPROCESS
    hsm_timeout: float = DEFAULT_CALL_TIMEOUT  # `up --hsm-timeout`: seconds a token call may take

    @staticmethod
    def path(directory: Path) -> Path:
        return ClusterLayout(directory).state_file

    def save(self, directory: Path) -> None:
        data = asdict(self)
        data["etcd"]["tls"] = self.etcd.tls.to_dict() if self.etcd.tls else None
        tmp = self.path(directory).with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(self.path(directory))

    @classmethod
    def load(cls, directory: Path) -> ClusterState:
        path = cls.path(directory)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ClusterError(
                f"no cluster in {directory} ({path.name} missing): run `authsim up --dir {directory}`"
            ) from None
        return cls(
            cluster_name=data["cluster_name"],
            etcd=EtcdEntry(**{**data["etcd"], "tls": EtcdTLS.from_dict(data["etcd"].get("tls"))}),
            nodes=[NodeEntry(**n) for n in data["nodes"]],
            targets={k: TargetEntry(**v) for k, v in (data.get("targets") or {}).items()},
            servers={k: ServerEntry(**v) for k, v in (data.get("servers") or {}).items()},
            event_retention=data.get("event_retention", DEFAULT_RETENTION),
            cluster_id=data.get("cluster_id"),
            hsm=data.get("hsm", HSM_INPROCESS),
            hsm_timeout=data.get("hsm_timeout", DEFAULT_CALL_TIMEOUT),
        )

    def node(self, name: str) -> NodeEntry:
        for entry in self.nodes:
            if entry.name == name:
                return entry
        known = ", ".join(n.name for n in self.nodes)
        raise ClusterError(f"no node named {name!r} in this cluster (nodes: {known})")
