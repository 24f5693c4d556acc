"""The desktop target: a stand-in for a Windows domain that checks smart-card logon credentials.

A TLS server (no client certificate) reading one JSON line `{"user", "certificate", "chain"}` and
answering one JSON line `{"success", "reason", "desktop_name"}`. It accepts a windows credential as
a domain controller would: EKU clientAuth and smartcardLogon, a UPN SAN `user@<domain>` (the
cluster's `ca_types.desktop_domain`), within its validity, its issuing CA certificate in the NTAuth
store, and a chain from that CA to a trusted root. The trust files are re-read on every connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from authsim.cluster.mtls import TLSIdentity
from authsim.cluster.resources.x509 import display_name
from authsim.cluster.targets._tls import server_context
from authsim.cluster.targets.trust import read_trust

DESKTOP_NAME = "example-desktop"
UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
_REQUIRED_EKUS = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "smartcardLogon": ExtendedKeyUsageOID.SMARTCARD_LOGON,
}
_MAX_CHAIN = 8
_READ_TIMEOUT = 10.0
_MAX_REQUEST = 1 << 20

_E = TypeVar("_E", bound=x509.ExtensionType)

log = logging.getLogger("desktop")


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
    issuer = next((ca for ca in ntauth if _issued_by(leaf, ca)), None)
    if issuer is None:
        return f"issuing CA '{display_name(leaf.issuer)}' is not in the NTAuth store"
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


async def start_desktop(
    cluster_dir: Path, identity: TLSIdentity, host: str, port: int, domain: str
) -> asyncio.Server:
    """Listen on `host:port` (0 = any free port) with the target's server certificate, logging users of
    `domain` on."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
            reply = _answer(cluster_dir, domain, line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, asyncio.TimeoutError) as e:  # ValueError: line over the limit
            log.info("connection dropped: %s", e or type(e).__name__)
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, ssl=server_context(identity), limit=_MAX_REQUEST)


def _answer(cluster_dir: Path, domain: str, line: bytes) -> dict[str, Any]:
    """The reply to one request line; the verdict is logged."""
    user = ""
    try:
        request = json.loads(line)
        user, leaf_pem, chain_pems = request["user"], request["certificate"], request.get("chain", [])
        if not (isinstance(user, str) and isinstance(leaf_pem, str) and isinstance(chain_pems, list)):
            raise TypeError("user and certificate must be strings, chain a list")
        leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
        chain = [x509.load_pem_x509_certificate(str(p).encode()) for p in chain_pems]
    except (ValueError, KeyError, TypeError) as e:
        reason: str | None = f"bad request: {e}"
    else:
        trust = read_trust(cluster_dir, "desktop")
        now = dt.datetime.now(dt.timezone.utc)
        reason = verify_desktop_credential(leaf, chain, user, domain, trust.ntauth, trust.ca, now)
    log.info("logon user=%r success=%s%s", user, reason is None, f" reason={reason!r}" if reason else "")
    return {"success": reason is None, "reason": reason or "", "desktop_name": DESKTOP_NAME}


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
