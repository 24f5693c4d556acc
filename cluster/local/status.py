"""What `authsim status` reports: etcd (process, and whether it answers a read), each node's process,
health and the CA keys its token holds, and each target and the real server behind it (process, and
whether its port answers); and which of them are not healthy (`unhealthy`), for the exit status."""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.errors import AuthSimError, StoreAccessError, StoreUnavailableError
from authsim.cluster.local import downstream, hsm_process, hsm_users, processes
from authsim.cluster.local.launcher import admin_identity, etcd_marker, node_marker
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.state import ClusterState, EtcdEntry, admin_address
from authsim.cluster.local.target_process import target_marker
from authsim.cluster.store.keys import cluster_prefix
from authsim.cluster.store.probe import check_etcd
from authsim.hsm.provision import HSM_PROCESS

PING_TIMEOUT = 1.0


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
    hsm: str = ""  # its HSM process: RUNNING, PAUSED, STOPPED and its isolation; `in-process` without one


@dataclass(frozen=True)
class TargetRow:
    """A target process or the real server behind one: SERVING when its port accepts a connection,
    NOT LISTENING when its process runs but the port does not answer, STOPPED without its process."""

    name: str
    address: str
    pid: int | None
    health: str


@dataclass(frozen=True)
class ClusterStatus:
    state: ClusterState
    etcd_running: bool | None  # None when etcd is external
    nodes: list[NodeRow]
    targets: list[TargetRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # stored resources that break a rule, with the fix
    expiry_alerts: list[ExpiryAlertRow] = field(default_factory=list)  # by the nodes' clocks
    etcd_health: str = "SERVING"  # SERVING, STOPPED (the embedded etcd's process), UNREACHABLE, REFUSED
    etcd_error: str = ""  # why etcd is not SERVING

    def unhealthy(self) -> list[str]:
        """Each part that is not healthy, as `NAME HEALTH`, and each stored resource that breaks a rule;
        empty when everything is (expiry alerts are warnings, not failures)."""
        failed = [] if self.etcd_health == "SERVING" else [f"etcd {self.etcd_health}"]
        for node in self.nodes:
            if node.health != "SERVING":
                failed.append(f"{node.name} {node.health}")
            if node.hsm in (hsm_process.STOPPED, hsm_process.PAUSED):
                failed.append(f"{node.name} HSM {node.hsm}")
        failed += [f"{t.name} {t.health}" for t in self.targets if t.health != "SERVING"]
        return failed + [f"problem: {p}" for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (`authsim status --format json|yaml`)."""
        etcd = self.state.etcd
        return {
            "healthy": not self.unhealthy(),
            "unhealthy": self.unhealthy(),
            "cluster_name": self.state.cluster_name,
            "cluster_id": self.state.cluster_id,
            "etcd": {
                "endpoints": etcd.endpoints,
                "embedded": etcd.embedded,
                "tls": etcd.tls is not None,
                "pid": etcd.pid if self.etcd_running else None,
                "health": self.etcd_health,
                "error": self.etcd_error,
            },
            "nodes": [asdict(n) for n in self.nodes],
            "targets": [asdict(t) for t in self.targets],
            "problems": self.problems,
            "expiry_alerts": [asdict(a) for a in self.expiry_alerts],
        }


@dataclass(frozen=True)
class ExpiryAlertRow:
    """An override certificate at an expiry alert level (RFD 0237), as a node reports it."""

    ca_type: str
    public_key_hash: str
    node_name: str
    message: str
    disabled: bool


def expiry_line(alert: pb.ExpiryAlert | ExpiryAlertRow) -> str:
    """`expiry alert: windows key 4f2bb8a3eb309767 (node2) low: 150 days left (not after …)`."""
    where = f" ({alert.node_name})" if alert.node_name else ""
    disabled = " [entry disabled]" if alert.disabled else ""
    return f"expiry alert: {alert.ca_type} key {alert.public_key_hash[:16]}{where} {alert.message}{disabled}"


def collect_status(directory: Path) -> ClusterStatus:
    state = ClusterState.load(directory)
    identity = admin_identity(directory)
    rows = []
    problems: list[str] = []
    alerts: list[ExpiryAlertRow] = []
    for entry in state.nodes:
        hsm = hsm_process.state_of(directory, state, entry)
        if state.hsm == HSM_PROCESS:
            hsm = f"{hsm} ({hsm_users.describe(entry.user, entry.not_isolated)})"
        if not processes.is_running(entry.pid, node_marker(directory, entry.name)):
            rows.append(NodeRow(entry.name, entry.address, None, "STOPPED", hsm=hsm))
            continue
        with NodeClient(admin_address(directory, entry), identity, entry.name, timeout=3.0) as client:
            health = client.health()
            try:
                status = client.node_status()
            except AuthSimError:
                rows.append(NodeRow(entry.name, entry.address, entry.pid, health, hsm=hsm))
                continue
        keys = [HeldKeyRow(k.ca_type, k.role, k.public_key_hash) for k in status.keys]
        problems += [p for p in status.problems if p not in problems]  # every node reads the same etcd
        for a in status.expiry_alerts:
            row = ExpiryAlertRow(a.ca_type, a.public_key_hash, a.node_name, a.message, a.disabled)
            if all((r.ca_type, r.public_key_hash) != (row.ca_type, row.public_key_hash) for r in alerts):
                alerts.append(row)
        rows.append(NodeRow(entry.name, entry.address, entry.pid, health, status.host_id, keys, hsm))
    etcd_running = (
        processes.is_running(state.etcd.pid, etcd_marker(directory)) if state.etcd.embedded else None
    )
    health, error = ("STOPPED", "") if etcd_running is False else etcd_health(state.etcd, state.cluster_name)
    targets = _target_rows(directory, state)
    return ClusterStatus(state, etcd_running, rows, targets, problems, alerts, health, error)


@dataclass(frozen=True)
class Reachability:
    """What an admin dir can see of its cluster from where it is (`authctl status`): whether etcd
    answers, each node's health over gRPC, whether each target's port answers."""

    etcd_endpoints: list[str]
    etcd_health: str
    etcd_error: str
    nodes: list[TargetRow]
    targets: list[TargetRow]

    def unhealthy(self) -> list[str]:
        failed = [] if self.etcd_health == "SERVING" else [f"etcd {self.etcd_health}"]
        return failed + [f"{r.name} {r.health}" for r in self.nodes + self.targets if r.health != "SERVING"]


def reachability(directory: Path) -> Reachability:
    """etcd, the nodes and the targets of the cluster in `directory`, as seen from here."""
    state = ClusterState.load(directory)
    identity = admin_identity(directory)
    nodes = []
    for entry in state.nodes:
        with NodeClient(admin_address(directory, entry), identity, entry.name, timeout=3.0) as client:
            nodes.append(TargetRow(entry.name, entry.address, None, client.health()))
    targets = [_row(f"{kind} target", t.address, None, True) for kind, t in state.targets.items()]
    targets += [_row(downstream.LABELS[n], s.address, None, True) for n, s in state.servers.items()]
    return Reachability(state.etcd.endpoints, *etcd_health(state.etcd, state.cluster_name), nodes, targets)


def etcd_health(etcd: EtcdEntry, cluster_name: str) -> tuple[str, str]:
    """SERVING when `etcd` answers a read of the cluster's keys with its recorded client identity;
    else UNREACHABLE or REFUSED (the identity), with the reason."""
    try:
        check_etcd(etcd.endpoints, etcd.tls, cluster_prefix(cluster_name))
    except StoreAccessError as e:
        return "REFUSED", str(e)
    except StoreUnavailableError as e:
        return "UNREACHABLE", str(e)
    return "SERVING", ""


def _target_rows(directory: Path, state: ClusterState) -> list[TargetRow]:
    rows = []
    for kind, target in state.targets.items():
        running = processes.is_running(target.pid, target_marker(directory, kind))
        rows.append(_row(f"{kind} target", target.address, target.pid, running))
    for name, server in state.servers.items():
        running = downstream.server_running(directory, name, server)
        rows.append(_row(downstream.LABELS[name], server.address, server.pid, running))
    return rows


def _row(name: str, address: str, pid: int | None, running: bool) -> TargetRow:
    if not running:
        return TargetRow(name, address, None, "STOPPED")
    return TargetRow(name, address, pid, "SERVING" if _answers(address) else "NOT LISTENING")


def _answers(address: str) -> bool:
    """True when `host:port` accepts a TCP connection within PING_TIMEOUT."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=PING_TIMEOUT):
            return True
    except OSError:
        return False
