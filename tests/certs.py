"""Test certificates made with software RSA keys: CA certificates with or without each extension, chains.

root, issuer = external_ca(levels=2)[::-1]     # external_ca returns the chain nearest first
ca = cluster_ca("mycluster", rsa_key(1))       # what a node's self-signed CA looks like
override = override_cert(rsa_key(1), issuer)   # an override for that CA key, signed by `issuer`
pair = ca_key_pair(ca, host_id="host-a")       # the CA key as cert_authority stores it
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from authsim.cluster.resources.cert_authority import CAKeyPair
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.override import certificate_key_hash
from authsim.cluster.resources.validation import CLUSTER_NAME_OID

CA_KEY_USAGE = ("key_cert_sign", "crl_sign")
_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


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
        return certificate_key_hash(self.cert)

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
    unknown = set(key_usage or ()) - set(_KEY_USAGE_FLAGS)
    if unknown:
        raise ValueError(f"unknown KeyUsage flags: {sorted(unknown)}")
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    signer = issuer.key if issuer else key
    builder = x509.CertificateBuilder(  # the constructor, unlike the setters, allows an inverted validity
        issuer_name=issuer.cert.subject if issuer else subject,
        subject_name=subject,
        public_key=key.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=start,
        not_valid_after=not_after or start + dt.timedelta(days=days),
    )
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if key_usage is not None:
        flags = {flag: flag in key_usage for flag in _KEY_USAGE_FLAGS}
        usage = x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)
        builder = builder.add_extension(usage, critical=True)
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
