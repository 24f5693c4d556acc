"""Test certificates made with software RSA keys: CA certificates with or without each extension, chains.

root, issuer = external_ca(levels=2)[::-1]     # external_ca returns the chain nearest first
ca = cluster_ca("mycluster", rsa_key(1))       # what a node's self-signed CA looks like
override = override_cert(rsa_key(1), issuer)   # an override for that CA key, signed by `issuer`
pair = ca_key_pair(ca, host_id="host-a")       # the CA key as cert_authority stores it
openssl_key_hash(path)                          # `public_key_hash` of a PEM file, checked independently
"""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from authsim.cluster.resources.cert_authority import CAKeyPair
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.subject import CLUSTER_NAME_OID
from authsim.cluster.resources.x509 import CA_KEY_USAGE, ca_certificate_builder, public_key_hash


@cache
def rsa_key(slot: int = 0) -> rsa.RSAPrivateKey:
    """The software RSA-2048 key number `slot`: made once per test session, the same key for a slot."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def name(cn: str = "Test CA", *, orgs: Collection[str] = (), cluster_oid: str | None = None) -> x509.Name:
    """A subject: CN, then each O in order, then OID 1.3.9999.4.1 when given."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    if cluster_oid is not None:
        attributes.append(x509.NameAttribute(CLUSTER_NAME_OID, cluster_oid))
    return x509.Name(attributes)


@dataclass(frozen=True)
class CertKey:
    """A certificate and the software key of its subject."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def pem(self) -> str:
        """The certificate as PEM text without the final newline, as the resource stores it."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode().strip()

    @property
    def key_hash(self) -> str:
        return public_key_hash(self.cert.public_key())

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc


def issue_cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: CertKey | None = None,
    *,
    ca: bool | None = True,
    key_usage: Collection[str] | None = CA_KEY_USAGE,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: int = 365,
) -> CertKey:
    """A certificate for `key`, signed by `issuer` (self-signed when None).

    `ca=None` leaves out BasicConstraints, `key_usage=None` leaves out KeyUsage (flag names as in
    `x509.KeyUsage`). Validity defaults to [an hour ago, + `days`]; `not_before` may be after `not_after`.
    """
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    signer = issuer.key if issuer else key
    builder = ca_certificate_builder(
        subject,
        issuer.cert.subject if issuer else subject,
        key.public_key(),
        start,
        not_after or start + dt.timedelta(days=days),
        authority_key_id=x509.SubjectKeyIdentifier.from_public_key(signer.public_key()),
        ca=ca,
        usage=key_usage,
        allow_never_valid=True,
    )
    return CertKey(builder.sign(signer, hashes.SHA256()), key)


def external_ca(levels: int = 2, first_slot: int = 100, org: str = "Example Corp") -> list[CertKey]:
    """An external CA hierarchy (a root and `levels - 1` intermediates), nearest to the leaf first.

    The list is in the order of an override's `chain` field: the issuing CA first, the root last.
    """
    root = issue_cert(name(f"{org} Root CA", orgs=[org]), rsa_key(first_slot), days=7300)
    hierarchy = [root]
    for level in range(1, levels):
        subject = name(f"{org} Issuing CA {level}", orgs=[org])
        hierarchy.append(issue_cert(subject, rsa_key(first_slot + level), hierarchy[-1], days=7000))
    return hierarchy[::-1]


def cluster_ca(cluster_name: str, key: rsa.RSAPrivateKey, days: int = 3650) -> CertKey:
    """A self-signed CA certificate as a node makes it: CN = O = cluster name, CA, keyCertSign + cRLSign."""
    return issue_cert(name(cluster_name, orgs=[cluster_name]), key, days=days)


def override_cert(
    ca_key: rsa.RSAPrivateKey,
    issuer: CertKey,
    cluster_name: str = "mycluster",
    *,
    subject: x509.Name | None = None,
    ca: bool | None = True,
    key_usage: Collection[str] | None = CA_KEY_USAGE,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: int = 365,
) -> CertKey:
    """An override certificate for the CA key `ca_key`, signed by the external CA `issuer`."""
    subject = subject or name(f"{cluster_name} override CA", orgs=[cluster_name])
    return issue_cert(
        subject,
        ca_key,
        issuer,
        ca=ca,
        key_usage=key_usage,
        not_before=not_before,
        not_after=not_after,
        days=days,
    )


def ca_key_pair(ca: CertKey, host_id: str, key_id: str | None = None) -> CAKeyPair:
    """The CA key as the cert_authority resource stores it, held by the node `host_id`."""
    key_id = key_id or ca.key_hash[:32]
    return CAKeyPair(ca.pem, KeyRef(host_id, key_id), ca.key_hash)


def openssl_key_hash(pem_file: Path, kind: str = "x509") -> str:
    """`public_key_hash` of a certificate (or with kind "req", a CSR) computed without the product:
    openssl gives the DER SubjectPublicKeyInfo, hashlib its SHA-256."""
    pub = _openssl(kind, "-in", str(pem_file), "-noout", "-pubkey")
    return hashlib.sha256(_openssl("pkey", "-pubin", "-outform", "DER", stdin=pub)).hexdigest()


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout
