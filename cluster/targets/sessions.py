"""How a target process takes a session request from a node: one JSON line over TLS, one JSON reply.

The request is `{"user", "certificate", "chain", "key"}` (PEM strings, `chain` a list): the target
plays the user's machine, presenting the credential to its real server (the KDC, PostgreSQL) as that
machine would, so it needs the private key. Only nodes holding the cluster's server CA reach it, over
TLS on loopback; the key is a fresh one of this session, written only to a 0600 file in a temp dir
for the client tool and deleted after.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.errors import AuthSimError
from authsim.cluster.mtls import TLSIdentity
from authsim.cluster.targets._tls import server_context

_READ_TIMEOUT = 10.0
_MAX_REQUEST = 1 << 20

log = logging.getLogger("target")


@dataclass(frozen=True)
class SessionRequest:
    """A user's credential to open a session with: the leaf, the chain above it, the key (PEM)."""

    user: str
    leaf: x509.Certificate
    chain: list[x509.Certificate]
    key: bytes

    @property
    def leaf_pem(self) -> bytes:
        return self.leaf.public_bytes(Encoding.PEM)

    @classmethod
    def parse(cls, line: bytes) -> SessionRequest:
        """The request in a line; ValueError, KeyError or TypeError when it is not one."""
        request = json.loads(line)
        user, leaf, chain, key = request["user"], request["certificate"], request["chain"], request["key"]
        if not (isinstance(user, str) and isinstance(leaf, str) and isinstance(key, str)):
            raise TypeError("user, certificate and key must be strings")
        if not isinstance(chain, list) or not all(isinstance(p, str) for p in chain):
            raise TypeError("chain must be a list of strings")
        certs = [c for blob in chain for c in x509.load_pem_x509_certificates(blob.encode())]
        return cls(user, x509.load_pem_x509_certificate(leaf.encode()), certs, key.encode())


Answer = Callable[[SessionRequest], tuple[bool, str]]  # (accepted, the refusal) for one request


async def serve_sessions(
    identity: TLSIdentity, host: str, port: int, answer: Answer, name_field: str, name: str
) -> asyncio.Server:
    """Listen on `host:port` with the target's server certificate; each request is answered by
    `answer` (run in a thread: it waits for the real server) as `{success, reason, name_field: name}`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
            reply = await asyncio.to_thread(_reply, answer, line)
            writer.write(json.dumps({**reply, name_field: name}).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, asyncio.TimeoutError) as e:  # ValueError: line over the limit
            log.info("connection dropped: %s", e or type(e).__name__)
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, ssl=server_context(identity), limit=_MAX_REQUEST)


def _reply(answer: Answer, line: bytes) -> dict[str, Any]:
    """The verdict on one request line, logged."""
    user = ""
    try:
        request = SessionRequest.parse(line)
    except (ValueError, KeyError, TypeError) as e:
        ok, reason = False, f"bad request: {e}"
    else:
        user = request.user
        try:
            ok, reason = answer(request)
        except AuthSimError as e:  # the server could not be asked (a name it cannot take, a tool failed)
            ok, reason = False, str(e)
    log.info("session user=%r success=%s%s", user, ok, f" reason={reason!r}" if reason else "")
    return {"success": ok, "reason": reason}
