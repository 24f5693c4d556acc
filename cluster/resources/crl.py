"""The `cert_authority_crl` resource: revoked serials and the signed CRLs of each key of one CA type.

spec: the serials revoked under each CA key (by public key hash). status: per key, the CRL number and
the CRLs the node holding the key signed: one issued by the self-signed CA certificate, one per override
entry of the key, issued by that entry's certificate (keyed by its SHA-256 fingerprint, as an entry's
certificate can change). Kept apart from the override resource: a CRL re-sign never makes an admin's
override write retry.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from authsim.cluster.errors import ValidationError, quoted

KIND = "cert_authority_crl"
VERSION = "v1"
BACKDATE = dt.timedelta(minutes=1)  # lastUpdate: a little before now, as verifiers' clocks lag
LIFETIME = dt.timedelta(days=7)  # nextUpdate, clamped to the issuer's not_after
_SERIAL = re.compile(r"[0-9a-f]{1,40}")  # RFC 5280: at most 20 octets


def checked_serial(text: str) -> str:
    """A certificate serial as lower-case hex without leading zeros (`0x`, `:` and case accepted)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not _SERIAL.fullmatch(cleaned):
        raise ValidationError(
            [f"serial: hex digits of a certificate serial (at most 40), got {quoted(text)}"]
        )
    return cleaned.lstrip("0") or "0"


@functools.lru_cache(maxsize=1024)
def fingerprint(cert: x509.Certificate) -> str:
    """The hex SHA-256 of a certificate's DER: an override CRL's key in status (computed once per
    certificate: every change of an override has its key's holder look its entry up by it)."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class Revocation:
    """One revoked serial: when, by which request, through which node."""

    serial: str
    revoked_at: str  # ISO 8601, UTC
    request_id: str
    node: str

    def to_dict(self) -> dict[str, str]:
        return {
            "serial": self.serial,
            "revoked_at": self.revoked_at,
            "request_id": self.request_id,
            "node": self.node,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Revocation:
        return cls(
            checked_serial(str(data["serial"])),
            str(data["revoked_at"]),
            str(data.get("request_id", "")),
            str(data.get("node", "")),
        )


@dataclass(frozen=True)
class KeyCRLs:
    """The CRLs of one CA key, all of one number: the self-signed one and one per override certificate."""

    crl_number: int
    crl: str  # PEM, issued by the self-signed CA certificate
    overrides: dict[str, str] = field(default_factory=dict)  # override cert fingerprint -> PEM CRL
    host_id: str = ""  # the node that signed them (the key's holder)

    def to_dict(self) -> dict[str, Any]:
        return {
            "crl_number": self.crl_number,
            "crl": self.crl,
            "overrides": dict(sorted(self.overrides.items())),
            "host_id": self.host_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyCRLs:
        overrides = {str(k): str(v) for k, v in (data.get("overrides") or {}).items()}
        return cls(int(data["crl_number"]), str(data["crl"]), overrides, str(data.get("host_id", "")))


@dataclass(frozen=True)
class CertAuthorityCRL:
    cluster_name: str
    ca_type: str
    revoked: dict[str, tuple[Revocation, ...]] = field(default_factory=dict)  # key hash -> revocations
    crls: dict[str, KeyCRLs] = field(default_factory=dict)  # key hash -> its CRLs
    revision: int = field(default=0, compare=False)

    def serials(self, key_hash: str) -> set[int]:
        return {int(r.serial, 16) for r in self.revoked.get(key_hash, ())}

    def revocation(self, key_hash: str, serial: str) -> Revocation | None:
        return next((r for r in self.revoked.get(key_hash, ()) if r.serial == serial), None)

    def with_revocation(self, key_hash: str, revocation: Revocation) -> CertAuthorityCRL:
        revoked = dict(self.revoked)
        revoked[key_hash] = (*revoked.get(key_hash, ()), revocation)
        return replace(self, revoked=revoked)

    def with_crls(self, key_hash: str, crls: KeyCRLs) -> CertAuthorityCRL:
        return replace(self, crls={**self.crls, key_hash: crls})

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "sub_kind": self.ca_type,
            "version": VERSION,
            "metadata": {"name": self.cluster_name, "revision": self.revision},
            "spec": {
                "revoked": {k: [r.to_dict() for r in v] for k, v in sorted(self.revoked.items())},
            },
            "status": {"crls": {k: v.to_dict() for k, v in sorted(self.crls.items())}},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], revision: int = 0) -> CertAuthorityCRL:
        revoked = (data.get("spec") or {}).get("revoked") or {}
        crls = (data.get("status") or {}).get("crls") or {}
        return cls(
            cluster_name=str(data["metadata"]["name"]),
            ca_type=str(data["sub_kind"]),
            revoked={str(k): tuple(Revocation.from_dict(r) for r in v) for k, v in revoked.items()},
            crls={str(k): KeyCRLs.from_dict(v) for k, v in crls.items()},
            revision=revision,
        )

    def to_json(self) -> bytes:
        """Stored form in etcd (the revision is etcd's own, so it is not stored)."""
        data = self.to_dict()
        del data["metadata"]["revision"]
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, revision: int = 0) -> CertAuthorityCRL:
        """The stored resource; ValueError (or KeyError, TypeError) when it is not one."""
        data = json.loads(raw)
        if data.get("kind") != KIND:
            raise ValueError(f"kind: expected {KIND}, got {quoted(data.get('kind'))}")
        return cls.from_dict(data, revision)


def crl_problem(pem: str, issuer: x509.Certificate, serials: set[int], now: dt.datetime) -> str | None:
    """Why the CRL `pem` of `issuer` must be signed again (None: it is good as it is): unreadable, not
    verified by the issuer's key, another issuer, not the `serials` revoked, less than half its life left."""
    crl = _signed_crl(pem, issuer)
    if isinstance(crl, str):
        return crl
    if {r.serial_number for r in crl} != serials:
        return "revoked serials differ from spec"
    next_update = crl.next_update_utc
    if next_update is None:
        return "no nextUpdate"
    if now >= crl.last_update_utc + (next_update - crl.last_update_utc) / 2:
        return "less than half its life left"
    return None


@functools.lru_cache(maxsize=1024)
def _signed_crl(pem: str, issuer: x509.Certificate) -> x509.CertificateRevocationList | str:
    """The CRL `pem` once it parses and `issuer` signed it, else why not. Parsed and verified once per
    CRL and issuer: every node checks its keys' CRLs on every change of its CA type's CRLs."""
    try:
        crl = x509.load_pem_x509_crl(pem.encode())
    except ValueError:
        return "unreadable"
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        return "not signed by its issuer"
    return crl


def crl_builder(
    issuer: x509.Certificate, number: int, serials: dict[int, dt.datetime], now: dt.datetime
) -> x509.CertificateRevocationListBuilder:
    """The CRL of `issuer`, number `number`, revoking `serials` (serial -> revocation time): valid from
    now - BACKDATE to now + LIFETIME, never past the issuer's not_after; AKI = the issuer's SKI."""
    next_update = min(now + LIFETIME, issuer.not_valid_after_utc)
    return _builder(issuer.subject, authority_key_id(issuer), next_update, number, serials, now)


def ahead_builder(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    number: int,
    serials: dict[int, dt.datetime],
    now: dt.datetime,
) -> x509.CertificateRevocationListBuilder:
    """The CRL that a certificate not issued yet, of `public_key` and named `subject`, would sign (as
    `crl_builder`), its AKI the key's SHA-1 (RFC 5280's first method, which most CAs use for the SKI):
    signed ahead, it serves that certificate once `ahead_problem` finds nothing."""
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)  # type: ignore[arg-type]
    return _builder(subject, aki, now + LIFETIME, number, serials, now)


def ahead_problem(pem: str, issuer: x509.Certificate, serials: set[int], now: dt.datetime) -> str | None:
    """Why the CRL `pem`, signed ahead (`ahead_builder`), is not one `issuer` could sign now: any
    `crl_problem` (another name, string types included, or key), another key identifier, or valid past
    the issuer."""
    problem = crl_problem(pem, issuer, serials, now)
    if problem is not None:
        return problem
    crl = _signed_crl(pem, issuer)
    assert not isinstance(crl, str)
    if crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value != authority_key_id(issuer):
        return "another authority key identifier"
    next_update = crl.next_update_utc
    if next_update is None or next_update > issuer.not_valid_after_utc:
        return "valid past its issuer"
    return None


def _builder(
    issuer_name: x509.Name,
    aki: x509.AuthorityKeyIdentifier,
    next_update: dt.datetime,
    number: int,
    serials: dict[int, dt.datetime],
    now: dt.datetime,
) -> x509.CertificateRevocationListBuilder:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_name)
        .last_update(now - BACKDATE)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(aki, critical=False)
    )
    for serial, when in sorted(serials.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI of what `issuer` signs: its SKI (computed from its key when it carries none)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def key_identifier(cert: x509.Certificate) -> bytes | None:
    """A certificate's SKI, or None."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None
