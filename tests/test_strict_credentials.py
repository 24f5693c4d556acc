"""Issued leaves pass strict verifiers: pyca/cryptography's RFC 5280 client profile and
`openssl verify -x509_strict -purpose sslclient`, trusting the external root only (SPEC §8).

One node, every CA type under an override the external CA signed with notBefore = now.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.local.external_ca import ExternalCA, init
from tests.certs import openssl_key_hash

CLUSTER = "strictcluster"
NODE = "node1"
UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
BIN = Path(sys.executable).parent


@dataclass
class Strict:
    cluster: LocalCluster
    ca: ExternalCA
    tmp: Path
    overrides: dict[str, Path]  # ca type -> the override certificate file in force

    def ok(self, *args: str) -> str:
        result = self.cluster.authctl(*args, node=NODE)
        assert result.exit_code == 0, (args, result.stderr)
        return result.stdout

    def fresh_override(
        self, ca_type: str, lifetime: dt.timedelta = dt.timedelta(days=365)
    ) -> x509.Certificate:
        """An override certificate for the node's key of `ca_type`, valid from this second for `lifetime`."""
        with self.cluster.client(NODE) as client:
            reply = client.call("CreateOverrideCSR", pb.CreateOverrideCSRRequest(type=ca_type))
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        cert = self.ca.sign_csr(reply.csrs[0].pem.encode(), not_before=now, not_after=now + lifetime)
        path = self.tmp / f"{ca_type}-{now:%H%M%S}.pem"
        path.write_bytes(cert.public_bytes(Encoding.PEM))
        self.overrides[ca_type] = path
        return cert

    def sign(self, ca_type: str, user: str) -> tuple[x509.Certificate, str, str]:
        """The leaf, the PREFIX of its files and what `auth sign` printed."""
        out = str(self.tmp / f"{user}-{ca_type}")
        stdout = self.ok("auth", "sign", f"--type={ca_type}", f"--user={user}", "--out", out)
        return x509.load_pem_x509_certificate(Path(f"{out}.crt").read_bytes()), out, stdout


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Strict]:
    tmp = tmp_path_factory.mktemp("strict")
    ca = init(tmp / "extca")
    with local_cluster(tmp / "c", nodes=1, cluster_name=CLUSTER) as cluster:
        state = Strict(cluster, ca, tmp, {})
        for ca_type in ("windows", "db_client"):
            state.fresh_override(ca_type)
            state.ok(
                "auth",
                "create-override",
                f"--type={ca_type}",
                str(state.overrides[ca_type]),
                str(ca.chain_path),
            )
        yield state


def _pyca_verify(
    strict: Strict, leaf: x509.Certificate, above: list[x509.Certificate]
) -> list[x509.GeneralName]:
    """The SAN names the RFC 5280 client verifier reports; it raises VerificationError on a refusal."""
    verifier = PolicyBuilder().store(Store([strict.ca.root])).build_client_verifier()
    return list(verifier.verify(leaf, above).subjects or [])


def _openssl_verify(strict: Strict, prefix: str, untrusted: list[x509.Certificate]) -> None:
    """`openssl verify -x509_strict -purpose sslclient` of PREFIX.crt, trusting the external root only."""
    chain = Path(f"{prefix}.untrusted.pem")
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in untrusted))
    root = strict.ca.directory / "root.pem"
    args = ["-x509_strict", "-purpose", "sslclient", "-CAfile", str(root), "-untrusted", str(chain)]
    done = subprocess.run(["openssl", "verify", *args, f"{prefix}.crt"], capture_output=True, text=True)
    assert done.returncode == 0 and f"{prefix}.crt: OK" in done.stdout, done.stdout + done.stderr


def _override(strict: Strict, ca_type: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(strict.overrides[ca_type].read_bytes())


def _check_key_identifiers(leaf: x509.Certificate, issuer: x509.Certificate) -> None:
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest


def test_db_client_leaf_names_the_user_in_a_san_and_passes_strict_verifiers(strict: Strict) -> None:
    leaf, prefix, _ = strict.sign("db_client", "alice smith")
    chain = x509.load_pem_x509_certificates(Path(f"{prefix}.chain.pem").read_bytes())
    user = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice smith")])
    assert leaf.subject == user  # PostgreSQL's cert auth maps the CN
    assert _pyca_verify(strict, leaf, chain) == [x509.DirectoryName(user)]
    _openssl_verify(strict, prefix, chain)
    _check_key_identifiers(leaf, _override(strict, "db_client"))


def test_windows_leaf_carries_a_upn_in_the_desktop_domain_and_passes_strict_verifiers(strict: Strict) -> None:
    """The UPN is `user@<cluster name>.test`, the domain the desktop target logs users on in."""
    leaf, prefix, _ = strict.sign("windows", "alice")
    override = _override(strict, "windows")
    above = [override, *x509.load_pem_x509_certificates(strict.ca.chain_pem)]  # NTAuth holds the override
    [upn] = _pyca_verify(strict, leaf, above)
    assert isinstance(upn, x509.OtherName) and upn.type_id == UPN_OID
    assert upn.value == b"\x0c\x18alice@strictcluster.test"  # DER UTF8String
    _openssl_verify(strict, prefix, above)
    _check_key_identifiers(leaf, override)
    trust = ["--dir", str(strict.cluster.directory), "--target", "desktop", "--replace"]
    trust += ["--ntauth", str(strict.overrides["windows"]), "--ca", str(strict.ca.chain_path)]
    subprocess.run([str(BIN / "authsim"), "trust", *trust], check=True, capture_output=True)
    event = strict.cluster.exercise("windows", "alice", node=NODE)
    assert event["success"] and event["code"] == "TDP00I", event


@pytest.mark.parametrize("ca_type", ["db_client", "windows"])
def test_a_leaf_issued_right_after_the_override_lies_within_its_validity(
    strict: Strict, ca_type: str
) -> None:
    """An override signed this second (notBefore = now) for 30 minutes: a leaf of the default hour
    issued at once starts and ends with it."""
    override = strict.fresh_override(ca_type, dt.timedelta(minutes=30))
    key = openssl_key_hash(strict.overrides[ca_type])
    strict.ok("auth", "update-override", f"--type={ca_type}", "--public-key", key, "--set-cert",
              str(strict.overrides[ca_type]), "--force")  # fmt: skip
    leaf, _, _ = strict.sign(ca_type, "bob")
    assert leaf.issuer == override.subject
    assert leaf.not_valid_before_utc == override.not_valid_before_utc  # not a minute before it
    assert leaf.not_valid_after_utc == override.not_valid_after_utc  # the new override's, not the old one's


def test_the_cli_names_the_serial_number_of_the_self_signed_issuer(strict: Strict) -> None:
    key = openssl_key_hash(strict.overrides["db_client"])
    toggle = ["auth", "update-override", "--type=db_client", "--public-key", key, "--force", "--set-disabled"]
    strict.ok(*toggle, "true")
    try:
        leaf, prefix, stdout = strict.sign("db_client", "carol")
    finally:
        strict.ok(*toggle, "false")
    [serial] = leaf.issuer.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    assert isinstance(serial.value, str)
    shown = f"serialNumber={serial.value},CN={CLUSTER},O={CLUSTER}"
    assert f"issuer {shown}; override not active (self-signed CA)" in stdout
    assert json.loads(Path(f"{prefix}.json").read_text())["issuer"] == shown
