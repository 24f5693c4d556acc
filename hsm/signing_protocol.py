"""The wire format between a node and its signing worker (`signing_worker`, `signing_process`).

Frames are a 4-byte big-endian length and a payload. A batch is items of key id (1-byte length,
bytes) and data to sign (4-byte length, bytes); its answer is one item per request: a status byte
(SIGNED, NO_SUCH_KEY, FAILED) and the signature or the error (4-byte length, bytes).
"""

from __future__ import annotations

import struct

SIGNED, NO_SUCH_KEY, FAILED = 0, 1, 2


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def encode_requests(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(bytes([len(key)]) + key + struct.pack(">I", len(data)) + data for key, data in items)


def decode_requests(payload: bytes) -> list[tuple[bytes, bytes]]:
    items, at = [], 0
    while at < len(payload):
        size = payload[at]
        key_id = payload[at + 1 : at + 1 + size]
        at += 1 + size
        (length,) = struct.unpack_from(">I", payload, at)
        items.append((key_id, payload[at + 4 : at + 4 + length]))
        at += 4 + length
    return items


def encode_results(results: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes([status]) + struct.pack(">I", len(body)) + body for status, body in results)


def decode_results(payload: bytes) -> list[tuple[int, bytes]]:
    results, at = [], 0
    while at < len(payload):
        status = payload[at]
        (length,) = struct.unpack_from(">I", payload, at + 1)
        results.append((status, payload[at + 5 : at + 5 + length]))
        at += 5 + length
    return results
