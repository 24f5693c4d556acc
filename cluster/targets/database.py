"""The database target: a TLS server on loopback that requires a client certificate.

Each connection gets a fresh SSLContext with `db/ca-bundle.pem` as its only trust, so `authsim trust`
takes effect on the next connection. A certificate that does not chain to the bundle fails the TLS
handshake itself (the client gets OpenSSL's alert). After the handshake the client sends
`{"user": U}`; the session is accepted when the certificate's CN is U:
`{"success": true, "reason": "", "database": "example-db"}`.

TLS runs over memory BIOs on a plain asyncio stream: asyncio's `start_tls` would lose bytes the
stream read before it started, and drops the handshake's alert when verification fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from authsim.cluster.mtls import TLSIdentity
from authsim.cluster.targets._tls import server_context
from authsim.cluster.targets.trust import trust_file

DATABASE_NAME = "example-db"
_TIMEOUT = 10.0
_CHUNK = 1 << 14
_MAX_REQUEST = 1 << 16
_T = TypeVar("_T")

log = logging.getLogger("db")


async def start_database(cluster_dir: Path, identity: TLSIdentity, host: str, port: int) -> asyncio.Server:
    """Listen on `host:port` (0 = any free port); TLS starts per connection with the current bundle."""
    bundle = trust_file(cluster_dir, "db", "ca")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = _ServerTLS(reader, writer, client_auth_context(identity, bundle))
        try:
            await asyncio.wait_for(tls.handshake(), _TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:  # ssl.SSLError and TimeoutError are OSErrors
            log.info("TLS handshake refused: %s", _reason(e))
            await tls.close()
            return
        try:
            line = await asyncio.wait_for(tls.readline(), _TIMEOUT)
            reply = _answer(line, tls.peer_certificate())
            await tls.write(json.dumps(reply).encode() + b"\n")
        except (OSError, asyncio.TimeoutError) as e:
            log.info("connection dropped: %s", _reason(e))
        finally:
            await tls.close()

    return await asyncio.start_server(handle, host, port)


def client_auth_context(identity: TLSIdentity, bundle: Path) -> ssl.SSLContext:
    """A server context requiring a client certificate that chains to the PEM `bundle` (now)."""
    context = server_context(identity)
    context.verify_mode = ssl.CERT_REQUIRED
    pem = bundle.read_text() if bundle.exists() else ""
    if "-----BEGIN CERTIFICATE-----" in pem:  # an empty bundle trusts nothing: every handshake fails
        context.load_verify_locations(cadata=pem)
    return context


class _ServerTLS:
    """The server side of TLS on an accepted stream, through memory BIOs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext):
        self._reader, self._writer = reader, writer
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    async def handshake(self) -> None:
        await self._run(self._tls.do_handshake)

    def peer_certificate(self) -> bytes:
        der = self._tls.getpeercert(binary_form=True)
        assert der is not None  # CERT_REQUIRED
        return der

    async def readline(self) -> bytes:
        data = b""
        while b"\n" not in data and len(data) < _MAX_REQUEST:
            chunk = await self._run(lambda: self._tls.read(_CHUNK))
            if not chunk:
                break
            data += chunk
        return data.partition(b"\n")[0]

    async def write(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def close(self) -> None:
        """close_notify when the session is up, then a lingering close: reading what the client still
        sends until it closes, so the kernel does not reset the connection before the client has read
        our last record (the reply or the handshake alert)."""
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            await self._flush()
            self._writer.write_eof()
            await asyncio.wait_for(self._discard_until_eof(), 1.0)
        self._writer.close()

    async def _discard_until_eof(self) -> None:
        while await self._reader.read(_CHUNK):
            pass

    async def _run(self, step: Callable[[], _T]) -> _T:
        """`step` once it has the bytes it needs from the client; every record it makes is sent,
        including the alert of a failed handshake."""
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self._reader.read(_CHUNK)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            except ssl.SSLError:
                await self._flush()
                raise
            await self._flush()
            return result

    async def _flush(self) -> None:
        if self._outgoing.pending:
            self._writer.write(self._outgoing.read())
            await self._writer.drain()


def _answer(line: bytes, peer_der: bytes) -> dict[str, Any]:
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
        names = x509.load_der_x509_certificate(peer_der).subject
        cn = next((str(a.value) for a in names.get_attributes_for_oid(NameOID.COMMON_NAME)), "")
        reason = "" if cn == user else f"certificate CN {cn!r} does not match user {user!r}"
    log.info(
        "session user=%r cn=%r success=%s%s", user, cn, not reason, f" reason={reason!r}" if reason else ""
    )
    return {"success": not reason, "reason": reason, "database": DATABASE_NAME}


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLEOFError):
        return "the client closed the connection"
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e)
    return str(e) or type(e).__name__
