"""X.509 helpers shared by the product and the tests: the one public-key hash (SPEC §5), CA certificates,
names as people read them."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

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

# Attribute names RFC 4514 leaves out (it would print their dotted OIDs) that authsim's subjects use.
_NAME_LABELS = {NameOID.SERIAL_NUMBER: "serialNumber"}


def display_name(name: x509.Name) -> str:
    """`name` as RFC 4514 text for people: serialNumber by its name, not as `2.5.4.5=`."""
    return name.rfc4514_string(_NAME_LABELS)


def public_key_hash(public_key: CertificatePublicKeyTypes) -> str:
    """Lower-case hex SHA-256 of the key's DER SubjectPublicKeyInfo."""
    return hashlib.sha256(
        public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


def key_usage(flags: Collection[str]) -> x509.KeyUsage:
    """A KeyUsage asserting just `flags` (argument names of `x509.KeyUsage`); ValueError on an unknown one."""
    unknown = set(flags) - set(_KEY_USAGE_FLAGS)
    if unknown:
        raise ValueError(f"unknown KeyUsage flags: {sorted(unknown)}")
    return x509.KeyUsage(
        **{flag: flag in flags for flag in _KEY_USAGE_FLAGS}, encipher_only=False, decipher_only=False
    )


def ca_certificate_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    path_length: int | None = None,
    authority_key_id: x509.SubjectKeyIdentifier | None = None,
    serial_number: int | None = None,
    ca: bool | None = True,
    usage: Collection[str] | None = CA_KEY_USAGE,
    allow_never_valid: bool = False,
) -> x509.CertificateBuilder:
    """A CA certificate to sign: BasicConstraints CA:TRUE and KeyUsage keyCertSign + cRLSign, both
    critical, the key's SubjectKeyIdentifier and, given the issuer's one, the AuthorityKeyIdentifier.

    The serial number is random unless given. For deliberately wrong certificates (demos, tests):
    `ca=False` writes CA:FALSE (give no `path_length`), `ca=None` no BasicConstraints; `usage` names
    other KeyUsage flags, None writes no KeyUsage; `allow_never_valid` takes a `not_before` after
    `not_after`.
    """
    if allow_never_valid:  # the constructor, unlike the setters, takes an inverted validity
        builder = x509.CertificateBuilder(not_valid_before=not_before, not_valid_after=not_after)
    else:
        builder = x509.CertificateBuilder().not_valid_before(not_before).not_valid_after(not_after)
    builder = (
        builder.subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number() if serial_number is None else serial_number)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if usage is not None:
        builder = builder.add_extension(key_usage(usage), critical=True)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if authority_key_id is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(authority_key_id)
        builder = builder.add_extension(aki, critical=False)
    return builder
