"""Limits on callers that have not authenticated (issue 10, item 4): a local user flooding a node's TCP port
with idle connections neither fills the node's file descriptors nor locks the admin out.

The attacker is `nobody` in processes of its own (the system python, standard library only); the node
closes every idle connection within its handshake deadline and holds at most its TCP quota at a time,
while the admin signs through the node's local socket (a folder only the cluster's OS user can enter).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsim.auth_node.listeners import (
    HANDSHAKE_TIMEOUT_MS,
    MAX_SOCKET_PATH,
    TCP_CONNECTION_QUOTA,
    local_socket,
)
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout, NodeLayout
from authsim.cluster.local.launcher import admin_identity
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.state import admin_address
from tests import attacker

WORKER = Path(__file__).with_name("_flood_worker.py")
FLOOD_PROCESSES = 2
CONNECTIONS_EACH = 10_000  # 20,000 in all: the per-process file limit is 20,000 here
HANDSHAKE_DEADLINE = HANDSHAKE_TIMEOUT_MS / 1000
SLACK = 5.0  # seconds beyond the deadline for one connection (deadline + slack is issue 10's 10 s); in a
# flood a connection also waits in the kernel's backlog until the node accepts it (the deadline starts
# there), which on a busy machine takes longer than the slack, so the flood checks that all are closed
SIGN_WITHIN = 2.0  # seconds: the bound for the admin's sign under the flood


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One node, in a folder every local user may enter (as a home dir often is): only the socket
    folder's own mode keeps `nobody` away from the local socket. In-process HSM: with HSM processes
    as root the node runs as its own user and its whole dir is closed to others
    (tests/test_hsm_isolation.py), which would hide the socket folder's mode from this test."""
    root = Path(tempfile.mkdtemp(prefix="flood-"))
    os.chmod(root, 0o755)
    try:
        with local_cluster(root / "c", nodes=1, cluster_name="flooded", hsm="inprocess") as running:
            yield running
    finally:
        shutil.rmtree(root)


def _tcp_port(cluster: LocalCluster) -> int:
    return int(cluster.state.node("node1").address.rsplit(":", 1)[1])


def _start_flood(port: int) -> list[subprocess.Popen[str]]:
    """The attacker's processes, as `nobody`, each opening CONNECTIONS_EACH idle connections."""
    watch = HANDSHAKE_DEADLINE + 5 * SLACK  # ends as soon as all are closed; a busy machine drains
    # the node's accept backlog slowly, and without the deadline the connections stay open for ever
    argv = ["/usr/bin/python3", str(WORKER), str(port), str(CONNECTIONS_EACH), str(watch)]
    return [
        subprocess.Popen(
            attacker.as_attacker(*argv),
            env=attacker.ENV,
            cwd="/",
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(FLOOD_PROCESSES)
    ]


def _report(process: subprocess.Popen[str]) -> dict[str, float]:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"flood process {process.pid} exited without a report (status {process.wait()})"
    report: dict[str, float] = json.loads(line)
    return report


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class FileCount(threading.Thread):
    """The most files `pid` held at once, sampled every 20 ms until `stop()`."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.most = _open_files(pid)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.most = max(self.most, _open_files(self.pid))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.most


def test_admin_signs_while_nobody_floods_the_tcp_port(cluster: LocalCluster, tmp_path: Path) -> None:
    entry = cluster.state.node("node1")
    assert entry.pid is not None
    assert admin_address(cluster.directory, entry).startswith("unix:")
    before = _open_files(entry.pid)
    node_files = FileCount(entry.pid)
    node_files.start()
    flood = _start_flood(_tcp_port(cluster))
    try:
        opened = [_report(p) for p in flood]
        held = sum(int(r["opened"]) for r in opened)
        assert held >= 19_000, opened  # the connections were made (the kernel accepts them for the node)
        start = time.monotonic()
        cluster.sign("db_client", "alice", tmp_path / "alice")
        took = time.monotonic() - start
        watched = [_report(p) for p in flood]
        most = node_files.stop()
        print(f"held {held} connections; node files {before} -> at most {most}; sign {took:.3f}s; {watched}")
        assert took < SIGN_WITHIN, f"sign took {took:.2f}s under the flood"
        assert most < before + TCP_CONNECTION_QUOTA + 100, (before, most)
        for process in flood:
            assert process.wait(timeout=30) == 0
    finally:
        for process in flood:  # our children, stopped by PID
            if process.poll() is None:
                process.kill()
            process.wait()
    assert all(r["open"] == 0 for r in watched), watched  # every idle connection was closed by the node
    log = ClusterLayout(cluster.directory).node("node1").log.read_text()
    assert "File descriptor limit reached" not in log
    with NodeClient(entry.address, admin_identity(cluster.directory), "node1", timeout=3.0) as tcp:
        assert tcp.health() == "SERVING"  # the TCP port serves again once the flood is over


def test_a_tls_client_that_sends_nothing_after_the_handshake_is_dropped(cluster: LocalCluster) -> None:
    """Even with the admin's certificate, a connection that never starts HTTP/2 is closed at the deadline."""
    identity = admin_identity(cluster.directory)
    context = ssl.create_default_context(cafile=identity.peer_ca)
    context.load_cert_chain(identity.cert, identity.key)
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(
            ("127.0.0.1", _tcp_port(cluster)), timeout=HANDSHAKE_DEADLINE + SLACK
        ) as raw,
        context.wrap_socket(raw) as conn,
    ):
        start = time.monotonic()
        try:
            while conn.recv(1024):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        dropped_after = time.monotonic() - start
    print(f"authenticated TLS connection without HTTP/2 dropped after {dropped_after:.2f}s")
    assert dropped_after <= HANDSHAKE_DEADLINE + SLACK


def test_the_local_socket_folder_is_private(cluster: LocalCluster) -> None:
    folder = ClusterLayout(cluster.directory).node("node1").local_socket_dir
    info = os.lstat(folder)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.geteuid()
    connect = (
        f"import os, socket; os.listdir({str(folder.parent)!r}); print('reached the node dir', flush=True); "
        f"socket.socket(socket.AF_UNIX).connect({str(folder / 'node.sock')!r})"
    )
    attempt = subprocess.run(
        attacker.as_attacker("/usr/bin/python3", "-c", connect),
        env=attacker.ENV,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "reached the node dir" in attempt.stdout, attempt.stderr
    assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt.stderr


def test_a_foreign_or_symlinked_socket_folder_is_refused(tmp_path: Path) -> None:
    layout = NodeLayout(tmp_path / "n")
    layout.directory.mkdir()
    layout.local_socket_dir.mkdir(mode=0o755)
    os.chmod(layout.local_socket_dir, 0o755)
    with pytest.raises(ClusterError, match="mode 0700"):
        local_socket(layout)
    os.rmdir(layout.local_socket_dir)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    layout.local_socket_dir.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ClusterError, match="real folder"):
        local_socket(layout)


def test_a_socket_path_too_long_falls_back_to_tcp(tmp_path: Path) -> None:
    layout = NodeLayout(tmp_path / ("n" * MAX_SOCKET_PATH))
    assert local_socket(layout) is None
