"""Every field a caller sends is checked at a real node: precise one-line errors, bounded, nothing written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.auth_node.pb import authsim_pb2_grpc as pb_grpc
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import ValidationError, quoted
from authsim.cluster.local.launcher import admin_identity
from authsim.cluster.mtls import NODE_TLS_NAME
from authsim.cluster.resources.yaml_codec import dump_yaml
from authsim.cluster.store import EtcdStore, Versioned
from authsim.cluster.store.keys import override_key

KEY_RULE = "public_key: must be an RSA key of 2048 to 8192 bits or an EC key on P-256 or P-384"
USER_RULE = "user: printable characters only (letters, digits, punctuation, symbols, spaces)"
NO_CONTROL = "no control or formatting characters, got"
MAX_MESSAGE = 4000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("boundary") / "c", nodes=1) as cluster:
        yield cluster


def refused(cluster: LocalCluster, method: str, request: Any) -> tuple[grpc.StatusCode, str]:
    """Call `method` on node1 over the admin's mTLS channel, expecting a refusal: its code and details."""
    key, cert, server_ca = admin_identity(cluster.directory).read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_ca, private_key=key, certificate_chain=cert
    )
    options = [("grpc.ssl_target_name_override", NODE_TLS_NAME)]
    with grpc.secure_channel(cluster.state.node("node1").address, credentials, options=options) as channel:
        stub = pb_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            getattr(stub, method)(request, timeout=30)
    error: Any = failure.value
    details: str = error.details()
    assert "\n" not in details and "\r" not in details, details
    assert len(details) <= MAX_MESSAGE, len(details)
    return error.code(), details


def stored(cluster: LocalCluster, key: str) -> Versioned | None:
    """The value at `key` straight from etcd (value and revisions: a refused write changes neither)."""

    async def read() -> Versioned | None:
        state = cluster.state
        async with EtcdStore(list(state.etcd.endpoints), tls=state.etcd.tls) as store:
            return await store.get(key)

    return asyncio.run(read())


def p256() -> bytes:
    return spki(ec.generate_private_key(ec.SECP256R1()))


def spki(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return data


def tiny_rsa_spki(modulus: int, exponent: int = 3) -> bytes:
    """DER SubjectPublicKeyInfo of an RSA key with any modulus (cryptography refuses to make a 4-bit one)."""

    def der(tag: int, body: bytes) -> bytes:
        if len(body) < 0x80:
            return bytes([tag, len(body)]) + body
        size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
        return bytes([tag, 0x80 | len(size)]) + size + body

    def integer(value: int) -> bytes:
        return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))

    algorithm = der(0x30, bytes.fromhex("06092a864886f70d0101010500"))
    key = der(0x30, integer(modulus) + integer(exponent))
    return der(0x30, algorithm + der(0x03, b"\0" + key))


def override_doc(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "cert_authority_override",
        "sub_kind": "windows",
        "version": "v1",
        "metadata": {"name": "mycluster"},
        "spec": {"certificate_overrides": entries},
    }


def test_an_unknown_write_mode_is_invalid_argument_naming_the_field(cluster: LocalCluster) -> None:
    before = stored(cluster, override_key("mycluster", "windows"))
    resource = pb.CertAuthorityOverride(cluster_name="mycluster", type="windows")
    code, details = refused(
        cluster, "WriteOverrideResource", pb.WriteOverrideRequest(resource=resource, mode=cast(Any, 7))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "mode: unknown write mode 7 (known: CREATE, UPSERT, UPDATE)"
    assert stored(cluster, override_key("mycluster", "windows")) == before


def test_a_3_mb_public_key_hash_is_cut_to_80_characters(cluster: LocalCluster) -> None:
    huge = "a" * (3 << 20)
    rule = "must be a public key hash or a prefix of one: 8 to 64 hex characters (any case)"
    code, details = refused(
        cluster, "CreateOverrideCSR", pb.CreateOverrideCSRRequest(type="windows", public_key_hash=huge)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"public_key_hash: {rule}, got '{'a' * 77}…'"
    before = stored(cluster, override_key("mycluster", "windows"))
    for method, request in (
        ("UpdateOverride", pb.UpdateOverrideRequest(type="windows", public_key=huge, set_disabled=True)),
        ("DeleteOverride", pb.DeleteOverrideRequest(type="windows", public_key=huge)),
    ):
        code, details = refused(cluster, method, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, method
        assert details == f"public_key: {rule}, got '{'a' * 77}…'", method
    assert stored(cluster, override_key("mycluster", "windows")) == before


def test_control_characters_in_echoed_input_are_escaped_onto_one_line(cluster: LocalCluster) -> None:
    hostile = "x\ny\r\x1b]0;owned\x07\u202e" + "z" * 200
    shown = "x\\ny\\r\\x1b]0;owned\\x07\\u202e" + "z" * 49 + "…"
    for method, request in (
        ("GetCertAuthority", pb.GetCertAuthorityRequest(type=hostile)),
        ("ListOverrides", pb.GetOverrideRequest(type=hostile)),
        ("RotateCertAuthority", pb.RotateRequest(type=hostile)),
        ("CreateOverride", pb.CreateOverrideRequest(type=hostile, certificate="x")),
        ("Sign", pb.SignRequest(type=hostile, user="u", public_key=p256())),
    ):
        code, details = refused(cluster, method, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, method
        assert details == f"type: unknown CA type '{shown}' (known: windows, db_client)", method
        assert len(f"'{shown}'") == 80


def test_many_invalid_entries_give_a_bounded_message_and_the_full_list_on_request(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """64 invalid entries used to make a message over gRPC's 8 KB limit (RESOURCE_EXHAUSTED)."""
    before = stored(cluster, override_key("mycluster", "windows"))
    entries = [{"certificate": f"garbage {i} " + "-" * 300, "public_key": "Z" * 64} for i in range(64)]
    resource = pb.CertAuthorityOverride(
        cluster_name="mycluster",
        type="windows",
        certificate_overrides=[
            pb.CertificateOverride(certificate=e["certificate"], public_key=e["public_key"]) for e in entries
        ],
    )
    code, details = refused(
        cluster, "WriteOverrideResource", pb.WriteOverrideRequest(resource=resource, mode=pb.UPSERT)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    first = "spec.certificate_overrides[0].certificate: not a PEM certificate (no -----BEGIN CERTIFICATE-----"
    assert details.startswith(first)
    assert details.endswith("; and 123 more problems"), details[-80:]
    assert details.count("; ") == 5

    checked = pb.WriteOverrideRequest(resource=resource, mode=pb.UPSERT, check_only=True)
    with cluster.client("node1") as client:
        reply = client.call("WriteOverrideResource", checked)
    assert len(reply.problems) == 128
    last = "spec.certificate_overrides[63].public_key: must be 64 lower-case hex"
    assert reply.problems[-1].startswith(last)

    path = tmp_path / "bad.yaml"
    path.write_text(dump_yaml(override_doc(entries)))
    result = cluster.authctl("create", "-f", str(path))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    hint = f"and 123 more problems (every problem: `authctl create {path} -f --check`)"
    assert result.stderr.rstrip().endswith(hint)
    listed = cluster.authctl("create", "-f", str(path), "--check")
    assert listed.exit_code == 1
    assert listed.stdout.splitlines() == list(reply.problems)
    assert listed.stderr.strip() == "error: cert_authority_override windows: 128 problems"
    assert stored(cluster, override_key("mycluster", "windows")) == before


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (tiny_rsa_spki(15), "RSA 4 bits"),
        (tiny_rsa_spki((1 << 511) | 0xB5, 65537), "RSA 512 bits"),
        (spki(rsa.generate_private_key(65537, 1024)), "RSA 1024 bits"),
        (spki(ec.generate_private_key(ec.SECP521R1())), "EC secp521r1"),
        (spki(ec.generate_private_key(ec.SECP256K1())), "EC secp256k1"),
        (spki(ed25519.Ed25519PrivateKey.generate()), "Ed25519PublicKey"),
    ],
)
def test_weak_or_unusual_client_keys_are_refused_naming_the_rule(
    cluster: LocalCluster, key: bytes, shown: str
) -> None:
    code, details = refused(cluster, "Sign", pb.SignRequest(type="db_client", user="u", public_key=key))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"{KEY_RULE}, got {shown}"
    batch = pb.SignBatchRequest(
        requests=[
            pb.SignRequest(type="db_client", user="ok", public_key=p256()),
            pb.SignRequest(type="db_client", user="u", public_key=key),
        ]
    )
    code, details = refused(cluster, "SignBatch", batch)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"requests[1].{KEY_RULE}, got {shown}"


def test_client_keys_within_the_rule_get_credentials(cluster: LocalCluster) -> None:
    with cluster.client("node1") as client:
        for key in (
            rsa.generate_private_key(65537, 2048),
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP384R1()),
        ):
            reply = client.call("Sign", pb.SignRequest(type="db_client", user="u", public_key=spki(key)))
            assert reply.certificate.startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(
    ("user", "rule"),
    [
        ("a\x01b", f"{USER_RULE}; {NO_CONTROL} U+0001 (Cc)"),
        ("a\x7fb", f"{USER_RULE}; {NO_CONTROL} U+007F (Cc)"),
        ("a\x1b[31mb", f"{USER_RULE}; {NO_CONTROL} U+001B (Cc)"),
        ("bell\x07", f"{USER_RULE}; {NO_CONTROL} U+0007 (Cc)"),
        ("alice\nbob", f"{USER_RULE}; {NO_CONTROL} U+000A (Cc)"),
        ("evil\u202etxt.exe", f"{USER_RULE}; {NO_CONTROL} U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("zero\u200bwidth", f"{USER_RULE}; {NO_CONTROL} U+200B (ZERO WIDTH SPACE)"),
        ("a" * 65, "user: at most 64 bytes of UTF-8 (a certificate CN), got 65 bytes"),
        ("é" * 33, "user: at most 64 bytes of UTF-8 (a certificate CN), got 66 bytes"),
        ("", "user: required"),
    ],
)
def test_user_names_are_short_and_printable(cluster: LocalCluster, user: str, rule: str) -> None:
    key = p256()
    code, details = refused(cluster, "Sign", pb.SignRequest(type="windows", user=user, public_key=key))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == rule
    with cluster.client("node1") as client:
        events = len(client.call("ListEvents", pb.ListEventsRequest()).events)
    code, details = refused(cluster, "Exercise", pb.ExerciseRequest(type="windows", user=user))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, rule)
    with cluster.client("node1") as client:
        assert len(client.call("ListEvents", pb.ListEventsRequest()).events) == events


def test_printable_names_in_any_script_are_accepted(cluster: LocalCluster) -> None:
    key = p256()
    with cluster.client("node1") as client:
        for user in ("Zoë Ångström", "李小龍", "o'brien (ops) [/]", "a" * 64):
            reply = client.call("Sign", pb.SignRequest(type="db_client", user=user, public_key=key))
            assert json.dumps(reply.issuer)  # issued


@settings(max_examples=300, deadline=None)
@given(st.text(), st.lists(st.text(max_size=5000), min_size=1, max_size=80))
def test_quoted_input_and_messages_are_one_bounded_line(text: str, problems: list[str]) -> None:
    """The one helper every message uses for caller input, and ValidationError's summary."""
    shown = quoted(text)
    assert len(shown) <= 80 and shown.startswith("'") and shown.endswith("'")
    assert all(c == " " or c.isprintable() for c in shown)
    if len(text) <= 78 and all(c == " " or c.isprintable() for c in text):
        assert shown == f"'{text}'"
    message = str(ValidationError(problems))
    assert len(message) <= MAX_MESSAGE and all(c == " " or c.isprintable() for c in message)
    if len(problems) > 5:
        assert message.endswith(f"; and {len(problems) - 5} more problem{'s' * (len(problems) > 6)}")
