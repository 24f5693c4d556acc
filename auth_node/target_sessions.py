"""How a node exercises a target: open a session with a credential and report the target's verdict.

The target presents the credential to its real server (the desktop: a PKINIT logon at the KDC; the
database: a certificate login to PostgreSQL) and answers with that server's verdict.

Both calls verify the target's server certificate against the cluster's server CA
(`pki/server-ca.pem`) under the target's name ("desktop" or "db"), finish within `timeout` seconds,
and return a SessionResult instead of raising: a refused TLS handshake, an unreachable target or a
timeout is a failed session with a one-line reason (the session-start event records it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DESKTOP_TLS_NAME = "desktop"
DB_TLS_NAME = "db"
_MAX_REPLY = 1 << 16


@dataclass(frozen=True)
class SessionResult:
    """The target's verdict on one session: accepted or not, why not, and the resource's name."""

    success: bool
    reason: str
    resource_name: str


async def open_desktop_session(
    address: str,
    server_ca_pem: str | bytes,
    user: str,
    leaf_pem: str | bytes,
    leaf_key_pem: str | bytes,
    chain_pems: Sequence[str | bytes],
    timeout: float,
) -> SessionResult:
    """Ask the desktop target at `address` (host:port) to log `user` on at its KDC with this windows
    credential (the target plays the user's workstation, so it gets the key)."""
    request = _request(user, leaf_pem, leaf_key_pem, chain_pems)
    context = _client_context(server_ca_pem)
    return await _session("desktop", address, context, DESKTOP_TLS_NAME, request, "desktop_name", timeout)


async def open_db_session(
    address: str,
    server_ca_pem: str | bytes,
    user: str,
    leaf_pem: str | bytes,
    leaf_key_pem: str | bytes,
    chain_pems: Sequence[str | bytes],
    timeout: float,
) -> SessionResult:
    """Ask the database target at `address` to log in to its PostgreSQL as `user` with leaf + chain."""
    request = _request(user, leaf_pem, leaf_key_pem, chain_pems)
    context = _client_context(server_ca_pem)
    return await _session("database", address, context, DB_TLS_NAME, request, "database", timeout)


def _request(
    user: str, leaf_pem: str | bytes, key_pem: str | bytes, chain_pems: Sequence[str | bytes]
) -> dict[str, Any]:
    return {
        "user": user,
        "certificate": _text(leaf_pem),
        "chain": [_text(p) for p in chain_pems],
        "key": _text(key_pem),
    }


async def _session(
    kind: str,
    address: str,
    context: ssl.SSLContext,
    server_name: str,
    request: dict[str, Any],
    name_field: str,
    timeout: float,
) -> SessionResult:
    host, port = address.rsplit(":", 1)
    try:
        reply = await asyncio.wait_for(_exchange(host, int(port), context, server_name, request), timeout)
    except asyncio.TimeoutError:
        return SessionResult(False, f"{kind} target at {address} did not answer within {timeout:g}s", "")
    except ssl.SSLError as e:
        return SessionResult(False, f"TLS handshake refused: {_ssl_reason(e)}", "")
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        return SessionResult(False, f"cannot reach {kind} target at {address}: {why}", "")
    if not reply:
        return SessionResult(False, f"{kind} target at {address} closed the connection without a reply", "")
    try:
        answer = json.loads(reply)
        return SessionResult(bool(answer["success"]), str(answer["reason"]), str(answer[name_field]))
    except (ValueError, KeyError, TypeError):
        return SessionResult(False, f"{kind} target at {address} sent a malformed reply", "")


async def _exchange(
    host: str, port: int, context: ssl.SSLContext, server_name: str, request: dict[str, Any]
) -> bytes:
    """One request line out, one reply line back (b"" when the target closed first)."""
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=server_name, limit=_MAX_REPLY
    )
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # includes ssl.SSLError
            await writer.wait_closed()


def _client_context(server_ca_pem: str | bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server's certificate and name
    context.load_verify_locations(cadata=_text(server_ca_pem))
    return context


def _ssl_reason(e: ssl.SSLError) -> str:
    """'tlsv1 alert unknown ca', 'certificate verify failed: ...': the library's words, no codes."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    return (e.reason or str(e)).lower().replace("_", " ")


def _text(pem: str | bytes) -> str:
    return pem.decode() if isinstance(pem, bytes) else pem
