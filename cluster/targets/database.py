"""The database target: a TLS server on loopback that requires a client certificate.

Each connection gets a fresh SSLContext with `db/ca-bundle.pem` as its only trust, so `authsim trust`
takes effect on the next connection. A certificate that does not chain to the bundle fails the TLS
handshake itself. After the handshake the client sends `{"user": U}`; the session is accepted when
the certificate's CN is U: `{"success": true, "reason": "", "database": "example-db"}`.
Needs Python 3.11+ (`StreamWriter.start_tls`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from cluster.pki import TLSIdentity
from cluster.targets._tls import server_context
from cluster.targets.trust import trust_file

DATABASE_NAME = "example-db"
_TIMEOUT = 10.0

log = logging.getLogger("db")


async def start_database(cluster_dir: Path, identity: TLSIdentity, host: str, port: int) -> asyncio.Server:
    """Listen on `host:port` (0 = any free port); TLS starts per connection with the current bundle."""
    bundle = trust_file(cluster_dir, "db", "ca")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(writer.start_tls(client_auth_context(identity, bundle)), _TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:  # ssl.SSLError is an OSError
            log.info("TLS handshake refused: %s", getattr(e, "reason", None) or e or type(e).__name__)
            writer.close()
            return
        try:
            line = await asyncio.wait_for(reader.readline(), _TIMEOUT)
            ssl_object = writer.get_extra_info("ssl_object")
            assert isinstance(ssl_object, ssl.SSLObject)
            reply = _answer(line, ssl_object.getpeercert(binary_form=True))
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.TimeoutError) as e:
            log.info("connection dropped: %s", e or type(e).__name__)
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def client_auth_context(identity: TLSIdentity, bundle: Path) -> ssl.SSLContext:
    """A server context requiring a client certificate that chains to the PEM `bundle` (now)."""
    context = server_context(identity)
    context.verify_mode = ssl.CERT_REQUIRED
    pem = bundle.read_text() if bundle.exists() else ""
    if "-----BEGIN CERTIFICATE-----" in pem:  # an empty bundle trusts nothing: every handshake fails
        context.load_verify_locations(cadata=pem)
    return context


def _answer(line: bytes, peer_der: bytes | None) -> dict[str, Any]:
    """The reply to the request line of a client whose certificate (DER) passed the handshake."""
    user, cn = "", ""
    try:
        request = json.loads(line)
        user = request["user"]
        if not isinstance(user, str):
            raise TypeError("user must be a string")
    except (ValueError, KeyError, TypeError) as e:
        reason = f"bad request: {e}"
    else:
        names = x509.load_der_x509_certificate(peer_der or b"").subject
        cn = next((str(a.value) for a in names.get_attributes_for_oid(NameOID.COMMON_NAME)), "")
        reason = "" if cn == user else f"certificate CN {cn!r} does not match user {user!r}"
    log.info(
        "session user=%r cn=%r success=%s%s", user, cn, not reason, f" reason={reason!r}" if reason else ""
    )
    return {"success": not reason, "reason": reason, "database": DATABASE_NAME}
