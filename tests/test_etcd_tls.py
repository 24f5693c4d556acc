"""TLS to etcd: a 3-member loopback etcd with client and peer TLS; the store, a cluster, the CLI on it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from authsim.auth_node.config import NodeConfig
from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.cli import authsim as authsim_cli
from authsim.cluster.cli.watch import watch_overrides
from authsim.cluster.errors import ClusterError, StoreUnavailableError
from authsim.cluster.layout import ClusterLayout, NodeLayout
from authsim.cluster.local import launcher, processes
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.external_ca import init
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.ports import free_port
from authsim.cluster.local.state import ClusterState, EtcdEntry
from authsim.cluster.store import EtcdStore, EtcdTLS
from tests.etcd_pki import etcd_pki

AUTHSIM = [sys.executable, "-m", "authsim.cluster.cli.authsim"]


@dataclass(frozen=True)
class EtcdPKI:
    member: EtcdTLS  # the etcd members' own identity: serves clients and peers, is a client to peers
    client: EtcdTLS  # a client certificate from the etcd CA
    foreign_client: EtcdTLS  # trusts the etcd CA, but its client certificate comes from another CA
    foreign_trust: EtcdTLS  # a valid client certificate, but it trusts another CA for the server


def make_etcd_pki(directory: Path) -> EtcdPKI:
    """The etcd CA's identities (as the product makes them), and a client from a second, foreign CA."""
    ours, other = etcd_pki(directory / "etcd"), etcd_pki(directory / "other")
    return EtcdPKI(
        member=ours.member,
        client=ours.client,
        foreign_client=dataclasses.replace(other.client, cacert=ours.client.cacert),
        foreign_trust=dataclasses.replace(ours.client, cacert=other.client.cacert),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EtcdPKI:
    return make_etcd_pki(tmp_path_factory.mktemp("etcd-pki"))


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory, pki: EtcdPKI) -> Iterator[list[EtcdServer]]:
    """Three etcd members with https client and peer URLs, each requiring a client certificate."""
    servers = EtcdServer.start_cluster(tmp_path_factory.mktemp("etcd-tls"), 3, tls=pki.member)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def endpoints(servers: list[EtcdServer]) -> list[str]:
    return [s.endpoint for s in servers]


def test_members_listen_on_https_only(tls_etcd: list[EtcdServer], pki: EtcdPKI) -> None:
    for server in tls_etcd:
        assert server.healthy()  # over https, presenting the member certificate
        assert "--client-cert-auth" in server._arguments()
        assert f"https://127.0.0.1:{server.peer_port}" in server._arguments()
        plain = dataclasses.replace(server, tls=None, process=None)
        assert not plain.healthy()  # http to an https port


async def test_store_with_client_certificate_does_cas_and_get(
    tls_etcd: list[EtcdServer], pki: EtcdPKI
) -> None:
    key = "/test/tls/cas"
    async with EtcdStore(endpoints(tls_etcd), tls=pki.client) as store:
        created = await store.create(key, b"one")
        swapped = await store.compare_and_swap(key, created, b"two")
        assert swapped.succeeded
        stale = await store.compare_and_swap(key, created, b"three")
        assert not stale.succeeded and stale.current is not None and stale.current.value == b"two"
        found = await store.get(key)
        assert found is not None and found.value == b"two" and found.mod_revision == swapped.revision
        assert (await store.delete(key, swapped.revision)).succeeded
    # Every member's certificate verifies on its own, reached by IP or by name.
    for endpoint in [*endpoints(tls_etcd), f"localhost:{tls_etcd[1].client_port}"]:
        async with EtcdStore([endpoint], tls=pki.client) as store:
            assert await store.ping() > 0


@pytest.mark.parametrize("client", ["plain", "foreign_client", "foreign_trust"])
async def test_store_without_a_trusted_handshake_is_unavailable(
    tls_etcd: list[EtcdServer], pki: EtcdPKI, client: str
) -> None:
    tls = None if client == "plain" else getattr(pki, client)
    async with EtcdStore(endpoints(tls_etcd), timeout=1.0, tls=tls) as store:
        with pytest.raises(StoreUnavailableError) as raised:
            await store.get("/test/tls/anything")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"etcd at {','.join(endpoints(tls_etcd))}")
    assert ("(TLS)" in message) == (tls is not None)


def test_local_cluster_serves_on_tls_etcd_and_watch_follows(
    tls_etcd: list[EtcdServer], pki: EtcdPKI, tmp_path: Path
) -> None:
    name = "tlslocal"
    with local_cluster(
        tmp_path / "c", nodes=2, cluster_name=name, etcd_endpoints=endpoints(tls_etcd), etcd_tls=pki.client
    ) as cluster:
        state = cluster.state
        assert state.etcd.endpoints == endpoints(tls_etcd) and not state.etcd.embedded
        assert state.etcd.tls == pki.client
        for node in cluster.node_names:
            with cluster.client(node) as client:
                assert client.health() == "SERVING"
            node_yaml = yaml.safe_load(ClusterLayout(cluster.directory).node(node).config.read_text())
            assert node_yaml["etcd_tls"] == pki.client.to_dict()
        got = cluster.authctl("get", "cas/windows")
        assert got.exit_code == 0 and got.stdout.strip(), got.stderr

        certs = cluster.override_certs(init(tmp_path / "extca"), "windows")
        lines: list[str] = []
        first = threading.Event()

        def emit(line: str) -> None:
            lines.append(line)
            first.set()

        watcher = threading.Thread(
            target=lambda: asyncio.run(watch_overrides(cluster.directory, "windows", emit, 1))
        )
        watcher.start()
        try:
            assert first.wait(10), "the watch printed nothing"
            with cluster.client("node2") as client:
                client.call(
                    "CreateOverride", pb.CreateOverrideRequest(type="windows", certificate=certs["node2"])
                )
        finally:
            watcher.join(20)
        assert not watcher.is_alive()
        assert lines[0] == "ca_overrides/windows: absent"
        assert "by node2" in lines[1] and "(node2) enabled" in lines[1]


def _authsim(*args: str) -> tuple[int, str]:
    """`authsim ARGS` in this process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = authsim_cli.main(list(args))
    return code, err.getvalue()


def test_cli_up_with_etcd_tls_and_down(tls_etcd: list[EtcdServer], pki: EtcdPKI, tmp_path: Path) -> None:
    directory = tmp_path / "cli"
    tls_args = ["--etcd-cacert", str(pki.client.cacert), "--etcd-cert", str(pki.client.cert)]
    tls_args += ["--etcd-key", str(pki.client.key)]
    up_args = ["--nodes", "1", "--cluster-name", "tlscli", "--etcd", ",".join(endpoints(tls_etcd))]
    try:
        up = subprocess.run(
            [*AUTHSIM, "up", "--dir", str(directory), *up_args, *tls_args, "--detach"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, up.stderr
        shown = " ".join(up.stdout.split())  # the status header wraps at the pipe's 80 columns
        assert f"etcd {', '.join(endpoints(tls_etcd))} (external, TLS)" in shown
        cluster = LocalCluster(directory)
        assert cluster.authctl("get", "cas/windows").exit_code == 0
        certs = cluster.override_certs(init(tmp_path / "extca"), "windows")
        watch = subprocess.Popen(
            [*AUTHSIM, "watch", "ca_overrides/windows", "--dir", str(directory), "--count", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watch.stdout is not None
            assert watch.stdout.readline().strip() == "ca_overrides/windows: absent"
            with cluster.client("node1") as client:
                client.call(
                    "CreateOverride", pb.CreateOverrideRequest(type="windows", certificate=certs["node1"])
                )
            out, err = watch.communicate(timeout=20)
        finally:
            watch.kill()
            watch.wait()
        assert watch.returncode == 0, err
        assert "by node1" in out and "(node1) enabled" in out
        down = subprocess.run(
            [*AUTHSIM, "down", "--dir", str(directory)], capture_output=True, text=True, timeout=60
        )
        assert down.returncode == 0 and "node1" in down.stdout, down.stderr
        assert all(n.pid is None for n in cluster.state.nodes)
    finally:
        launcher.down(directory)  # by PID; a no-op when `authsim down` already stopped everything


def test_cli_etcd_tls_errors_are_one_line(tls_etcd: list[EtcdServer], pki: EtcdPKI, tmp_path: Path) -> None:
    etcd = ",".join(endpoints(tls_etcd))
    missing = tmp_path / "nowhere" / "client.key"
    given = ["--etcd-cacert", str(pki.client.cacert), "--etcd-cert", str(pki.client.cert)]
    code, err = _authsim(
        "up", "--dir", str(tmp_path / "a"), "--etcd", etcd, *given, "--etcd-key", str(missing)
    )
    assert code == 1 and err == f"error: etcd TLS key {missing} does not exist\n"
    assert not (tmp_path / "a").exists()  # refused before anything was written

    code, err = _authsim("up", "--dir", str(tmp_path / "b"), *given, "--etcd-key", str(pki.client.key))
    assert code == 1 and err.count("\n") == 1 and "needs the endpoints of an existing etcd" in err

    code, err = _authsim("up", "--dir", str(tmp_path / "c"), "--etcd", etcd, *given)
    assert code == 2 and "--etcd-cacert, --etcd-cert and --etcd-key go together; missing --etcd-key" in err

    with pytest.raises(ClusterError, match=r"etcd TLS CA certificate .*ca\.pem does not exist"):
        EtcdTLS(tmp_path / "ca.pem", pki.client.cert, pki.client.key).checked()


def test_cli_provision_with_etcd_tls_starts_a_serving_node(
    tls_etcd: list[EtcdServer], pki: EtcdPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`authsim provision pki|node --etcd-cacert/--etcd-cert/--etcd-key`, then run the node."""
    etcd = ",".join(endpoints(tls_etcd))
    tls_args = ["--etcd-cacert", str(pki.client.cacert), "--etcd-cert", str(pki.client.cert)]
    tls_args += ["--etcd-key", str(pki.client.key)]
    common = ["--cluster-name", "tlsprov", "--etcd", etcd]
    pki_dir, admin_dir, state = tmp_path / "pki", tmp_path / "admin", tmp_path / "node1"
    pki_args = ["provision", "pki", "--dir", str(pki_dir), "--admin-dir", str(admin_dir), "--nodes", "node1"]

    code, err = _authsim(*pki_args, "--cluster-name", "tlsprov", *tls_args)
    assert code == 2 and "give --etcd too" in err
    code, err = _authsim(*pki_args, *common, *tls_args)
    assert code == 0, err
    assert ClusterState.load(admin_dir).etcd == EtcdEntry(endpoints(tls_etcd), embedded=False, tls=pki.client)

    listen = f"127.0.0.1:{free_port()}"
    node_args = ["provision", "node", "--dir", str(state), "--pki", str(pki_dir), "--name", "node1"]
    node_args += ["--listen", listen, *common]
    # The same validation as `authsim up`, before anything is written.
    code, err = _authsim(*node_args, *tls_args[:4])
    assert code == 2 and "--etcd-cacert, --etcd-cert and --etcd-key go together; missing --etcd-key" in err
    missing = tmp_path / "nowhere" / "client.key"
    code, err = _authsim(*node_args, *tls_args[:4], "--etcd-key", str(missing))
    assert code == 1 and err == f"error: etcd TLS key {missing} does not exist\n"
    assert not state.exists()

    monkeypatch.chdir(pki.client.cacert.parent)  # relative paths are recorded as absolute ones
    relative = ["--etcd-cacert", pki.client.cacert.name, "--etcd-cert", pki.client.cert.name]
    relative += ["--etcd-key", pki.client.key.name]
    code, err = _authsim(*node_args, *relative)
    assert code == 0, err
    config = NodeConfig.load(NodeLayout(state).config)
    assert config.etcd_tls == pki.client and config.etcd_endpoints == tuple(endpoints(tls_etcd))

    argv = [sys.executable, "-m", "authsim.auth_node", "--config", str(NodeLayout(state).config)]
    process = processes.spawn(argv, config.log_file, config.token().process_env())
    try:
        deadline = time.monotonic() + 60
        with NodeClient(listen, launcher.admin_identity(admin_dir), "node1", timeout=2.0) as client:
            while (health := client.health()) != "SERVING":
                assert process.poll() is None, config.log_file.read_text()[-2000:]
                assert time.monotonic() < deadline, f"node1: {health}"
                time.sleep(0.2)
            ca = client.get_cert_authority("windows")
        assert [pair.key.host_id for pair in ca.active_keys] == [config.host_id]
    finally:
        processes.stop(process.pid, str(NodeLayout(state).config))
    assert process.poll() is not None


def test_tls_paths_round_trip_and_old_files_still_load(pki: EtcdPKI, tmp_path: Path) -> None:
    config = NodeConfig("node1", "c", "host", "127.0.0.1:1", ("127.0.0.1:2",), tmp_path, "/lib.so", "t")
    tls_config = dataclasses.replace(config, etcd_tls=pki.client)
    assert NodeConfig.load(tls_config.save()) == tls_config
    old = yaml.safe_load(config.save().read_text())
    del old["etcd_tls"]  # a node.yaml written before etcd TLS existed
    NodeLayout(tmp_path).config.write_text(yaml.safe_dump(old))
    assert NodeConfig.load(NodeLayout(tmp_path).config) == config

    state = ClusterState("c", EtcdEntry(["127.0.0.1:2"], embedded=False, tls=pki.client))
    state.save(tmp_path)
    assert ClusterState.load(tmp_path) == state
    old = yaml.safe_load(ClusterState.path(tmp_path).read_text())
    del old["etcd"]["tls"]
    ClusterState.path(tmp_path).write_text(yaml.safe_dump(old))
    assert ClusterState.load(tmp_path).etcd == EtcdEntry(["127.0.0.1:2"], embedded=False)
