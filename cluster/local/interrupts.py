"""Ctrl-C during `authsim up`: blocks it must not be cut short by, and blocks it must wait for."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def no_interrupt() -> Iterator[None]:
    """Ignore SIGINT for the block (main thread only; elsewhere Python delivers no signals anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C that arrives during the block and raise it (KeyboardInterrupt) once the block ends:
    an interrupt in the middle of setting up or closing an event loop leaves "Exception ignored"
    tracebacks behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coroutine)`, a Ctrl-C during it raised once it has finished (every call is bounded
    by the store's timeouts)."""
    with deferred_interrupt():
        return asyncio.run(coroutine)
