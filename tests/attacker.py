"""Commands run as the hostile local user `nobody`, as the attack tests need them.

The switch is made by `setpriv` in the child, not by subprocess's `user=`: with `user=` Python forks
instead of vfork/posix_spawn, and a fork while gRPC's threads run can deadlock in gRPC's fork
handlers (seen: a test process hung in `_fork_exec`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ATTACKER = "nobody"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def as_attacker(*argv: str) -> list[str]:
    """`argv` run as `nobody` (group nogroup, no supplementary groups)."""
    return ["setpriv", f"--reuid={ATTACKER}", "--regid=nogroup", "--clear-groups", "--", *argv]


@contextlib.contextmanager
def passable_dir() -> Iterator[Path]:
    """A new temp dir other users may pass through (o+x, not list), removed afterwards: for a cluster
    whose nodes run as their own users (`hsm="process"` as root), which pytest's own temp dirs (under a
    0700 folder) would keep out."""
    directory = Path(tempfile.mkdtemp(prefix="authsim-"))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
