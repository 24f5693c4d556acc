"""The local cluster end to end: real etcd, real SoftHSM tokens, real node processes over mTLS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsim.auth_node.pb import authsim_pb2, authsim_pb2_grpc
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import NodeUnavailableError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import processes
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.launcher import admin_identity
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.ports import free_port
from authsim.cluster.mtls import NODE_TLS_NAME, ensure_admin_identity
from authsim.cluster.store import EtcdTLS
from tests.certs import openssl_key_hash
from tests.etcd_pki import etcd_pki

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node cluster on its own embedded etcd, shared by the read-only tests of this module."""
    with local_cluster(tmp_path_factory.mktemp("c") / "c1", nodes=3) as running:
        yield running


def openssl(*args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True)
    return done.stdout.decode()


def test_get_cas_yaml_and_json_carry_the_same_structure(cluster: LocalCluster) -> None:
    as_yaml = cluster.authctl("get", "cas/windows", "--format", "yaml", node="node2")
    as_json = cluster.authctl("get", "cas/windows", "--format", "json", node="node2")
    assert as_yaml.exit_code == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)
    ca = yaml.safe_load(as_yaml.stdout)
    assert ca["kind"] == "cert_authority" and ca["sub_kind"] == "windows"
    assert ca["spec"]["cluster_name"] == "mycluster" and ca["metadata"]["revision"] > 0
    hosts = {cluster.host_id(n) for n in cluster.node_names}
    keys = ca["spec"]["active_keys"]["tls"] + ca["spec"]["additional_trusted_keys"]["tls"]
    assert {k["key"]["host_id"] for k in keys} == hosts


def test_db_client_alias_and_text_format(cluster: LocalCluster) -> None:
    result = cluster.authctl("get", "cas/db-client", "--format", "text")
    assert result.exit_code == 0, result.stderr
    assert "cert_authority db_client" in result.stdout
    for node in cluster.node_names:
        assert node in result.stdout


def test_self_signed_ca_certificate_passes_openssl(cluster: LocalCluster, tmp_path: Path) -> None:
    ca = json.loads(cluster.authctl("get", "cas/windows", "--format", "json").stdout)
    pair = ca["spec"]["active_keys"]["tls"][0]
    cert_file = tmp_path / "ca.pem"
    cert_file.write_text(pair["cert"])
    assert "OK" in openssl("verify", "-CAfile", str(cert_file), str(cert_file))
    text = openssl("x509", "-in", str(cert_file), "-noout", "-text")
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE" in text
    assert "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign" in text
    subject = openssl("x509", "-in", str(cert_file), "-noout", "-subject", "-nameopt", "RFC2253")
    assert "CN=mycluster" in subject and "O=mycluster" in subject
    assert openssl_key_hash(cert_file) == pair["public_key_hash"]


def test_node_status_lists_only_its_own_keys(cluster: LocalCluster) -> None:
    for node in cluster.node_names:
        with cluster.client(node) as client:
            status = client.node_status()
        assert status.host_id == cluster.host_id(node)
        assert status.token_label == f"authsim-{node}"
        assert sorted(k.ca_type for k in status.keys) == ["db_client", "windows"]


def test_cli_errors_are_one_line(cluster: LocalCluster) -> None:
    for args, node, needle in [
        (("get", "cas/nope"), None, "type: unknown CA type 'nope'"),
        (("get", "cas/windows"), "node9", "no node named 'node9'"),
        (("get", "widgets/x"), None, "`authctl get` takes cas[/TYPE], ca_overrides[/TYPE] or events"),
    ]:
        result = cluster.authctl(*args, node=node)
        assert result.exit_code != 0
        assert needle in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1


def _channel(cluster: LocalCluster, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    address = cluster.state.node("node1").address
    return grpc.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", NODE_TLS_NAME)]
    )


def _status_call(channel: grpc.Channel) -> authsim_pb2.NodeStatus:
    reply: authsim_pb2.NodeStatus = authsim_pb2_grpc.AuthServiceStub(channel).GetNodeStatus(
        authsim_pb2.NodeStatusRequest(), timeout=5
    )
    return reply


def test_mtls_refuses_clients_without_an_admin_certificate(cluster: LocalCluster, tmp_path: Path) -> None:
    layout = ClusterLayout(cluster.directory)
    server_ca = layout.admin.server_ca.read_bytes()
    # No client certificate at all.
    with (
        _channel(cluster, grpc.ssl_channel_credentials(root_certificates=server_ca)) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _status_call(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # A client certificate from another CA (another cluster's admin identity).
    other = ensure_admin_identity(tmp_path / "other", "othercluster")
    key, cert, _ = other.read()
    creds = grpc.ssl_channel_credentials(root_certificates=server_ca, private_key=key, certificate_chain=cert)
    with _channel(cluster, creds) as channel, pytest.raises(grpc.RpcError) as refused:
        _status_call(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # A node's own server certificate is not an admin identity.
    node = layout.node("node2")
    creds = grpc.ssl_channel_credentials(
        root_certificates=server_ca,
        private_key=node.tls_key.read_bytes(),
        certificate_chain=node.tls_cert.read_bytes(),
    )
    with _channel(cluster, creds) as channel, pytest.raises(grpc.RpcError) as refused:
        _status_call(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The admin identity is accepted, and gRPC health says SERVING.
    admin = layout.admin
    creds = grpc.ssl_channel_credentials(
        root_certificates=server_ca,
        private_key=admin.key.read_bytes(),
        certificate_chain=admin.cert.read_bytes(),
    )
    with _channel(cluster, creds) as channel:
        assert _status_call(channel).node_name == "node1"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_node_that_does_not_answer_is_unavailable_not_a_domain_error(cluster: LocalCluster) -> None:
    client = NodeClient(f"127.0.0.1:{free_port()}", admin_identity(cluster.directory), "gone", timeout=2)
    with client, pytest.raises(NodeUnavailableError, match=r"node gone at 127.0.0.1:[0-9]+: UNAVAILABLE"):
        client.node_status()


def test_authctl_refuses_a_node_outside_the_cluster_ca(cluster: LocalCluster, tmp_path: Path) -> None:
    """A client that trusts another server CA does not talk to our node."""
    impostor, source = ClusterLayout(tmp_path / "d"), ClusterLayout(cluster.directory)
    shutil.copytree(source.admin.directory, impostor.admin.directory)
    shutil.copy(source.state_file, impostor.state_file)
    foreign = ensure_admin_identity(tmp_path / "other", "othercluster").peer_ca
    shutil.copy(foreign, impostor.admin.server_ca)
    result = LocalCluster(impostor.root).authctl("status", node="node1")
    assert result.exit_code == 1
    assert "node node1" in result.stderr and "UNAVAILABLE" in result.stderr


def test_down_and_up_keep_host_ids_keys_and_resources(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with local_cluster(directory, nodes=2) as cluster:
        before = json.loads(cluster.authctl("get", "cas/windows", "--format", "json").stdout)
        hosts = {n: cluster.host_id(n) for n in cluster.node_names}
        state = cluster.state
        pids = [n.pid for n in state.nodes] + [t.pid for t in state.targets.values()] + [state.etcd.pid]
        pids += [n.hsm_pid for n in state.nodes] + [s.pid for s in state.servers.values()]
        assert cluster.stop() == [
            "node1",
            "node1 HSM",
            "node2",
            "node2 HSM",
            "desktop target",
            "db target",
            "desktop KDC",
            "db PostgreSQL",
            "etcd",
        ]
        assert not any(processes.is_running(pid, "") for pid in pids)
        layout = ClusterLayout(directory)
        assert layout.etcd.data.is_dir() and layout.node("node1").tokens.is_dir()
        LocalCluster.start(directory, nodes=2)
        after = json.loads(cluster.authctl("get", "cas/windows", "--format", "json").stdout)
        assert after == before
        assert {n: cluster.host_id(n) for n in cluster.node_names} == hosts
        for node in cluster.node_names:
            with cluster.client(node) as client:
                held = {k.public_key_hash for k in client.node_status().keys}
            mine = {
                k["public_key_hash"]
                for k in after["spec"]["active_keys"]["tls"] + after["spec"]["additional_trusted_keys"]["tls"]
                if k["key"]["host_id"] == hosts[node]
            }
            assert mine and mine <= held
    cluster.stop(purge=True)
    assert not directory.exists()


def test_simultaneous_start_creates_each_ca_once(
    etcd_server: EtcdServer, etcd_tls: EtcdTLS, tmp_path: Path
) -> None:
    """Three nodes racing on an empty etcd, ten times: one CA per type, exactly one key per node."""
    for round_no in range(10):
        name = f"race{round_no}"
        with local_cluster(
            tmp_path / name,
            nodes=3,
            cluster_name=name,
            etcd_endpoints=[etcd_server.endpoint],
            etcd_tls=etcd_tls,
        ) as cluster:
            hosts = sorted(cluster.host_id(n) for n in cluster.node_names)
            for ca_type in ("windows", "db_client"):
                ca = json.loads(cluster.authctl("get", f"cas/{ca_type}", "--format", "json").stdout)
                active = ca["spec"]["active_keys"]["tls"]
                additional = ca["spec"]["additional_trusted_keys"]["tls"]
                assert (len(active), len(additional)) == (1, 2), f"round {round_no} {ca_type}"
                assert sorted(k["key"]["host_id"] for k in active + additional) == hosts
                assert len({k["public_key_hash"] for k in active + additional}) == 3


def test_node_reports_not_serving_while_etcd_is_down(tmp_path: Path) -> None:
    pki = etcd_pki(tmp_path / "etcd-pki")
    etcd = EtcdServer.start(tmp_path / "etcd" / "data", tls=pki.member)
    try:
        with (
            local_cluster(
                tmp_path / "c", nodes=1, etcd_endpoints=[etcd.endpoint], etcd_tls=pki.client
            ) as cluster,
            cluster.client("node1") as client,
        ):
            pid = cluster.state.node("node1").pid
            etcd.stop()
            assert _wait_for(lambda: client.health() == "NOT_SERVING", 15)
            etcd = EtcdServer.start(etcd.data_dir, etcd.client_port, etcd.peer_port, tls=pki.member)
            assert _wait_for(lambda: client.health() == "SERVING", 20)
            assert cluster.state.node("node1").pid == pid
            assert client.node_status().node_name == "node1"
    finally:
        etcd.stop()


def _wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_up_without_etcd_on_path_says_how_to_install(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path / "empty"))
    done = subprocess.run(
        [str(BIN / "authsim"), "up", "--dir", str(tmp_path / "c"), "--detach"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "etcd not found on PATH" in done.stderr and "apt-get install etcd-server" in done.stderr
    assert "Traceback" not in done.stderr


def _run_node(directory: Path, node: str) -> subprocess.CompletedProcess[str]:
    files = ClusterLayout(directory).node(node)
    env = dict(os.environ, SOFTHSM2_CONF=str(files.softhsm_conf))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "authsim.auth_node",
            "--config",
            str(files.config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wrong_pin_or_missing_token_stops_the_node_with_a_clear_message(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with local_cluster(directory, nodes=1, hsm="inprocess"):  # run by hand below, loading SoftHSM itself
        pass
    node = ClusterLayout(directory).node("node1")
    pin = node.pin.read_text()
    node.pin.write_text("0000wrong")
    done = _run_node(directory, "node1")
    assert done.returncode == 2
    assert "node node1" in done.stderr and "wrong PIN for token authsim-node1" in done.stderr
    assert "Traceback" not in done.stderr
    node.pin.write_text(pin)
    node.tokens.rename(node.tokens.with_name("tokens.moved"))
    node.tokens.mkdir(mode=0o700)
    done = _run_node(directory, "node1")
    assert done.returncode == 2
    assert "node1" in done.stderr and "authsim-node1" in done.stderr and "Traceback" not in done.stderr


def test_console_scripts_run_as_installed(cluster: LocalCluster) -> None:
    done = subprocess.run(
        [
            str(BIN / "authctl"),
            "--dir",
            str(cluster.directory),
            "--node",
            "node3",
            "get",
            "cas/windows",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spec"]["cluster_name"] == "mycluster"
    done = subprocess.run(
        [str(BIN / "authsim"), "status", "--dir", str(cluster.directory)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    nodes = [line for line in done.stdout.splitlines() if line.startswith("│ node") and "127.0.0.1:" in line]
    assert len(nodes) == 3 and all("SERVING" in line for line in nodes), done.stdout
    assert "(embedded, TLS, running)" in done.stdout


def test_generated_grpc_code_is_fresh() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "gen_proto"), "--check"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert done.returncode == 0, f"auth_node/pb is stale, run scripts/gen_proto:\n{done.stdout}{done.stderr}"


def test_stop_signals_only_a_process_whose_command_line_is_ours(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert _wait_for(lambda: processes.is_running(sleeper.pid, "sleep"), 5)  # exec has happened
        assert not processes.stop(sleeper.pid, str(tmp_path / "etcd"))
        assert sleeper.poll() is None
        assert processes.stop(sleeper.pid, "sleep")
        assert sleeper.wait(5) is not None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stop_returns_once_the_process_has_exited() -> None:
    """Its command line reads empty while it exits: stop must wait for the exit, not for that."""
    for _ in range(20):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert _wait_for(lambda child=child: processes.is_running(child.pid, "time.sleep"), 5)
            assert processes.stop(child.pid, "time.sleep")
            assert child.poll() is not None  # exited and reaped (poll reads 0 after stop reaped it)
        finally:
            child.kill()
            child.wait()
