"""The console scripts `authsim` and `authctl`: Ctrl-C at any moment exits with status 130 and the
word "aborted", never a traceback. While the CLI's modules are imported, Ctrl-C is only noted and acted
on once the import is done: raised in the middle of a compiled module's initialisation, it can turn
into an ImportError. This module and the packages above it import nothing heavy."""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from types import FrameType

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped with Ctrl-C


def authsim() -> int:
    return _run("authsim.cluster.cli.authsim")


def authctl() -> int:
    return _run("authsim.cluster.cli.authctl")


def _run(module: str) -> int:
    try:
        main = _import_main(module)
        return _interrupted() if main is None else main()
    except KeyboardInterrupt:
        return _interrupted()


def _import_main(module: str) -> Callable[[], int] | None:
    """`module.main`, or None when Ctrl-C came while importing it."""
    pressed: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        main: Callable[[], int] = importlib.import_module(module).main
    finally:
        signal.signal(signal.SIGINT, previous)
    return None if pressed else main


def _interrupted() -> int:
    print("aborted", file=sys.stderr)
    return INTERRUPTED
