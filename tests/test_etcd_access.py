"""Only the cluster reaches its etcd (issue 10, item 1): the embedded etcd of a running cluster, attacked
as the local user `nobody` (plain HTTP, plain gRPC, TLS without or with a foreign client certificate),
refuses every request; its key files are private; etcd RBAC keeps a node's identity in its cluster's
prefixes.

The attacker's commands are proven real by a control: the same commands, as `nobody`, write and read a
plain etcd (what the embedded etcd was before this issue).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authsim.auth_node.config import NodeConfig
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import StoreAccessError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.store import EtcdStore, EtcdTLS
from authsim.cluster.store.keys import cert_authority_key, events_prefix, override_key
from tests import attacker

NAME = "guarded"
GARBAGE = "attacker was here"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """`authsim up` (the launcher) with two nodes on its embedded etcd."""
    with local_cluster(tmp_path_factory.mktemp("access") / "c", nodes=2, cluster_name=NAME) as running:
        yield running


@pytest.fixture
def attacker_dir() -> Iterator[Path]:
    """A dir `nobody` owns, for its own files (a foreign CA, request bodies)."""
    directory = Path(tempfile.mkdtemp(prefix="attacker-"))
    os.chmod(directory, 0o755)
    shutil.chown(directory, attacker.ATTACKER, "nogroup")
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def as_attacker(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` as the local user `nobody`, in a clean environment."""
    return subprocess.run(
        attacker.as_attacker(*argv),
        env=attacker.ENV,
        cwd=cwd or "/",
        capture_output=True,
        timeout=30,
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class Attack:
    """The attacker's commands against one etcd client port; each is a CompletedProcess to judge."""

    port: int
    directory: Path
    key: str

    def http_put(self, scheme: str = "http", *tls: str) -> subprocess.CompletedProcess[bytes]:
        body = json.dumps({"key": _b64(self.key), "value": _b64(GARBAGE)})
        url = f"{scheme}://127.0.0.1:{self.port}/v3/kv/put"
        return as_attacker("curl", "-sS", "--max-time", "5", *tls, "-X", "POST", url, "-d", body)

    def http_range(self, scheme: str = "http", *tls: str) -> subprocess.CompletedProcess[bytes]:
        prefix = self.key.rsplit("/", 2)[0] + "/"
        body = json.dumps({"key": _b64(prefix), "range_end": _b64(prefix[:-1] + "0")})
        url = f"{scheme}://127.0.0.1:{self.port}/v3/kv/range"
        return as_attacker("curl", "-sS", "--max-time", "5", *tls, "-X", "POST", url, "-d", body)

    def grpc_put(self) -> subprocess.CompletedProcess[bytes]:
        """A plain (h2c) gRPC KV.Put, framed by hand: no TLS, what any gRPC client without TLS sends."""
        message = _put_request(self.key, GARBAGE)
        frame = self.directory / "put.grpc"
        frame.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
        os.chmod(frame, 0o644)
        url = f"http://127.0.0.1:{self.port}/etcdserverpb.KV/Put"
        return as_attacker(
            "curl", "-sS", "--max-time", "5", "--http2-prior-knowledge", "-D", "-",
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "--data-binary", f"@{frame}", url,
        )  # fmt: skip


def _put_request(key: str, value: str) -> bytes:
    from aetcd import rpc

    data: bytes = rpc.PutRequest(key=key.encode(), value=value.encode()).SerializeToString()
    return data


def foreign_client(directory: Path) -> list[str]:
    """As `nobody`: its own CA and a client certificate from it with CN `admin` (the admin's etcd
    user name); the curl flags that present it."""
    steps = [
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=foreign-ca", "-days", "1",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "admin.key", "-out", "admin.csr", "-subj", f"/O={NAME}/CN=admin",
         "-addext", "extendedKeyUsage=clientAuth"],
        ["openssl", "x509", "-req", "-in", "admin.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "admin.pem", "-days", "1", "-copy_extensions", "copy"],
    ]  # fmt: skip
    for step in steps:
        done = as_attacker(*step, cwd=directory)
        assert done.returncode == 0, done.stderr
    return ["--cert", str(directory / "admin.pem"), "--key", str(directory / "admin.key")]


async def _read(endpoint: str, tls: EtcdTLS | None, key: str) -> bytes | None:
    async with EtcdStore([endpoint], tls=tls) as store:
        found = await store.get(key)
    return None if found is None else found.value


def test_control_the_attack_writes_and_reads_a_plain_etcd(attacker_dir: Path, tmp_path: Path) -> None:
    """Without TLS (the embedded etcd before this issue), the same commands as `nobody` succeed."""
    plain = EtcdServer.start(tmp_path / "etcd" / "data")
    try:
        attack = Attack(plain.client_port, attacker_dir, override_key(NAME, "windows"))
        put = attack.http_put()
        assert put.returncode == 0 and b'"revision"' in put.stdout, put
        assert asyncio.run(_read(plain.endpoint, None, attack.key)) == GARBAGE.encode()
        read = attack.http_range()
        assert read.returncode == 0 and _b64(GARBAGE).encode() in read.stdout, read
        grpc_attack = Attack(plain.client_port, attacker_dir, override_key(NAME, "db_client"))
        put = grpc_attack.grpc_put()
        assert put.returncode == 0 and b"grpc-status: 0" in put.stdout, put
        assert asyncio.run(_read(plain.endpoint, None, grpc_attack.key)) == GARBAGE.encode()
        members = as_attacker("curl", "-sS", f"http://127.0.0.1:{plain.peer_port}/members")
        assert members.returncode == 0 and b'"peerURLs"' in members.stdout, members
    finally:
        plain.stop()


def test_nobody_can_neither_write_nor_read_the_embedded_etcd(
    cluster: LocalCluster, attacker_dir: Path
) -> None:
    state = cluster.state
    assert state.etcd.embedded and state.etcd.client_port and state.etcd.tls is not None
    endpoint = state.etcd.endpoints[0]
    ca_key = cert_authority_key(NAME, "windows")
    before = asyncio.run(_read(endpoint, state.etcd.tls, ca_key))
    assert before is not None and b"active_keys" in before
    attack = Attack(state.etcd.client_port, attacker_dir, override_key(NAME, "windows"))

    # Plain HTTP: the grpc-gateway is behind TLS; etcd closes the connection without a reply.
    for done in (attack.http_put(), attack.http_range()):
        assert done.returncode != 0 and done.stdout == b"", done
    # Plain gRPC (h2c) is no TLS handshake either.
    done = attack.grpc_put()
    assert b"grpc-status: 0" not in done.stdout and done.returncode != 0, done
    # TLS, but no client certificate (the server's is not even checked): the handshake fails.
    for done in (attack.http_put("https", "-k"), attack.http_range("https", "-k")):
        assert done.returncode != 0 and done.stdout == b"", done
    # A client certificate from the attacker's own CA, naming itself `admin`: refused alike.
    foreign = foreign_client(attacker_dir)
    log = ClusterLayout(cluster.directory).etcd.log
    seen = log.stat().st_size
    for done in (attack.http_put("https", "-k", *foreign), attack.http_range("https", "-k", *foreign)):
        assert done.returncode != 0 and done.stdout == b"", done
    with log.open("rb") as f:  # etcd says why it refused the handshake
        f.seek(seen)
        assert b"certificate signed by unknown authority" in f.read()

    # The peer port (raft, member list) asks for a certificate from the etcd CA too.
    assert state.etcd.peer_port
    for tls in ([], ["-k"], ["-k", *foreign]):
        scheme = "https" if tls else "http"
        url = f"{scheme}://127.0.0.1:{state.etcd.peer_port}/members"
        done = as_attacker("curl", "-sS", "--max-time", "5", *tls, url)
        assert done.returncode != 0 and done.stdout == b"", done

    assert asyncio.run(_read(endpoint, state.etcd.tls, attack.key)) is None  # nothing written
    assert asyncio.run(_read(endpoint, state.etcd.tls, ca_key)) == before
    got = cluster.authctl("get", "ca_overrides/windows")
    assert got.exit_code != 0 and "not found" in got.stderr.lower(), got
    assert cluster.authctl("get", "cas/windows").exit_code == 0


def test_etcd_key_files_are_private_to_their_owner(cluster: LocalCluster) -> None:
    layout = ClusterLayout(cluster.directory)
    keys = [layout.pki.etcd_ca_key, layout.etcd.tls_key, layout.admin.etcd_client.key]
    keys += [layout.node(n).etcd_client.key for n in cluster.node_names]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert key.stat().st_uid == os.getuid()
        done = as_attacker("cat", str(key))
        assert done.returncode != 0 and b"Permission denied" in done.stderr and done.stdout == b"", key


def test_each_node_has_its_own_etcd_identity(cluster: LocalCluster) -> None:
    """node.yaml carries the node's own client certificate (CN = node name) from the cluster's etcd CA."""
    layout = ClusterLayout(cluster.directory)
    admin_tls = cluster.state.etcd.tls
    assert admin_tls is not None and admin_tls.cert == layout.admin.etcd_client.cert
    subjects = {"admin": _subject(admin_tls.cert)}
    for node in cluster.node_names:
        tls = NodeConfig.load(layout.node(node).config).etcd_tls
        assert tls is not None and tls.cert == layout.node(node).etcd_client.cert
        subjects[node] = _subject(tls.cert)
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(layout.pki.etcd_ca_cert), str(tls.cert)],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stderr
    assert subjects == {name: f"O={NAME}, CN={name}" for name in ("admin", *cluster.node_names)}


def _subject(cert: Path) -> str:
    done = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "sep_comma_plus_space", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().removeprefix("subject=")


async def test_a_node_identity_stays_in_its_cluster_prefixes(cluster: LocalCluster) -> None:
    """etcd RBAC: node1's certificate reads and may write its cluster's keys and events, nothing else;
    the admin is root; the member certificate (CN etcd-member, no etcd user) reads nothing."""
    layout = ClusterLayout(cluster.directory)
    endpoint = cluster.state.etcd.endpoints[0]
    node_tls = NodeConfig.load(layout.node("node1").config).etcd_tls
    admin_tls = cluster.state.etcd.tls
    member = EtcdTLS(layout.etcd.etcd_ca, layout.etcd.tls_cert, layout.etcd.tls_key)
    other = "othercluster"
    async with EtcdStore([endpoint], tls=node_tls) as node:
        own = await node.get(cert_authority_key(NAME, "windows"))
        assert own is not None
        # A Txn needs write permission on every key it may write, run or not: a stale CAS proves it.
        stale = await node.compare_and_swap(
            cert_authority_key(NAME, "windows"), own.mod_revision + 10**6, b"x"
        )
        assert not stale.succeeded and stale.current == own
        assert isinstance(await node.get_prefix(events_prefix(NAME)), list)
        refused = [
            node.compare_and_swap(cert_authority_key(other, "windows"), 0, b"x"),
            node.compare_and_swap("/authsim-events/" + other + "/x", 0, b"x"),
            node.compare_and_swap("/anything", 0, b"x"),
            node.get(cert_authority_key(other, "windows")),
            node.get_prefix("/authsim/"),
            node.delete_prefix(events_prefix(other)),
        ]
        for call in refused:
            with pytest.raises(
                StoreAccessError, match=r"refused this client \(user node1\): .*permission denied"
            ):
                await call
    async with EtcdStore([endpoint], tls=admin_tls) as admin:
        assert await admin.create(cert_authority_key(other, "windows"), b"root may") > 0
        assert await admin.delete_prefix(f"/authsim/{other}/") == 1
    async with EtcdStore([endpoint], tls=member, timeout=2.0) as leaked:
        with pytest.raises(StoreAccessError, match=r"user etcd-member"):
            await leaked.get(cert_authority_key(NAME, "windows"))


def test_a_node_added_later_gets_its_own_etcd_user(tmp_path: Path) -> None:
    """`up --nodes 2` on a running one-node cluster (auth already on): node2 serves, confined alike."""
    directory = tmp_path / "grow"
    with local_cluster(directory, nodes=1, cluster_name="grow") as cluster:
        LocalCluster.start(directory, nodes=2, cluster_name="grow")
        assert cluster.node_names == ["node1", "node2"]
        with cluster.client("node2") as client:
            assert client.health() == "SERVING"
        node2 = NodeConfig.load(ClusterLayout(directory).node("node2").config).etcd_tls
        assert asyncio.run(_write_as(cluster.state.etcd.endpoints[0], node2, "/authsim/mycluster/x"))


async def _write_as(endpoint: str, tls: EtcdTLS | None, key: str) -> bool:
    """Whether etcd refuses `tls`'s user a create of `key` (True: refused)."""
    async with EtcdStore([endpoint], tls=tls) as store:
        try:
            await store.create(key, b"x")
        except StoreAccessError:
            return True
    return False
