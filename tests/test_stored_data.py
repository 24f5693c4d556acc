"""Stored data is distrusted: garbage written straight into etcd never makes a real node answer INTERNAL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.auth_node.pb import authsim_pb2_grpc as pb_grpc
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.cli.watch import watch_overrides
from authsim.cluster.local.launcher import admin_identity
from authsim.cluster.local.status import collect_status
from authsim.cluster.mtls import NODE_TLS_NAME
from authsim.cluster.resources.yaml_codec import dump_yaml
from authsim.cluster.store import EtcdStore, Versioned
from authsim.cluster.store.keys import cert_authority_key, override_key

T = TypeVar("T")
OVERRIDE_FIX = (
    "replace it with a valid one (`authctl create -f FILE`) or remove it (`authctl rm ca_overrides/{t}`)"
)
CA_FIX = (
    "remove it (`authctl rm cas/{t}`) and restart the nodes (`authsim down && authsim up`): "
    "each records its own key again"
)
NOT_PEM = "not a PEM certificate (no -----BEGIN CERTIFICATE----- ... -----END CERTIFICATE----- block)"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("stored") / "c", nodes=1) as cluster:
        yield cluster


def etcd(cluster: LocalCluster, key: str, value: bytes | None = None) -> Versioned | None:
    """As an intruder with etcd access: write `value` at `key` (None: just read); what is stored then."""

    async def run() -> Versioned | None:
        state = cluster.state
        async with EtcdStore(list(state.etcd.endpoints), tls=state.etcd.tls) as store:
            if value is not None:
                await store.update(key, lambda _: value)
            return await store.get(key)

    return asyncio.run(run())


def put(cluster: LocalCluster, key: str, value: bytes) -> int:
    found = etcd(cluster, key, value)
    assert found is not None
    return found.mod_revision


def call(cluster: LocalCluster, method: str, request: Any) -> Any:
    """AuthService.`method` on node1 over the admin's mTLS channel: the reply or the grpc.RpcError."""
    key, cert, server_ca = admin_identity(cluster.directory).read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_ca, private_key=key, certificate_chain=cert
    )
    options = [("grpc.ssl_target_name_override", NODE_TLS_NAME)]
    with grpc.secure_channel(cluster.state.node("node1").address, credentials, options=options) as channel:
        try:
            return getattr(pb_grpc.AuthServiceStub(channel), method)(request, timeout=30)
        except grpc.RpcError as e:
            return e


def refusal(reply: Any) -> tuple[grpc.StatusCode, str]:
    assert isinstance(reply, grpc.RpcError), reply
    error: Any = reply
    details: str = error.details()
    assert "\n" not in details
    return error.code(), details


def eventually(check: Callable[[], T], timeout: float = 10.0) -> T:
    """`check()` once it stops raising AssertionError (the node's view follows etcd by a watch)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def sign_request(ca_type: str, user: str = "alice") -> pb.SignRequest:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return pb.SignRequest(type=ca_type, user=user, public_key=spki)


def active_key(cluster: LocalCluster, ca_type: str) -> str:
    with cluster.client("node1") as client:
        return str(client.get_cert_authority(ca_type).active_keys[0].public_key_hash)


def override_json(cluster_name: str, ca_type: str, entries: list[dict[str, Any]]) -> bytes:
    spec = {"certificate_overrides": entries}
    document = {"kind": "cert_authority_override", "sub_kind": ca_type, "version": "v1"}
    return json.dumps({**document, "metadata": {"name": cluster_name}, "spec": spec}).encode()


def test_an_enabled_override_with_a_garbage_certificate(cluster: LocalCluster, tmp_path: Path) -> None:
    """The attack of issue 10: an enabled entry with a garbage certificate for the active windows key."""
    key = override_key("mycluster", "windows")
    garbage = override_json(
        "mycluster", "windows", [{"certificate": "garbage", "public_key": active_key(cluster, "windows")}]
    )
    revision = put(cluster, key, garbage)
    problem = f"spec.certificate_overrides[0].certificate: {NOT_PEM}"
    fix = OVERRIDE_FIX.format(t="windows")
    expected = f"stored ca_overrides/windows (revision {revision}) breaks a rule: {problem}; {fix}"

    def sign_refused() -> None:
        assert refusal(call(cluster, "Sign", sign_request("windows"))) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            expected,
        )

    eventually(sign_refused)
    code, details = refusal(call(cluster, "Exercise", pb.ExerciseRequest(type="windows", user="alice")))
    assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, expected)
    signed = cluster.authctl("auth", "sign", "--type=windows", "--user=alice", "--out", str(tmp_path / "a"))
    assert (signed.exit_code, signed.stderr) == (1, f"error: {expected}\n")
    assert not list(tmp_path.glob("a.*"))
    assert call(cluster, "Sign", sign_request("db_client")).certificate  # the other CA type still issues

    shown = cluster.authctl("get", "ca_overrides/windows")
    assert shown.exit_code == 0
    assert yaml.safe_load(shown.stdout)["status"]["problems"] == [problem]
    warning = (
        f"warning: stored ca_overrides/windows breaks 1 rule (see status.problems), nothing uses it: {fix}\n"
    )
    assert shown.stderr == warning
    as_text = cluster.authctl("get", "ca_overrides/windows", "--format", "text")
    assert (
        as_text.exit_code == 0 and "(unreadable certificate)" in as_text.stdout and problem in as_text.stdout
    )
    status = cluster.authctl("status", "--format", "json")
    assert json.loads(status.stdout)["problems"] == [expected]
    assert collect_status(cluster.directory).problems == [expected]

    for method, request in (
        ("CreateOverride", pb.CreateOverrideRequest(type="windows", certificate="x", disabled=True)),
        (
            "UpdateOverride",
            pb.UpdateOverrideRequest(
                type="windows", public_key=active_key(cluster, "windows"), set_disabled=True
            ),
        ),
        (
            "DeleteOverride",
            pb.DeleteOverrideRequest(type="windows", public_key=active_key(cluster, "windows")),
        ),
    ):
        assert refusal(call(cluster, method, request)) == (grpc.StatusCode.FAILED_PRECONDITION, expected), (
            method
        )
    create = pb.WriteOverrideRequest(
        resource=pb.CertAuthorityOverride(cluster_name="mycluster", type="windows"), mode=pb.CREATE
    )
    code, details = refusal(call(cluster, "WriteOverrideResource", create))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "use `authctl create -f`" in details
    after = etcd(cluster, key)
    assert after is not None and (after.value, after.mod_revision) == (garbage, revision)

    valid = tmp_path / "valid.yaml"
    document = {"kind": "cert_authority_override", "sub_kind": "windows", "version": "v1"}
    valid.write_text(dump_yaml({**document, "metadata": {"name": "mycluster"}, "spec": {}}))
    replaced = cluster.authctl("create", "-f", str(valid))
    assert replaced.exit_code == 0, replaced.stderr
    reply = eventually(lambda: call(cluster, "Sign", sign_request("windows")))
    assert reply.certificate and not reply.ca_override.active
    assert json.loads(cluster.authctl("status", "--format", "json").stdout)["problems"] == []
    assert cluster.authctl("get", "ca_overrides/windows").stderr == ""


def test_a_value_that_is_not_json_is_shown_refused_and_removable(cluster: LocalCluster) -> None:
    key = override_key("mycluster", "db_client")
    revision = put(cluster, key, b"\xff\xfe{not json")
    prefix = (
        f"stored ca_overrides/db_client (revision {revision}) breaks a rule: resource: not a JSON document: "
    )

    def sign_refused() -> str:
        code, details = refusal(call(cluster, "Sign", sign_request("db_client")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(prefix), details
        return details

    details = eventually(sign_refused)
    assert details.endswith(f"; {OVERRIDE_FIX.format(t='db_client')}")
    listed = call(cluster, "ListOverrides", pb.GetOverrideRequest(type="db_client"))
    [problem] = listed.overrides[0].problems
    assert problem.startswith("resource: not a JSON document: ")
    removed = cluster.authctl("rm", "ca_overrides/db_client")
    assert removed.exit_code == 0, removed.stderr
    assert etcd(cluster, key) is None
    assert eventually(lambda: call(cluster, "Sign", sign_request("db_client"))).certificate


def test_several_problems_are_counted_and_the_full_list_is_in_get(cluster: LocalCluster) -> None:
    key = override_key("mycluster", "windows")
    entries = [{"certificate": "garbage\n\x1b[31m", "public_key": "Z" * 200}]
    revision = put(cluster, key, override_json("other\ncluster", "windows", entries))
    first = "metadata.name: must be the cluster name 'mycluster', got 'other\\ncluster'"
    expected = (
        f"stored ca_overrides/windows (revision {revision}) breaks a rule: {first} (and 2 more: see "
        f"`authctl get ca_overrides/windows`); {OVERRIDE_FIX.format(t='windows')}"
    )

    def exercise_refused() -> None:
        reply = call(cluster, "Exercise", pb.ExerciseRequest(type="windows", user="alice"))
        assert refusal(reply) == (grpc.StatusCode.FAILED_PRECONDITION, expected)

    eventually(exercise_refused)
    problems = yaml.safe_load(cluster.authctl("get", "ca_overrides/windows").stdout)["status"]["problems"]
    assert problems == [
        first,
        f"spec.certificate_overrides[0].certificate: {NOT_PEM}",
        "spec.certificate_overrides[0].public_key: must be 64 lower-case hex characters (SHA-256 of the "
        f"public key), got '{'Z' * 77}…'",
    ]
    assert cluster.authctl("rm", "ca_overrides/windows").exit_code == 0
    assert etcd(cluster, key) is None


def test_a_garbage_cert_authority_is_shown_and_refused_naming_the_fix(cluster: LocalCluster) -> None:
    key = cert_authority_key("mycluster", "db_client")
    original = etcd(cluster, key)
    assert original is not None
    overrides_before = etcd(cluster, override_key("mycluster", "db_client"))
    revision = put(cluster, key, b'{"spec": {"cluster_name": "mycluster"}}')
    problem = "resource: not a cert_authority: missing 'type'"
    expected = (
        f"stored cas/db_client (revision {revision}) breaks a rule: {problem}; {CA_FIX.format(t='db_client')}"
    )
    try:

        def sign_refused() -> None:
            reply = call(cluster, "Sign", sign_request("db_client"))
            assert refusal(reply) == (grpc.StatusCode.FAILED_PRECONDITION, expected)

        eventually(sign_refused)
        for method, request in (
            ("CreateOverrideCSR", pb.CreateOverrideCSRRequest(type="db_client")),
            ("CreateOverride", pb.CreateOverrideRequest(type="db_client", certificate="x", disabled=True)),
            ("RotateCertAuthority", pb.RotateRequest(type="db_client")),
        ):
            reply = call(cluster, method, request)
            assert refusal(reply) == (grpc.StatusCode.FAILED_PRECONDITION, expected), method
        assert etcd(cluster, override_key("mycluster", "db_client")) == overrides_before

        shown = cluster.authctl("get", "cas/db_client")
        assert shown.exit_code == 0
        assert yaml.safe_load(shown.stdout)["status"] == {"problems": [problem]}
        fix = CA_FIX.format(t="db_client")
        assert (
            shown.stderr
            == f"warning: stored cas/db_client breaks 1 rule (see status.problems), nothing uses it: {fix}\n"
        )
        status = call(cluster, "GetNodeStatus", pb.NodeStatusRequest())
        assert list(status.problems) == [expected]
        assert [k.ca_type for k in status.keys] == ["windows"]
        assert call(cluster, "Sign", sign_request("windows")).certificate
    finally:
        put(cluster, key, original.value)


def test_an_unreadable_ca_key_is_removed_through_authctl_and_the_node_records_its_key_again(
    cluster: LocalCluster,
) -> None:
    key = cert_authority_key("mycluster", "windows")
    before = etcd(cluster, key)
    assert before is not None
    held = active_key(cluster, "windows")

    valid_ca = cluster.authctl("rm", "cas/db_client")
    assert valid_ca.exit_code == 1
    assert valid_ca.stderr == (
        "error: cas/db_client passes every rule: only a stored CA that breaks one is removed "
        "(its keys sign and are trusted downstream)\n"
    )

    data = json.loads(before.value)
    data["spec"]["active_keys"]["tls"][0]["cert"] = "garbage"
    revision = put(cluster, key, json.dumps(data).encode())
    problem = "spec.active_keys.tls[0].cert: not a PEM X.509 certificate: "
    prefix = f"stored cas/windows (revision {revision}) breaks a rule: {problem}"

    def sign_refused() -> None:
        code, details = refusal(call(cluster, "Sign", sign_request("windows")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(prefix), details
        assert details.endswith(f"; {CA_FIX.format(t='windows')}")

    eventually(sign_refused)
    cluster.stop()
    LocalCluster.start(cluster.directory, nodes=1)  # a node starts, and serves, beside a broken CA
    sign_refused()
    assert call(cluster, "Sign", sign_request("db_client")).certificate
    removed = cluster.authctl("rm", "cas/windows")
    assert removed.exit_code == 0, removed.stderr
    assert etcd(cluster, key) is None
    cluster.stop()
    LocalCluster.start(cluster.directory, nodes=1)
    assert active_key(cluster, "windows") == held
    assert call(cluster, "Sign", sign_request("windows")).certificate


def test_watch_shows_a_stored_override_with_the_rules_it_breaks(cluster: LocalCluster) -> None:
    key = override_key("mycluster", "db_client")
    lines: list[str] = []

    async def run() -> None:
        task = asyncio.create_task(watch_overrides(cluster.directory, "db_client", lines.append, count=1))
        while not lines:
            await asyncio.sleep(0.05)
        state = cluster.state
        async with EtcdStore(list(state.etcd.endpoints), tls=state.etcd.tls) as store:
            await store.update(key, lambda _: b"[1, 2]")
        await asyncio.wait_for(task, 10)

    asyncio.run(run())
    shape = "a mapping with kind, sub_kind, version, metadata and spec"
    assert lines[1].splitlines()[1:] == [f"    ! breaks: resource: must be {shape}, got a list"]
    assert cluster.authctl("rm", "ca_overrides/db_client").exit_code == 0
