"""Faults under load, with real processes: etcd leader and single etcd SIGKILLed, a node SIGKILLed mid-CAS,
a token taken away. Acknowledged writes survive; failed ones are absent or retried; the resource validates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import AuthSimError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.external_ca import init
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.override import CertAuthorityOverride
from authsim.cluster.resources.validation import OverrideContext, validate_override
from tests.etcd_pki import etcd_pki


def leader(servers: list[EtcdServer], timeout: float = 10.0) -> EtcdServer:
    """The member that leads, asked over https with the member certificate (the members serve TLS only);
    during an election (no leader: the status leaves the field out), asked again until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for server in servers:
            assert server.tls is not None
            request = urllib.request.Request(f"https://{server.endpoint}/v3/maintenance/status", data=b"{}")
            with urllib.request.urlopen(request, timeout=2, context=server.tls.ssl_context()) as reply:
                status = json.load(reply)
            if status["header"]["member_id"] == status.get("leader"):
                return server
        if time.monotonic() > deadline:
            raise AssertionError(f"no etcd leader within {timeout:g} s")
        time.sleep(0.1)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


class Appenders:
    """Every node appends its own windows entry at the same moment; records what was acknowledged."""

    def __init__(self, cluster: LocalCluster, certs: dict[str, str]) -> None:
        self.cluster = cluster
        self.certs = certs
        self.acked: dict[str, pb.WriteResponse] = {}
        self.failed: dict[str, str] = {}

    def append(self, node: str, barrier: threading.Barrier | None = None) -> None:
        request = pb.CreateOverrideRequest(type="windows", certificate=self.certs[node])
        with self.cluster.client(node) as client:
            if barrier is not None:
                barrier.wait()
            try:
                self.acked[node] = client.call("CreateOverride", request)
                self.failed.pop(node, None)
            except AuthSimError as e:
                self.failed[node] = str(e)

    def run_all(self, during: Callable[[], None]) -> None:
        barrier = threading.Barrier(len(self.certs) + 1, timeout=30)
        threads = [threading.Thread(target=self.append, args=(n, barrier)) for n in self.certs]
        for t in threads:
            t.start()
        barrier.wait()
        during()
        for t in threads:
            t.join()

    def retry_failed(self, timeout: float = 60) -> None:
        """Retry every append that reported failure until it succeeds (a retry of a write that did
        land is a no-op: changed is false)."""
        deadline = time.monotonic() + timeout
        while self.failed and time.monotonic() < deadline:
            for node in list(self.failed):
                self.append(node)
            time.sleep(0.2)
        assert not self.failed, self.failed

    def check_resource(self) -> None:
        """Exactly one entry per node, each acknowledged one present, and the resource validates."""
        stored = json.loads(self.cluster.authctl("get", "ca_overrides/windows", "--format", "json").stdout)
        keys = [e["public_key"] for e in stored["spec"]["certificate_overrides"]]
        assert sorted(keys) == sorted(r.public_key for r in self.acked.values())
        assert len(set(keys)) == len(self.certs)
        resource = CertAuthorityOverride.from_dict(stored)
        ca = CertAuthority.from_dict(
            json.loads(self.cluster.authctl("get", "cas/windows", "--format", "json").stdout)
        )
        context = OverrideContext("mycluster", ca, host_id="", node_names={}, force=True)
        assert validate_override(resource, resource, context) == []


def prepared(cluster: LocalCluster, tmp: Path) -> Appenders:
    certs = cluster.override_certs(init(tmp / "extca"), "windows")
    return Appenders(cluster, certs)


def test_etcd_leader_killed_during_eight_appends(etcd_members: list[EtcdServer], tmp_path: Path) -> None:
    endpoints = [s.endpoint for s in etcd_members]
    client = etcd_pki(tmp_path / "etcd-pki").client
    with local_cluster(tmp_path / "c", nodes=8, etcd_endpoints=endpoints, etcd_tls=client) as cluster:
        appenders = prepared(cluster, tmp_path)
        for round_no in range(3):
            cluster.authctl("rm", "ca_overrides/windows", "--force")
            appenders.acked.clear()
            killed = leader(etcd_members)

            def kill_leader(victim: EtcdServer = killed, delay: float = 0.005 * round_no) -> None:
                time.sleep(delay)
                assert victim.process is not None
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait()

            appenders.run_all(kill_leader)
            killed.restart()
            appenders.retry_failed()
            appenders.check_resource()


def test_embedded_etcd_killed_and_restarted_during_appends(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "c", nodes=4) as cluster:
        appenders = prepared(cluster, tmp_path)
        etcd_pid = cluster.state.etcd.pid
        assert etcd_pid is not None

        def kill_etcd() -> None:
            os.kill(etcd_pid, signal.SIGKILL)

        appenders.run_all(kill_etcd)
        with cluster.client("node1") as client:
            assert wait_for(lambda: client.health() == "NOT_SERVING", 15)
            pids = [n.pid for n in cluster.state.nodes]
            LocalCluster.start(cluster.directory, nodes=4)  # `authsim up` restarts only what is missing: etcd
            assert wait_for(lambda: client.health() == "SERVING", 20)
        assert [n.pid for n in cluster.state.nodes] == pids
        appenders.retry_failed()
        appenders.check_resource()


def test_node_killed_in_its_cas_loop_applies_nothing_twice(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "c", nodes=8) as cluster:
        appenders = prepared(cluster, tmp_path)
        victim = cluster.state.node("node8")
        assert victim.pid is not None

        def kill_node() -> None:
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]

        appenders.run_all(kill_node)
        survivors = {n: r for n, r in appenders.acked.items() if n != "node8"}
        assert len(survivors) == 7, appenders.failed
        LocalCluster.start(cluster.directory, nodes=8)  # restarts node8 only
        landed_before = "node8" in appenders.acked
        appenders.append("node8")
        if landed_before:
            assert not appenders.acked["node8"].changed
        appenders.check_resource()


@pytest.mark.parametrize("hsm", ["process", "inprocess"])
def test_token_taken_away_gives_clear_errors_and_other_nodes_keep_signing(tmp_path: Path, hsm: str) -> None:
    """The token's files gone from under its HSM process, or from under a node loading SoftHSM itself."""
    with local_cluster(tmp_path / "c", nodes=2, hsm=hsm) as cluster:
        for ca_type in ("windows", "db_client"):
            assert cluster.authctl("auth", "rotate", f"--type={ca_type}").exit_code == 0
        tokens = ClusterLayout(cluster.directory).node("node1").tokens
        shutil.move(tokens, tokens.with_name("tokens.away"))
        refused = cluster.authctl(
            "auth", "sign", "--type=windows", "--user", "u", "--out", str(tmp_path / "a"), node="node1"
        )
        assert refused.exit_code == 1
        assert "node node1" in refused.stderr and "token authsim-node1" in refused.stderr
        assert "Traceback" not in refused.stderr
        for ca_type in ("windows", "db_client"):
            assert cluster.sign(ca_type, "u", tmp_path / ca_type, node="node2")["node"] == "node2"
