"""Node logs: one line per API call, rotated by size, read and followed with `authsim logs`."""

from __future__ import annotations

import asyncio
import gc
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.auth_node.pb import authsim_pb2_grpc as pb_grpc
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import processes
from authsim.cluster.local.launcher import admin_identity
from authsim.cluster.mtls import NODE_TLS_NAME

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("logs") / "c", nodes=1) as running:
        yield running


def authsim(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "authsim"), *args, "--dir", str(cluster.directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_call_is_one_line_with_method_caller_outcome_and_time(cluster: LocalCluster) -> None:
    assert cluster.authctl("status").exit_code == 0
    assert cluster.authctl("get", "cas/nope").exit_code != 0
    shown = authsim(cluster, "logs", "node1", "--lines", "200")
    assert shown.returncode == 0, shown.stderr
    calls = [line for line in shown.stdout.splitlines() if " rpc: " in line]
    assert any(" GetNodeStatus by admin from " in c and ": OK in " in c and c.endswith(" ms") for c in calls)
    assert any(" GetCertAuthority by admin from " in c and ": INVALID_ARGUMENT in " in c for c in calls)
    assert not any("Health" in c for c in calls)


def test_logs_lists_the_logs_and_refuses_an_unknown_name(cluster: LocalCluster) -> None:
    listing = authsim(cluster, "logs")
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names == ["node1", "etcd", "desktop", "db", "kdc", "postgres"]
    unknown = authsim(cluster, "logs", "node9")
    assert unknown.returncode != 0
    assert "no log named 'node9' (known: node1, etcd, desktop, db, kdc, postgres)" in unknown.stderr


def test_follow_prints_calls_as_they_happen(cluster: LocalCluster) -> None:
    follower = subprocess.Popen(
        [str(BIN / "authsim"), "logs", "node1", "--lines", "0", "--follow", "--dir", str(cluster.directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        deadline = time.monotonic() + 30
        ready: list[IO[str]] = []
        while not ready:  # calls until the follower (which may start slowly) prints one
            assert time.monotonic() < deadline, "authsim logs --follow printed nothing in 30 s"
            assert cluster.authctl("get", "ca_overrides").exit_code == 0
            ready, _, _ = select.select([follower.stdout], [], [], 0.5)
        assert " ListOverrides by admin from " in follower.stdout.readline()
    finally:
        follower.kill()
        follower.wait(timeout=10)


ROTATE = """
import logging, os, sys
from pathlib import Path
from typing import IO
from authsim.auth_node.request_log import NodeLogFile
logging.basicConfig(level=logging.INFO, handlers=[NodeLogFile(Path(sys.argv[1]), max_bytes=400, backups=2)])
for i in range(40):
    logging.getLogger("t").info("line %02d %s", i, "x" * 40)
print("printed after the rotations", flush=True)
os.write(2, b"written to stderr\\n")
"""


def test_the_log_is_rotated_by_size_and_output_follows_the_current_file(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    subprocess.run([sys.executable, "-c", ROTATE, str(log)], check=True, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.log", "node.log.1", "node.log.2"]
    current = log.read_text()
    assert (
        "line 39" in current and "printed after the rotations" in current and "written to stderr" in current
    )
    assert (
        "line 00"
        not in current + (tmp_path / "node.log.1").read_text() + (tmp_path / "node.log.2").read_text()
    )
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_the_node_survives_streams_and_calls_its_callers_abandon(cluster: LocalCluster) -> None:
    """Callers that go away mid-call (a FollowEvents stream dropped, a Sign cancelled): each call is
    logged CANCELLED, and the node keeps serving (the request log never reads a call gRPC has freed)."""
    key, cert, server_ca = admin_identity(cluster.directory).read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_ca, private_key=key, certificate_chain=cert
    )
    options = [("grpc.ssl_target_name_override", NODE_TLS_NAME)]
    address = cluster.state.node("node1").address
    pid = cluster.state.node("node1").pid

    async def abandon() -> None:
        for _ in range(5):
            channel = grpc.aio.secure_channel(address, credentials, options=options)
            stub = pb_grpc.AuthServiceStub(channel)
            streams = [stub.FollowEvents(pb.FollowEventsRequest()) for _ in range(20)]
            calls = [stub.GetNodeStatus(pb.NodeStatusRequest()) for _ in range(20)]
            await asyncio.sleep(0.3)
            for call in streams + calls:
                call.cancel()
            await channel.close(grace=None)
        gc.collect()

    asyncio.run(abandon())
    time.sleep(1.0)  # abandoned streams are finalised after their callers left
    assert cluster.authctl("status").exit_code == 0
    assert processes.is_running(pid, "authsim.auth_node")
    log = ClusterLayout(cluster.directory).node("node1").log.read_text()
    assert log.count("FollowEvents by admin from ") >= 100 and "FollowEvents by admin" in log
    assert ": CANCELLED in " in log
