"""Free TCP ports on the loopback interface, for etcd, nodes and targets.

A free port is only free when asked: until the process it is for listens on it, another process may
take it. A start on picked ports therefore tries again on new ones when its process found a port taken
(`PortInUseError`), `PORT_ATTEMPTS` times in all."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import TypeVar

from authsim.cluster.errors import PortInUseError

PORT_ATTEMPTS = 4  # starts on freshly picked ports before a taken port is the caller's error

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel reports free right now (bind to port 0); it may be taken again before use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `host:port` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def on_free_ports(start: Callable[[], T]) -> T:
    """`start()`, which picks its ports afresh on every call, again while another process took one of
    them first (it raises PortInUseError); the last attempt's error is the caller's."""
    for _ in range(PORT_ATTEMPTS - 1):
        with contextlib.suppress(PortInUseError):
            return start()
    return start()
