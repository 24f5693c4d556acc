"""Commands run as the hostile local user `nobody`, as the attack tests need them.

The switch is made by `setpriv` in the child, not by subprocess's `user=`: with `user=` Python forks
instead of vfork/posix_spawn, and a fork while gRPC's threads run can deadlock in gRPC's fork
handlers (seen: a test process hung in `_fork_exec`).
"""

from __future__ import annotations

ATTACKER = "nobody"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def as_attacker(*argv: str) -> list[str]:
    """`argv` run as `nobody` (group nogroup, no supplementary groups)."""
    return ["setpriv", f"--reuid={ATTACKER}", "--regid=nogroup", "--clear-groups", "--", *argv]
