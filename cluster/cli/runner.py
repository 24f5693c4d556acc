"""Run a CLI in this process and capture what it prints: the demo and the Python API both do."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CliMain = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class CliResult:
    """What one in-process CLI run returned and printed."""

    exit_code: int
    stdout: str
    stderr: str


def run_in_process(main: CliMain, argv: Sequence[str]) -> CliResult:
    """Call `main(argv)` with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return CliResult(code, out.getvalue(), err.getvalue())
