"""Where a node listens and the limits on callers that have not authenticated (handshake, quota, idle)."""

from __future__ import annotations

import logging
import os
import resource
import socket
import stat
from pathlib import Path

from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import NodeLayout

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_MS = 5_000  # TLS handshake plus the client's first HTTP/2 SETTINGS, per connection
TCP_CONNECTION_QUOTA = 1_000  # open TCP connections at a time, authenticated or not; more are closed at once
MAX_CONNECTION_IDLE_MS = 120_000  # a connection without a call for this long gets GOAWAY
KEEPALIVE_TIME_MS = 60_000  # ping a connection quiet for this long (a --follow stream)...
KEEPALIVE_TIMEOUT_MS = 20_000  # ...and close it when the ping is not answered within this
MIN_PING_INTERVAL_MS = 10_000  # a client pinging more often than this is told to go away
MAX_CONCURRENT_STREAMS = 1_000  # calls at once on one connection (only an authenticated caller opens any)
MAX_SOCKET_PATH = 107  # bytes of a Unix socket path (sun_path is 108 with its NUL)


def server_options(fd_limit: int) -> list[tuple[str, int]]:
    """gRPC core options for a node's server; the connection quota stays well below `fd_limit`."""
    return [
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_allowed_incoming_connections", min(TCP_CONNECTION_QUOTA, fd_limit // 4)),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.so_reuseport", 0),  # a port another process listens on is an error, never silently shared
    ]


def bind_failure(address: str) -> str:
    """Why `host:port` cannot be bound now, as the OS says it (gRPC's own error does not say why),
    e.g. `[Errno 98] Address already in use`."""
    host, port = address.rsplit(":", 1)
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        family, kind, _, _, where = found[0]
        with socket.socket(family, kind) as probe:
            probe.bind(where)
    except (OSError, ValueError) as e:
        return str(e)
    return "gRPC could not bind it"


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def local_socket(layout: NodeLayout) -> Path | None:
    """The node's Unix socket path, its folder made 0700 and checked; None (TCP only) when the path is
    longer than a socket path can be. Refuses a folder that is a symlink, not ours or not 0700."""
    path = layout.local_socket
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        log.warning("no local socket: %s is longer than %d bytes; serving on TCP only", path, MAX_SOCKET_PATH)
        return None
    folder = path.parent
    try:
        os.mkdir(folder, 0o700)
        os.chmod(folder, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != 0o700:
        raise ClusterError(
            f"local socket folder {folder} must be a real folder owned by uid {os.geteuid()} with mode 0700 "
            f"(it is {stat.filemode(info.st_mode)}, uid {info.st_uid}): remove it and start the node again"
        )
    path.unlink(missing_ok=True)
    return path
