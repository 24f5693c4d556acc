"""A node's signing worker: a process of its own that makes the token signatures of credentials.

It has its own GIL: on the node's token thread, each signature waited for Python's GIL on its way
back while the node's event loop handled gRPC calls (issue 17). Its node starts it
(`signing_process.SigningProcess`) with one end of a socket pair (the fd number its only argument)
and the node's environment, which names the token (SOFTHSM2_CONF, or the HSM process's
P11_KIT_SERVER_ADDRESS). The PIN comes over the socket, never in argv or the environment. In frames
(`signing_protocol`): first, from the node, JSON `{"module", "label", "host_id", "pin"}`, answered
`ok` or `error: <why>`; then batches to sign.

It signs only with its host's keys (CKA_LABEL = host id), SHA256-RSA-PKCS#1 v1.5; private keys never
leave the token. It exits when the node closes the socket, and with the node (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import struct
import sys
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from authsim.hsm.signing_protocol import (
    FAILED,
    NO_SUCH_KEY,
    SIGNED,
    decode_requests,
    encode_results,
    frame,
)

_PR_SET_PDEATHSIG = 1


def read_frame(sock: socket.socket) -> bytes | None:
    """One frame's payload; None at the end of the stream."""
    head = _read_exactly(sock, 4)
    return None if head is None else _read_exactly(sock, struct.unpack(">I", head)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


class _Signer:
    """Signatures by this host's keys in one logged-in session; each key found once, then kept."""

    def __init__(self, session: Any, host_id: str) -> None:
        self.session = session
        self.host_id = host_id
        self.found: dict[bytes, Any] = {}

    def sign(self, key_id: bytes, data: bytes) -> tuple[int, bytes]:
        try:
            key = self.found.get(key_id) or self._find(key_id)
            if key is None:
                return NO_SUCH_KEY, f"key {key_id.hex()} is not in the token".encode()
            return SIGNED, bytes(key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
        except pkcs11.PKCS11Error as e:
            return FAILED, f"{type(e).__name__} {e}".strip().encode()

    def _find(self, key_id: bytes) -> Any:
        template = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.KEY_TYPE: KeyType.RSA,
            Attribute.LABEL: self.host_id,
            Attribute.ID: key_id,
        }
        found = list(self.session.get_objects(template))
        if len(found) != 1:
            return None
        self.found[key_id] = found[0]
        return found[0]


def _open(setup: dict[str, str]) -> Any:
    token = pkcs11.lib(setup["module"]).get_token(token_label=setup["label"])
    return token.open(user_pin=setup["pin"])


def main() -> int:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    sock = socket.socket(fileno=int(sys.argv[1]))
    first = read_frame(sock)
    if first is None:
        return 0
    setup = json.loads(first)
    try:
        signer = _Signer(_open(setup), setup["host_id"])
    except (pkcs11.PKCS11Error, OSError, RuntimeError) as e:
        sock.sendall(frame(f"error: {type(e).__name__} {e}".strip().encode()))
        return 1
    sock.sendall(frame(b"ok"))
    while (payload := read_frame(sock)) is not None:
        sock.sendall(frame(encode_results([signer.sign(k, d) for k, d in decode_requests(payload)])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
