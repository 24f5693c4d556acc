"""What `authsim status` reports: each node's process, health and the CA keys its token holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from authsim.cluster.errors import AuthSimError
from authsim.cluster.local import processes
from authsim.cluster.local.launcher import admin_identity, etcd_marker, node_marker
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.state import ClusterState, admin_address


@dataclass(frozen=True)
class HeldKeyRow:
    ca_type: str
    role: str
    public_key_hash: str


@dataclass(frozen=True)
class NodeRow:
    name: str
    address: str
    pid: int | None
    health: str
    host_id: str = ""
    keys: list[HeldKeyRow] = field(default_factory=list)


@dataclass(frozen=True)
class ClusterStatus:
    state: ClusterState
    etcd_running: bool | None  # None when etcd is external
    nodes: list[NodeRow]
    problems: list[str] = field(default_factory=list)  # stored resources that break a rule, with the fix


def collect_status(directory: Path) -> ClusterStatus:
    state = ClusterState.load(directory)
    identity = admin_identity(directory)
    rows = []
    problems: list[str] = []
    for entry in state.nodes:
        if not processes.is_running(entry.pid, node_marker(directory, entry.name)):
            rows.append(NodeRow(entry.name, entry.address, None, "STOPPED"))
            continue
        with NodeClient(admin_address(directory, entry), identity, entry.name, timeout=3.0) as client:
            health = client.health()
            try:
                status = client.node_status()
            except AuthSimError:
                rows.append(NodeRow(entry.name, entry.address, entry.pid, health))
                continue
        keys = [HeldKeyRow(k.ca_type, k.role, k.public_key_hash) for k in status.keys]
        problems += [p for p in status.problems if p not in problems]  # every node reads the same etcd
        rows.append(NodeRow(entry.name, entry.address, entry.pid, health, status.host_id, keys))
    etcd_running = (
        processes.is_running(state.etcd.pid, etcd_marker(directory)) if state.etcd.embedded else None
    )
    return ClusterStatus(state, etcd_running, rows, problems)
