"""A hostile local process for the connection-flood test: idle TCP connections that never send a byte.

Usage (as `nobody`, with the system python, standard library only): python _flood_worker.py PORT COUNT WATCH
Opens up to COUNT TCP connections to 127.0.0.1:PORT as fast as it can and holds them, then prints one
JSON line {"opened", "failed", "open_seconds"}; then watches them for WATCH seconds and prints one JSON
line {"closed", "open", "latest_close"}: how many the server closed (a read returns EOF or a reset),
how many are still open, and the longest time from opening a connection to seeing it closed.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time


def main(port: int, count: int, watch: float) -> None:
    opened: dict[socket.socket, float] = {}
    failed = 0
    start = time.monotonic()
    for _ in range(count):
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            failed += 1
            continue
        conn.setblocking(False)
        opened[conn] = time.monotonic()
    print(json.dumps({"opened": len(opened), "failed": failed, "open_seconds": time.monotonic() - start}))
    sys.stdout.flush()
    selector = selectors.DefaultSelector()
    socket_of = {conn.fileno(): conn for conn in opened}
    for conn in opened:
        selector.register(conn, selectors.EVENT_READ)
    closed: dict[socket.socket, float] = {}
    deadline = time.monotonic() + watch
    while len(closed) < len(opened) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            conn = socket_of[key.fd]
            try:
                data = conn.recv(1)
            except ConnectionError:
                data = b""
            if data == b"":
                closed[conn] = time.monotonic() - opened[conn]
                selector.unregister(conn)
    latest = max(closed.values(), default=0.0)
    print(json.dumps({"closed": len(closed), "open": len(opened) - len(closed), "latest_close": latest}))
    for conn in opened:
        conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
