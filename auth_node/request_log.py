"""What a node writes to its log: one line per API call, and the log file itself, rotated by size.

A call's line (logger `rpc`): `Sign by admin from ipv4:127.0.0.1:50312: OK in 1.4 ms` (method, the caller's
certificate CN, its address, the status code, wall time). Health and reflection calls are not logged.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc

log = logging.getLogger("rpc")

MAX_LOG_BYTES = 10 * 1024 * 1024  # node.log is rotated at this size...
LOG_BACKUPS = 3  # ...keeping node.log.1 … node.log.3

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


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


def _log_call(method: str, context: Context, started: float, error: BaseException | None) -> None:
    code = context.code()
    if code is None:
        code = grpc.StatusCode.CANCELLED if error is not None else grpc.StatusCode.OK
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    ms = (time.perf_counter() - started) * 1000
    log.info("%s by %s from %s: %s in %.1f ms", method, caller(context), context.peer(), name, ms)


def _unary(method: str, behaviour: Callable[[Any, Context], Awaitable[Any]]) -> Callable[..., Any]:
    async def logged(request: Any, context: Context) -> Any:
        started, error = time.perf_counter(), None
        try:
            return await behaviour(request, context)
        except BaseException as e:
            error = e
            raise
        finally:
            _log_call(method, context, started, error)

    return logged


def _streaming(method: str, behaviour: Callable[[Any, Context], AsyncIterator[Any]]) -> Callable[..., Any]:
    async def logged(request: Any, context: Context) -> AsyncIterator[Any]:
        started, error = time.perf_counter(), None
        try:
            async for reply in behaviour(request, context):
                yield reply
        except BaseException as e:
            error = e
            raise
        finally:
            _log_call(method, context, started, error)

    return logged


class RequestLog(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Logs every call of `service` (a full service name) as it ends."""

    def __init__(self, service: str) -> None:
        self.prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        method = details.method[len(self.prefix) :]
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_streaming(method, handler.unary_stream))
        return handler
