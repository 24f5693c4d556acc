"""A fault-injecting TCP proxy for tests: it forwards bytes both ways between its clients and one upstream
(etcd; TLS passes through untouched, so the client still checks etcd's certificate, which names
127.0.0.1), and on command drops what the upstream sends back or resets every connection."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_CHUNK = 65536
_ACCEPT_POLL = 0.1  # seconds between looks at whether the proxy was closed


class FaultProxy:
    """Listens on a free loopback port (`endpoint`) and forwards each connection to `upstream`.

    `drop_replies()`: from then on the upstream's bytes are read and thrown away (requests still reach
    it: a write lands, its answer never comes). `reset()`: every connection open now is closed with a
    TCP reset, and forwarding is whole again for the connections that follow.
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_ACCEPT_POLL)
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._dropping = False
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name=f"proxy {self.endpoint}", daemon=True)
        self._acceptor.start()

    def drop_replies(self) -> None:
        self._dropping = True

    def reset(self) -> None:
        with self._lock:
            links, self._links = self._links, set()
            for link in links:
                link.cut = True  # before forwarding resumes: nothing more reaches the old connections
            self._dropping = False
        for link in links:
            link.stop(reset=True)

    def close(self) -> None:
        """Stop accepting and reset every connection."""
        self._closed.set()
        self._acceptor.join()
        self._listener.close()
        self.reset()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
            for source, target, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(link, source, target, replies), daemon=True).start()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket, replies: bool) -> None:
        """Copy `source` to `target` until either side ends; replies are thrown away while dropping."""
        while True:
            try:
                data = source.recv(_CHUNK)
            except OSError:
                break
            if not data:
                break
            if link.cut or (replies and self._dropping):
                continue
            try:
                target.sendall(data)
            except OSError:
                break
        with self._lock:
            self._links.discard(link)
        link.pump_ended()


class _Link:
    """One proxied connection: the client's socket, the upstream's, and the two pumps between them."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.cut = False  # reset: forward nothing more
        self._pumps = 2
        self._lock = threading.Lock()
        for sock in (client, upstream):
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def stop(self, reset: bool = False) -> None:
        """Wake both pumps (a read shutdown ends their recv); with `reset`, closing sends a TCP reset."""
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)

    def pump_ended(self) -> None:
        """One pump is done: end the other; the last one closes both sockets."""
        self.stop()
        with self._lock:
            self._pumps -= 1
            last = self._pumps == 0
        if last:
            self.client.close()
            self.upstream.close()
