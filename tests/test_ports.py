"""Ports picked free can be taken before the process they are for listens: every start moves to a new
free port then, and every wait for a process ends as soon as it has died, with the end of its log.

A port is "taken" here by a socket listening on it, opened with SO_REUSEPORT as gRPC servers open
theirs, so a process that would share a port instead of refusing it is caught too. The race itself
(free when picked or checked, taken by the time the process binds) is arranged by handing out the
taken port as the first free one, and by checks that call it free."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authsim.cluster.errors import ClusterError, PortInUseError
from authsim.cluster.layout import ClusterLayout, EtcdLayout
from authsim.cluster.local import etcd_server, launcher, processes
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.ports import free_port, port_is_free
from authsim.cluster.local.state import ClusterState
from authsim.cluster.local.target_process import start_target, target_marker, wait_listening
from authsim.cluster.targets.trust import set_default_trust
from tests.certs import cluster_ca, rsa_key

CLUSTER = "mycluster"


@pytest.fixture
def taken() -> Iterator[Callable[[], int]]:
    """Opens a listening socket on a free port and returns the port; all are closed after the test."""
    sockets: list[socket.socket] = []

    def take() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sockets.append(sock)
        port: int = sock.getsockname()[1]
        return port

    yield take
    for sock in sockets:
        sock.close()


def hand_out_first(monkeypatch: pytest.MonkeyPatch, module: object, ports: list[int | None]) -> None:
    """`module.free_port` returns `ports` first (None: a free one), then free ones; `module.port_is_free`
    calls them free."""
    queue = list(ports)

    def handed_out(host: str = "127.0.0.1") -> int:
        return (queue.pop(0) if queue else None) or free_port(host)

    def called_free(port: int, host: str = "127.0.0.1") -> bool:
        return port in ports or port_is_free(port, host)

    monkeypatch.setattr(module, "free_port", handed_out)
    monkeypatch.setattr(module, "port_is_free", called_free)


def test_etcd_moves_off_a_picked_port_taken_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: Callable[[], int]
) -> None:
    busy = taken()
    queue = [busy]
    monkeypatch.setattr(etcd_server, "free_port", lambda host: queue.pop(0) if queue else free_port(host))
    server = EtcdServer.start(tmp_path / "etcd" / "data")
    try:
        assert busy not in (server.client_port, server.peer_port)
        assert server.pid is not None and processes.listens_on(server.pid, server.client_port)
        assert server.healthy()
    finally:
        server.stop()


def test_etcd_moves_off_a_picked_port_taken_while_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: Callable[[], int]
) -> None:
    """The peer port passes the check, etcd finds it taken and exits: a new etcd on new ports."""
    busy = taken()
    hand_out_first(monkeypatch, etcd_server, [free_port(), busy])
    server = EtcdServer.start(tmp_path / "etcd" / "data")
    try:
        assert busy not in (server.client_port, server.peer_port)
        assert server.healthy()
        log = server.log_path.read_text()
        assert f"127.0.0.1:{busy}: bind: address already in use" in log
    finally:
        server.stop()


def test_etcd_cluster_starts_afresh_when_a_member_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: Callable[[], int]
) -> None:
    """The member on the taken port exits after the others made their data: every member starts again
    on new ports with new data, and they form one cluster."""
    busy = taken()
    hand_out_first(monkeypatch, etcd_server, [busy])
    servers = EtcdServer.start_cluster(tmp_path / "etcd", 3)
    try:
        used = {port for s in servers for port in (s.client_port, s.peer_port)}
        assert busy not in used and len(used) == 6
        assert all(server.healthy() for server in servers)
        logs = "".join(EtcdLayout(tmp_path / "etcd" / s.name).log.read_text() for s in servers)
        assert f"127.0.0.1:{busy}: bind: address already in use" in logs
    finally:
        for server in servers:
            server.stop()


def test_up_moves_a_node_and_a_target_off_picked_ports_taken_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: Callable[[], int]
) -> None:
    """node1's port (picked by the plan) and the desktop target's are taken by the time they bind: each
    starts again on a free port, and cluster.yaml records the ports they listen on."""
    node_port, desktop_port = taken(), taken()
    hand_out_first(monkeypatch, launcher, [node_port, None, desktop_port])  # the plan, node1 again, desktop
    directory = tmp_path / "c"
    state = launcher.up(directory, launcher.UpOptions(nodes=1))
    try:
        recorded = ClusterState.load(directory)
        node, desktop = recorded.node("node1"), recorded.targets["desktop"]
        assert node.address != f"127.0.0.1:{node_port}" and node.address == state.node("node1").address
        assert desktop.address != f"127.0.0.1:{desktop_port}"
        assert node.pid is not None and processes.listens_on(node.pid, int(node.address.rsplit(":", 1)[1]))
        assert desktop.pid is not None
        assert processes.listens_on(desktop.pid, int(desktop.address.rsplit(":", 1)[1]))
        layout = ClusterLayout(directory)
        assert f"cannot listen on 127.0.0.1:{node_port}: [Errno 98]" in layout.node("node1").log.read_text()
        assert "address already in use" in layout.target("desktop").log.read_text()
    finally:
        launcher.down(directory)


def test_a_target_that_dies_ends_the_wait_at_once_with_its_log(
    tmp_path: Path, taken: Callable[[], int]
) -> None:
    set_default_trust(tmp_path, [cluster_ca(CLUSTER, rsa_key(1)).pem], [])
    busy = taken()
    process = start_target(tmp_path, "desktop", busy, CLUSTER, f"127.0.0.1:{free_port()}")  # no server there
    log = ClusterLayout(tmp_path).target("desktop").log
    try:
        with pytest.raises(PortInUseError) as raised:
            wait_listening(process, f"127.0.0.1:{busy}", log, timeout=60)
        assert process.returncode is not None  # it had exited: the wait ended then, not at the timeout
        message = str(raised.value)
        assert f"the server for 127.0.0.1:{busy} exited during start-up with code" in message
        assert f"end of {log}: " in message and "address already in use" in message and "\n" not in message
    finally:
        processes.stop(process.pid, target_marker(tmp_path, "desktop"))


def test_a_node_that_dies_ends_the_wait_at_once_with_its_log(tmp_path: Path) -> None:
    """node1 cannot make its local socket folder and exits: `up` fails within seconds of that, its
    error one line ending with the node's own."""
    directory = tmp_path / "c"
    ClusterLayout(directory).node("node1").local_socket_dir.parent.mkdir(parents=True)
    ClusterLayout(directory).node("node1").local_socket_dir.write_text("not a folder")
    waiting_since: list[float] = []

    def progress(message: str, ready: int, total: int) -> None:
        if message.startswith("waiting for") and not waiting_since:
            waiting_since.append(time.monotonic())

    with pytest.raises(ClusterError) as raised:
        launcher.up(directory, launcher.UpOptions(nodes=1), progress)
    assert time.monotonic() - waiting_since[0] < 10  # the wait allows 60 s
    message = str(raised.value)
    assert not isinstance(raised.value, PortInUseError) and "\n" not in message
    assert message.startswith("node node1 exited during start-up with code 2; end of ")
    assert "auth_node node1: error: local socket folder" in message and "must be a real folder" in message
