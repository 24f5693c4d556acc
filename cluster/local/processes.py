"""Start and stop the cluster's OS processes, always by PID and only when the PID is still ours."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from authsim.cluster.errors import ClusterError


def spawn(argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (it outlives the launcher), output appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def is_running(pid: int | None, marker: str) -> bool:
    """True when `pid` is alive and its command line contains `marker` (guards against PID reuse)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return marker in cmdline and state != "Z"


def stop(pid: int | None, marker: str, timeout: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; returns False when there was nothing of ours to stop."""
    if pid is None or not is_running(pid, marker):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid, marker):
            _reap(pid)
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while is_running(pid, marker):
        if time.monotonic() > deadline:
            raise ClusterError(f"process {pid} still runs after SIGKILL")
        time.sleep(0.02)
    _reap(pid)
    return True


def _reap(pid: int, timeout: float = 5.0) -> None:
    """Collect the exit status when `pid` is our child, so it does not linger as a zombie. An exiting
    process loses its command line before it becomes a zombie: wait (bounded) until it is one."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.01)


def tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
