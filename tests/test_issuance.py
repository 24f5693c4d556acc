"""Credentials issued through overrides, checked by real downstream targets and openssl (seed steps 3, 5)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.auth_node.pb import authsim_pb2_grpc as pb_grpc
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import KeyAccessError, ValidationError
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.local.launcher import admin_identity, register_target_addresses
from authsim.cluster.mtls import NODE_TLS_NAME
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.keys import target_key
from tests.certs import openssl_key_hash

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Flow:
    cluster: LocalCluster
    ca: ExternalCA
    tmp: Path
    certs: dict[str, dict[str, Path]]  # ca type -> node -> override certificate file

    def ok(self, *args: str, node: str | None = None) -> str:
        result = self.cluster.authctl(*args, node=node)
        assert result.exit_code == 0, (args, result.stderr)
        return result.stdout

    def key_of(self, ca_type: str, node: str) -> str:
        return openssl_key_hash(self.certs[ca_type][node])

    def set_disabled(self, ca_type: str, owner: str, disabled: bool, via: str) -> None:
        self.ok(
            "auth",
            "update-override",
            f"--type={ca_type}",
            "--public-key",
            self.key_of(ca_type, owner),
            "--set-disabled",
            str(disabled).lower(),
            "--force",
            node=via,
        )


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """3 nodes, every key made active (rotate), each node's own override entry for each CA type."""
    tmp = tmp_path_factory.mktemp("issue")
    ca = init(tmp / "extca")
    with local_cluster(tmp / "c", nodes=3) as cluster:
        flow = Flow(cluster, ca, tmp, {})
        for ca_type in ("windows", "db_client"):
            flow.ok("auth", "rotate", f"--type={ca_type}")
            flow.certs[ca_type] = {}
            for node, pem in cluster.override_certs(ca, ca_type).items():
                path = tmp / f"{ca_type}-{node}.pem"
                path.write_text(pem + "\n")
                flow.certs[ca_type][node] = path
                flow.ok(
                    "auth", "create-override", f"--type={ca_type}", str(path), str(ca.chain_path), node=node
                )
        yield flow


def test_db_credential_chains_to_the_external_root_and_the_database_accepts_it(flow: Flow) -> None:
    flow.ok("auth", "rotate", "--type=db_client")
    subprocess.run(
        [
            str(BIN / "authsim"),
            "trust",
            "--dir",
            str(flow.cluster.directory),
            "--target",
            "db",
            "--ca",
            str(flow.ca.directory / "root.pem"),
            "--replace",
        ],
        check=True,
        capture_output=True,
    )
    for node in flow.cluster.node_names:
        out = flow.tmp / f"alice-{node}"
        info = flow.cluster.sign("db_client", "alice", out, node=node)
        assert info["ca_override"] == {"active": True, "public_key_hash": flow.key_of("db_client", node)}
        verified = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(flow.ca.directory / "root.pem"),
                "-untrusted",
                f"{out}.chain.pem",
                f"{out}.crt",
            ],
            capture_output=True,
            text=True,
        )
        assert verified.returncode == 0 and f"{out}.crt: OK" in verified.stdout, verified.stderr
        assert oct(Path(f"{out}.key").stat().st_mode & 0o777) == "0o600"
        event = flow.cluster.exercise("db_client", "alice", node=node)
        assert event["success"] and event["code"] == "TDB00I" and event["event"] == "db.session.start"
        assert event["ca_override"] == info["ca_override"]
    # node2 disables node1's entry (staging a disable is allowed from any node): node1 falls back to the
    # self-signed CA at once, and the database, trusting only the external root, refuses it.
    flow.set_disabled("db_client", "node1", True, via="node2")
    try:
        event = flow.cluster.exercise("db_client", "alice", node="node1")
        assert not event["success"] and event["code"] == "TDB00W"
        assert "certificate verify failed" in event["error"]  # PostgreSQL's own words
        assert event["ca_override"] == {"active": False, "public_key_hash": flow.key_of("db_client", "node1")}
        assert flow.cluster.events()[-1] == event
    finally:
        flow.ok(
            "auth",
            "update-override",
            "--type=db_client",
            "--public-key",
            flow.key_of("db_client", "node1"),
            "--set-disabled",
            "false",
            node="node1",
        )
    assert flow.cluster.exercise("db_client", "alice", node="node1")["success"]


def test_batch_sign_issues_one_credential_per_user_or_none(flow: Flow) -> None:
    """`auth sign` with several users: one SignBatch call, each leaf names its user and verifies with
    openssl to the external root; one bad user refuses the whole batch with its index, writing nothing."""
    out = flow.tmp / "batch" / "cred"
    users = ["alice", "bob@example.com", "carol.d"]
    flow.ok(
        "auth", "sign", "--type=db_client", *[f"--user={u}" for u in users], "--out", str(out), node="node3"
    )
    serials = set()
    for user in users:
        leaf = Path(f"{out}-{user}.crt")
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(flow.ca.directory / "root.pem"), "-untrusted",
             f"{out}-{user}.chain.pem", str(leaf)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stderr
        cert = x509.load_pem_x509_certificate(leaf.read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={user}"
        info = json.loads(Path(f"{out}-{user}.json").read_text())
        assert info["node"] == "node3" and info["ca_override"]["active"] is True
        serials.add(cert.serial_number)
    assert len(serials) == len(users)

    refused = flow.cluster.authctl(
        "auth", "sign", "--type=db_client", "--user=dave", "--user", "x" * 65, "--out", str(out), node="node3"
    )
    assert (refused.exit_code, refused.stderr) == (  # refused locally, by the node's own rule
        1,
        "error: --user: at most 64 bytes of UTF-8 (a certificate CN), got 65 bytes\n",
    )
    with flow.cluster.client("node3") as client:
        good = pb.SignRequest(type="db_client", user="dave", public_key=_spki())
        bad = pb.SignRequest(type="db_client", user="erin", public_key=b"junk")
        with pytest.raises(ValidationError) as batch:
            client.call("SignBatch", pb.SignBatchRequest(requests=[good, bad, good]))
        assert str(batch.value) == ("requests[1].public_key: not a DER SubjectPublicKeyInfo")
        with pytest.raises(ValidationError, match=r"requests: must hold 1 to 256 requests, got 257"):
            client.call("SignBatch", pb.SignBatchRequest(requests=[good] * 257))
        assert len(client.call("SignBatch", pb.SignBatchRequest(requests=[good] * 256)).credentials) == 256
    assert not list(out.parent.glob("cred-dave*"))


def test_many_calls_at_once_on_one_connection_are_all_answered(flow: Flow) -> None:
    """400 Sign calls in flight on one channel (as an asyncio client or a load balancer sends them):
    every one gets a credential, none is refused with RST_STREAM (the node's per-connection stream
    limit is above what such a client opens, and gRPC queues calls beyond it on the client)."""
    key, cert, server_ca = admin_identity(flow.cluster.directory).read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_ca, private_key=key, certificate_chain=cert
    )
    request = pb.SignRequest(type="db_client", user="many", public_key=_spki())

    async def run() -> list[pb.SignResponse]:
        address = flow.cluster.state.node("node2").address
        options = [("grpc.ssl_target_name_override", NODE_TLS_NAME)]
        async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
            stub = pb_grpc.AuthServiceStub(channel)
            answers: list[pb.SignResponse] = await asyncio.gather(
                *(stub.Sign(request, timeout=60) for _ in range(400))
            )
            return answers

    answers = asyncio.run(run())
    assert len({a.certificate for a in answers}) == 400


def test_windows_issuer_is_the_override_and_ntauth_must_hold_it(flow: Flow) -> None:
    override = x509.load_pem_x509_certificate(flow.certs["windows"]["node2"].read_bytes())
    out = flow.tmp / "bob-windows"
    info = flow.cluster.sign("windows", "bob", out, node="node2")
    leaf = x509.load_pem_x509_certificate(Path(f"{out}.crt").read_bytes())
    assert leaf.issuer == override.subject
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = override.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert Path(f"{out}.chain.pem").read_text() == ""  # windows: NTAuth knows the issuing CA directly
    leaf.verify_directly_issued_by(override)
    assert info["ca_override"]["active"]
    refused = flow.cluster.exercise("windows", "bob", node="node2")
    assert not refused["success"] and "not in the NTAuth store" in refused["error"]
    subprocess.run(
        [
            str(BIN / "authsim"),
            "trust",
            "--dir",
            str(flow.cluster.directory),
            "--target",
            "desktop",
            "--ntauth",
            str(flow.certs["windows"]["node2"]),
            "--ca",
            str(flow.ca.chain_path),
        ],
        check=True,
        capture_output=True,
    )
    accepted = flow.cluster.exercise("windows", "bob", node="node2")
    assert accepted["success"] and accepted["code"] == "TDP00I" and accepted["desktop_name"]
    assert accepted["ca_override"] == {
        "active": True,
        "public_key_hash": openssl_key_hash(flow.certs["windows"]["node2"]),
    }


def test_exercise_goes_only_to_the_target_registered_in_etcd(flow: Flow) -> None:
    """Nodes look targets up in etcd (written by `authsim up`), not in what the client sends: with the
    db target's record gone, exercise fails naming the fix and opens no session; registered again
    (as `authsim up` does), it works."""
    state = flow.cluster.state

    async def unregister() -> None:
        async with EtcdStore(state.etcd.endpoints, tls=state.etcd.tls) as store:
            assert await store.get(target_key(state.cluster_name, "db")) is not None
            await store.delete_prefix(target_key(state.cluster_name, "db"))

    events = len(flow.cluster.events())
    asyncio.run(unregister())
    deadline = time.monotonic() + 5
    while (done := flow.cluster.authctl("exercise", "--type=db_client", "--user=alice")).exit_code == 0:
        assert time.monotonic() < deadline, "the node still opened a session on an unregistered target"
        events += 1
        time.sleep(0.05)
    assert f"no db target is registered in cluster {state.cluster_name}" in done.stderr
    assert len(flow.cluster.events()) == events  # no session, no event
    register_target_addresses(state)
    deadline = time.monotonic() + 5
    while flow.cluster.authctl("exercise", "--type=db_client", "--user=alice").exit_code != 0:
        assert time.monotonic() < deadline, "registered again, the target is still unknown"
        time.sleep(0.05)
    assert flow.cluster.events()[-1]["event"] == "db.session.start"


def test_propagation_to_other_nodes_without_restart(flow: Flow) -> None:
    """Changes written through one node take effect on the others: each issues under the new state."""
    pids = {n.name: n.pid for n in flow.cluster.state.nodes}
    delays = []
    for _ in range(5):
        for owner, via in (("node2", "node1"), ("node3", "node1")):
            flow.set_disabled("db_client", owner, True, via=via)
            started = time.perf_counter()
            while flow.cluster.sign("db_client", "carol", flow.tmp / "p", node=owner)["ca_override"][
                "active"
            ]:
                assert time.perf_counter() - started < 5
            delays.append(time.perf_counter() - started)
            flow.set_disabled("db_client", owner, False, via=owner)
            assert flow.cluster.sign("db_client", "carol", flow.tmp / "p", node=owner)["ca_override"][
                "active"
            ]
    assert {n.name: n.pid for n in flow.cluster.state.nodes} == pids
    print(f"\ndisable via node1 -> credential without override on the owner: max {max(delays) * 1000:.0f} ms")


def test_watch_shows_each_revision_with_writer_and_attempts(flow: Flow) -> None:
    watcher = subprocess.Popen(
        [
            str(BIN / "authsim"),
            "watch",
            "ca_overrides/windows",
            "--dir",
            str(flow.cluster.directory),
            "--count",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # the current revision: it watches every later one
        assert first.startswith("ca_overrides/windows: revision "), first
        flow.set_disabled("windows", "node3", True, via="node1")
        flow.ok(
            "auth",
            "update-override",
            "--type=windows",
            "--public-key",
            flow.key_of("windows", "node3"),
            "--set-disabled",
            "false",
            node="node3",
        )
        out, err = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
        watcher.wait()
    assert watcher.returncode == 0, err
    key = flow.key_of("windows", "node3")[:16]
    assert "by node1  CAS attempts 1" in out and f"~ {key} (node3) disabled" in out
    assert "by node3  CAS attempts 1" in out and f"~ {key} (node3) enabled" in out


@pytest.mark.authsim(nodes=2, cluster_name="plugged")
def test_additional_key_refuses_to_sign_until_rotation(authsim_cluster: LocalCluster, tmp_path: Path) -> None:
    """Uses the pytest plugin's fixture, as users' own tests do."""
    ca = json.loads(authsim_cluster.authctl("get", "cas/windows", "--format", "json").stdout)
    additional_host = ca["spec"]["additional_trusted_keys"]["tls"][0]["key"]["host_id"]
    node = next(n for n in authsim_cluster.node_names if authsim_cluster.host_id(n) == additional_host)
    refused = authsim_cluster.authctl(
        "auth", "sign", "--type=windows", "--user", "dave", "--out", str(tmp_path / "d"), node=node
    )
    assert refused.exit_code == 1
    assert f"node {node} holds only an additional key of the windows CA" in refused.stderr
    assert "authctl auth rotate --type windows" in refused.stderr
    assert authsim_cluster.authctl("auth", "rotate", "--type=windows").exit_code == 0
    info = authsim_cluster.sign("windows", "dave", tmp_path / "d", node=node)
    assert info["ca_override"]["active"] is False  # no override: the self-signed CA issues
    assert "O=plugged" in info["issuer"] and info["node"] == node


def test_demo_script_passes_on_a_fresh_checkout(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    env = dict(os.environ, CI="true")
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "demo"), "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "The seed's five steps behaved as documented" in done.stdout
        for step in range(1, 6):
            assert f"Step {step}/5" in done.stdout
    finally:
        subprocess.run([str(BIN / "authsim"), "down", "--dir", str(directory)], capture_output=True)


def test_demo_rotation_walks_the_windows_ca_to_standby(tmp_path: Path) -> None:
    """`authsim demo --rotation`: after the five steps, the windows CA rotates by phases with its
    overrides enabled (the gating refusal, per-node CSRs and entries, standby, sessions under the new
    keys accepted by the real KDC); the demo checks each step itself and exits 0 only if all held."""
    directory = tmp_path / "demo"
    try:
        done = subprocess.run(
            [str(BIN / "authsim"), "demo", "--rotation", "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=900,
            env=dict(os.environ, CI="true"),
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "The seed's five steps behaved as documented" in done.stdout
        assert "The rotation of the windows CA behaved as documented" in done.stdout
    finally:
        subprocess.run([str(BIN / "authsim"), "down", "--dir", str(directory)], capture_output=True)


def _spki() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.authsim(nodes=2)
def test_a_refused_signature_reaches_the_client_with_both_host_ids(authsim_cluster: LocalCluster) -> None:
    """Over gRPC too, the KeyAccessError names the host holding the active key and the asking host."""
    ca = json.loads(authsim_cluster.authctl("get", "cas/windows", "--format", "json").stdout)
    active_host = ca["spec"]["active_keys"]["tls"][0]["key"]["host_id"]
    asking = next(n for n in authsim_cluster.node_names if authsim_cluster.host_id(n) != active_host)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    request = pb.SignRequest(
        type="windows",
        user="erin",
        public_key=key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
    )
    with authsim_cluster.client(asking) as client, pytest.raises(KeyAccessError) as refused:
        client.call("Sign", request)
    assert refused.value.owner_host_id == active_host
    assert refused.value.asking_host_id == authsim_cluster.host_id(asking)
