"""What a node writes to its log: one line per API call, and the log file itself, rotated by size.

A call's line (logger `rpc`): `Sign by admin from ipv4:127.0.0.1:50312: OK in 1.4 ms` (method, the caller's
certificate CN, its address, the status code, wall time), written by the service's own error handling
(auth_node/service.py), not by a gRPC interceptor. Health and reflection calls are not logged.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import time
from pathlib import Path
from typing import Any, TypeAlias

import grpc

log = logging.getLogger("rpc")

MAX_LOG_BYTES = 10 * 1024 * 1024  # node.log is rotated at this size...
LOG_BACKUPS = 3  # ...keeping node.log.1 … node.log.3

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
LINE = "%s by %s from %s: %s in %.1f ms"  # method, caller CN, its address, status, milliseconds


class NodeLogFile(logging.handlers.RotatingFileHandler):
    """The node's log file, rotated by size. The process's stdout and stderr follow the current file, so
    a traceback or a line printed by a library lands beside the log lines, never in a rotated file."""

    def __init__(self, path: Path, max_bytes: int = MAX_LOG_BYTES, backups: int = LOG_BACKUPS) -> None:
        old = os.umask(0o077)  # a new log file is the node user's alone
        try:
            super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        finally:
            os.umask(old)
        self._redirect_output()

    def doRollover(self) -> None:
        old = os.umask(0o077)
        try:
            super().doRollover()
        finally:
            os.umask(old)
        self._redirect_output()

    def _redirect_output(self) -> None:
        if self.stream is not None:
            for fd in (1, 2):
                os.dup2(self.stream.fileno(), fd)


def caller(context: Context) -> str:
    """The caller's certificate CN (the admin's `admin`), or `?` without one."""
    names: list[bytes] = context.auth_context().get("x509_common_name") or [b"?"]
    return names[0].decode(errors="replace")


class CallRecord:
    """One API call as the node logs it when it ends. Who called and from where are read when the call
    starts, while it surely lives: a cancelled call's context may point at a call gRPC has freed."""

    def __init__(self, method: str, context: Context) -> None:
        self.method = method
        self.who = caller(context)
        self.peer = context.peer()
        self.started = time.perf_counter()

    def done(self, outcome: str) -> None:
        """Log the call's end; `outcome` is its status name (OK, INVALID_ARGUMENT, CANCELLED, …)."""
        ms = (time.perf_counter() - self.started) * 1000
        log.info(LINE, self.method, self.who, self.peer, outcome, ms)
