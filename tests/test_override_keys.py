"""Which key an override names, on real node processes: `--public-key` takes any unique prefix of at least
8 hex characters of the hash, in any case (the 16 characters every command shows), resolved by the node
against the CA's keys and the entries; and a key the CA does not (or no longer) have may only be named by a
disabled entry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import NotFoundError, ValidationError
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.resources.key_prefix import resolve_key_hash
from authsim.cluster.resources.yaml_codec import dump_yaml

SHARED = "abcdef01"  # two staged entries' hashes start with it
TWINS = (SHARED + "0" * 56, SHARED + "1" * 56)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("keys") / "c", nodes=2) as running:
        yield running


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> ExternalCA:
    return init(tmp_path_factory.mktemp("extca"))


def own_key(cluster: LocalCluster, node: str, ca_type: str) -> str:
    with cluster.client(node) as client:
        (key,) = [k.public_key_hash for k in client.node_status().keys if k.ca_type == ca_type]
    return str(key)


def ca_keys(cluster: LocalCluster, ca_type: str) -> list[str]:
    return [own_key(cluster, node, ca_type) for node in cluster.node_names]


def stored(cluster: LocalCluster, ca_type: str) -> dict[str, Any]:
    result = cluster.authctl("get", f"ca_overrides/{ca_type}", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def ok(cluster: LocalCluster, *args: str, node: str | None = None) -> str:
    result = cluster.authctl(*args, node=node)
    assert result.exit_code == 0, (args, result.stderr)
    return result.stdout


def refused(cluster: LocalCluster, *args: str, node: str | None = None) -> str:
    """The one-line error of a command that must fail."""
    result = cluster.authctl(*args, node=node)
    assert result.exit_code == 1, (args, result.stdout)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def test_the_readme_flow_names_the_key_by_the_16_characters_shown(
    cluster: LocalCluster, external: ExternalCA, tmp_path: Path
) -> None:
    key = own_key(cluster, "node1", "windows")
    shown = key[:16]
    ok(
        cluster,
        *("auth", "create-override-csr", "--type=windows", "--public-key", key[:8].upper()),
        *("--out", f"{tmp_path}/"),
        node="node1",
    )
    csr = tmp_path / f"windows-{key[:8]}-csr.pem"
    cert = tmp_path / f"windows-{key[:8]}.pem"
    cert.write_bytes(external.sign_csr(csr.read_bytes()).public_bytes(Encoding.PEM))
    added = ok(
        cluster,
        *("auth", "create-override", "--type=windows", str(cert), str(external.chain_path), "--disabled"),
        node="node1",
    )
    assert added.startswith(f"override {shown} added: ")
    # the README's command, as written there: the 16 characters `get ca_overrides` and every reply show
    readme = ("auth", "update-override", "--type=windows", "--public-key", shown, "--set-disabled", "false")
    updated = ok(cluster, *readme, node="node1")
    assert updated.startswith(f"override {shown} updated: revision ")
    (entry,) = [
        e for e in stored(cluster, "windows")["spec"]["certificate_overrides"] if e["public_key"] == key
    ]
    assert not entry.get("disabled", False)


def test_a_prefix_must_name_exactly_one_key_and_a_refusal_changes_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    doc = {
        "kind": "cert_authority_override",
        "sub_kind": "db_client",
        "version": "v1",
        "metadata": {"name": "mycluster"},
        "spec": {"certificate_overrides": [{"public_key": k, "disabled": True} for k in TWINS]},
    }
    path = tmp_path / "twins.yaml"
    path.write_text(dump_yaml(doc))
    ok(cluster, "create", "-f", "--overwrite", "--force", str(path))  # keys of no CA: staged with --force
    before = stored(cluster, "db_client")
    delete = ("auth", "delete-override", "--type=db_client", "--public-key")
    where = "the db_client CA or ca_overrides/db_client"
    assert refused(cluster, *delete, SHARED.upper()) == (
        f"error: public_key: {SHARED} is the start of 2 keys of {where}: {TWINS[0]}, {TWINS[1]}; "
        "give more characters\n"
    )
    assert refused(cluster, *delete, SHARED[:7]) == (
        f"error: public_key: {SHARED[:7]} is 7 hex characters, give at least 8\n"
    )
    assert refused(cluster, *delete, "abcdefgh") == (
        "error: public_key: must be a public key hash or a prefix of one: 8 to 64 hex characters "
        "(any case), got 'abcdefgh'\n"
    )
    unknown = refused(cluster, *delete, "0123456789")
    assert f"error: public_key: no key of {where} starts with 0123456789 (its keys: " in unknown
    for key in [*TWINS, *ca_keys(cluster, "db_client")]:
        assert key[:16] in unknown
    ca_key = ca_keys(cluster, "db_client")[0]
    assert refused(cluster, *delete, ca_key[:8]) == (
        f"error: ca_overrides/db_client has no entry for public key {ca_key}\n"
    )
    assert stored(cluster, "db_client") == before
    deleted = ok(cluster, *delete, (SHARED + "1").upper())
    assert deleted.startswith(f"override {TWINS[1][:16]} deleted: ")
    assert [e["public_key"] for e in stored(cluster, "db_client")["spec"]["certificate_overrides"]] == [
        TWINS[0]
    ]


def test_a_csr_is_asked_for_by_prefix(cluster: LocalCluster) -> None:
    theirs = own_key(cluster, "node2", "db_client")
    pem = ok(
        cluster, "auth", "create-override-csr", "--type=db_client", "--public-key", theirs[:10], node="node2"
    )
    assert pem.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    relayed = ok(  # through node1, the cluster asks node2 (the key's holder)
        cluster, "auth", "create-override-csr", "--type=db_client", "--public-key", theirs[:8], node="node1"
    )
    assert relayed.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    held = refused(
        cluster,
        "auth",
        "create-override-csr",
        "--type=db_client",
        "--local-only",
        "--public-key",
        theirs[:8],
        node="node1",
    )
    assert f"key {theirs[:16]} is held by node node2" in held
    unknown = refused(
        cluster, "auth", "create-override-csr", "--type=db_client", "--public-key", "f" * 8, node="node1"
    )
    assert unknown.startswith(
        "error: public_key_hash: no key of the db_client CA starts with ffffffff (its keys: "
    )


def _software_cert(external: ExternalCA) -> str:
    """An externally signed CA certificate for a key that is in no node's token."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mycluster")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return external.sign_csr(csr.public_bytes(Encoding.PEM)).public_bytes(Encoding.PEM).decode()


def test_an_entry_for_a_key_the_ca_lacks_is_never_enabled(
    cluster: LocalCluster, external: ExternalCA, tmp_path: Path
) -> None:
    cert = tmp_path / "elsewhere.pem"
    cert.write_text(_software_cert(external))
    stage = ("auth", "create-override", "--type=windows", str(cert), str(external.chain_path), "--disabled")
    assert "is not a key of the windows CA" in refused(cluster, *stage)
    key = ok(cluster, "auth", "pub-key-hash", "--cert", str(cert)).strip()
    ok(cluster, *stage, "--force")  # as if the key had been in the CA, and rotated out since
    before = stored(cluster, "windows")
    entries = before["spec"]["certificate_overrides"]
    index = [e["public_key"] for e in entries].index(key)
    rule = (
        f"error: spec.certificate_overrides[{index}].disabled: public key {key} is not (or no longer) "
        "a key of the windows CA: only a disabled entry may name it\n"
    )
    enable = (
        "auth",
        "update-override",
        "--type=windows",
        "--public-key",
        key[:16],
        "--set-disabled",
        "false",
    )
    assert refused(cluster, *enable) == rule
    whole = json.loads(json.dumps(before))
    whole["spec"]["certificate_overrides"][index]["disabled"] = False
    path = tmp_path / "enabled.yaml"
    path.write_text(dump_yaml(whole))
    assert refused(cluster, "create", "-f", str(path)) == rule
    assert stored(cluster, "windows") == before  # same entries, same revision
    # the disabled entry stays editable, and removable
    ok(cluster, "auth", "update-override", "--type=windows", "--public-key", key[:16], "--clear-chain")
    assert "chain" not in stored(cluster, "windows")["spec"]["certificate_overrides"][index]
    ok(cluster, "auth", "delete-override", "--type=windows", "--public-key", key[:8])
    assert key not in [e["public_key"] for e in stored(cluster, "windows")["spec"]["certificate_overrides"]]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(TWINS[0], TWINS[0]), (TWINS[1].upper(), TWINS[1]), (" abcdef010 ", TWINS[0]), ("ABCDEF011", TWINS[1])],
)
def test_resolve_key_hash_takes_a_unique_prefix_in_any_case(value: str, expected: str) -> None:
    assert resolve_key_hash(value, TWINS, "the windows CA") == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (SHARED, ValidationError),
        ("abcdef0", ValidationError),
        ("abcdef01x", ValidationError),
        ("a" * 65, ValidationError),
        ("01234567", NotFoundError),
    ],
)
def test_resolve_key_hash_refuses_what_names_no_single_key(value: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve_key_hash(value, TWINS, "the windows CA")
