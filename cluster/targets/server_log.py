"""What a server logged about one request of ours: requests take turns, and the log's tail after it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def taking_turns(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock` (made 0600): requests of all processes that use it take turns,
    so what the server logs meanwhile is about this request."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def end_of(log: Path) -> int:
    """Where `log` ends now (0 when there is none yet), to read what is appended after with `since`."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def since(log: Path, offset: int) -> str:
    """The text appended to `log` after `offset`."""
    with contextlib.suppress(FileNotFoundError), log.open("rb") as file:
        file.seek(offset)
        return file.read().decode(errors="replace")
    return ""


def last_line(text: str) -> str:
    """The last non-blank line of a tool's output, for one-line messages."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
