"""The desktop target: a Windows domain workstation doing a smart-card logon at the domain's real KDC.

A TLS server (`sessions`) answering one session request with `{"success", "reason", "desktop_name"}`.
A logon passes the one rule a Windows domain controller adds to PKINIT, that the issuing CA is in the
NTAuth store (read on every request), then MIT Kerberos decides (`kerberos.logon`: EKU smartcardLogon,
UPN SAN `user@<domain>`, the chain to the KDC's `pkinit_anchors`, no certificate of it in the CRLs of
`pkinit_revoke`), and its refusal is the reason. A logon first waits until the KDC runs with the
current anchors and CRLs (`kdc_trust.wait_current`).

`verify_desktop_credential` is the rules as a pure function, for unit tests of credentials; what a
session trusts is the KDC's verdict.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from authsim.cluster.layout import ClusterLayout
from authsim.cluster.mtls import TLSIdentity
from authsim.cluster.resources.x509 import display_name
from authsim.cluster.targets import kerberos
from authsim.cluster.targets.kdc_trust import wait_current
from authsim.cluster.targets.sessions import Answer, SessionRequest, serve_sessions
from authsim.cluster.targets.trust import read_trust

DESKTOP_NAME = "example-desktop"
UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
_REQUIRED_EKUS = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "smartcardLogon": ExtendedKeyUsageOID.SMARTCARD_LOGON,
}
_MAX_CHAIN = 8

_E = TypeVar("_E", bound=x509.ExtensionType)


def verify_desktop_credential(
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    user: str,
    domain: str,
    ntauth: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
) -> str | None:
    """None when the credential logs `user` on, else the first broken rule as one line.

    The UPN must be `user@<domain>`, the domain in any case (Active Directory compares UPN suffixes
    without case; the Kerberos realm is the domain in capitals).
    The chain is built from the NTAuth issuer through `chain`, `roots` and `ntauth` (a CA may sit in
    either) up to a self-signed certificate in `roots` or `ntauth`; every certificate on it must be a
    CA within its validity.
    """
    if now < leaf.not_valid_before_utc:
        return f"certificate is not valid before {_time(leaf.not_valid_before_utc)}"
    if now > leaf.not_valid_after_utc:
        return f"certificate expired at {_time(leaf.not_valid_after_utc)}"
    ekus = _extension(leaf, x509.ExtendedKeyUsage)
    missing = [name for name, oid in _REQUIRED_EKUS.items() if ekus is None or oid not in ekus]
    if missing:
        return f"missing EKU {' and '.join(missing)}"
    upns = _upns(leaf)
    if not upns:
        return f"no UPN SAN (otherName {UPN_OID.dotted_string})"
    if not any(_names(upn, user, domain) for upn in upns):
        return f"UPN SAN {upns[0]!r} does not name user {user!r} in domain {domain!r}"
    problem = ntauth_problem(leaf, ntauth)
    if problem is not None:
        return problem
    issuer = next(ca for ca in ntauth if _issued_by(leaf, ca))
    anchors = [c for c in (*roots, *ntauth) if _issued_by(c, c)]
    pool = [*chain, *roots, *ntauth]
    current, path = issuer, [issuer]
    while len(path) <= _MAX_CHAIN:
        if not (_is_ca(current) and current.not_valid_before_utc <= now <= current.not_valid_after_utc):
            return f"chain certificate '{display_name(current.subject)}' is not a CA valid now"
        if _issued_by(current, current):
            return None if current in anchors else "chain does not reach a trusted root"
        parent = next((c for c in pool if c not in path and _issued_by(current, c)), None)
        if parent is None:
            return "chain does not reach a trusted root"
        current = parent
        path.append(parent)
    return "chain does not reach a trusted root"


def ntauth_problem(leaf: x509.Certificate, ntauth: Sequence[x509.Certificate]) -> str | None:
    """None when the CA that issued `leaf` is in the NTAuth store, else why not: the one rule a Windows
    domain controller adds to PKINIT (the KDC itself has no NTAuth store)."""
    if any(_issued_by(leaf, ca) for ca in ntauth):
        return None
    return f"issuing CA '{display_name(leaf.issuer)}' is not in the NTAuth store"


def desktop_answer(cluster_dir: Path, domain: str, kdc_address: str) -> Answer:
    """The desktop's verdict on a session: the NTAuth check, then a PKINIT logon at the KDC as a domain
    workstation whose certificate store is the NTAuth store and the desktop's CA bundle. The user's
    principal is made on demand."""
    layout = ClusterLayout(cluster_dir).kdc

    def answer(request: SessionRequest) -> tuple[bool, str]:
        trust = read_trust(cluster_dir, "desktop")
        problem = ntauth_problem(request.leaf, trust.ntauth)
        if problem is not None:
            return False, problem
        problem = wait_current(cluster_dir)
        if problem is not None:
            return False, problem
        kerberos.add_user(layout, domain, request.user)
        store = [*trust.ntauth, *trust.ca, *request.chain]
        return kerberos.logon(layout, kdc_address, domain, request.leaf_pem, request.key, request.user, store)

    return answer


async def start_desktop(
    cluster_dir: Path, identity: TLSIdentity, host: str, port: int, domain: str, kdc_address: str
) -> asyncio.Server:
    """Listen on `host:port` (0 = any free port) with the target's server certificate, logging users of
    `domain` on at the KDC at `kdc_address`."""
    answer = desktop_answer(cluster_dir, domain, kdc_address)
    return await serve_sessions(identity, host, port, answer, "desktop_name", DESKTOP_NAME)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """True when `ca`'s subject is `cert`'s issuer and `ca`'s key verifies `cert`'s signature."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    constraints = _extension(cert, x509.BasicConstraints)
    return constraints is not None and constraints.ca


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _names(upn: str, user: str, domain: str) -> bool:
    """True when `upn` is `user@<domain>`; the user may hold an @ itself, the domain is after the last."""
    name, at, suffix = upn.rpartition("@")
    return bool(at) and name == user and suffix.lower() == domain.lower()


def _upns(cert: x509.Certificate) -> list[str]:
    """The UPN values of the certificate's SAN otherNames (DER UTF8Strings)."""
    san = _extension(cert, x509.SubjectAlternativeName)
    if san is None:
        return []
    names = [n.value for n in san.get_values_for_type(x509.OtherName) if n.type_id == UPN_OID]
    return [upn for der in names if (upn := _utf8_string(der)) is not None]


def _utf8_string(der: bytes) -> str | None:
    """The text of a DER UTF8String (tag 0x0C), or None when `der` is not one."""
    if len(der) < 2 or der[0] != 0x0C:
        return None
    length, start = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if start + length != len(der):
        return None
    try:
        return der[start:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
