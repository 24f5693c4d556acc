"""Start and stop the cluster's OS processes, always by PID and only when the PID is still ours."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import NoReturn

from authsim.cluster.errors import ClusterError, PortInUseError


def spawn(argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (it outlives the launcher), output appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def replace_with(argv: list[str], log_file: Path, env: dict[str, str]) -> NoReturn:
    """Become `argv` (exec: same PID, a container's one process), output appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((null, 0), (log, 1), (log, 2)):
        os.dup2(source, target)
    os.execvpe(argv[0], argv, env)


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
    if _wait_gone(pid, timeout):
        return True
    os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, timeout):
        raise ClusterError(f"process {pid} still runs after SIGKILL")
    return True


def stop_group(pid: int | None, marker: str, timeout: float = 5.0) -> bool:
    """`stop` for a process started in its own session and every process it forked (its group):
    SIGTERM (and SIGCONT, should it be paused), then SIGKILL after `timeout`."""
    if pid is None or not is_running(pid, marker):
        return False
    for sig in (signal.SIGTERM, signal.SIGCONT):
        signal_group(pid, marker, sig)
    if _wait_gone(pid, timeout):
        return True
    return kill_group(pid, marker, timeout)


def kill_group(pid: int | None, marker: str, timeout: float = 5.0) -> bool:
    """SIGKILL to the group of `pid` (a process in its own session); False when it was not running."""
    if pid is None or not signal_group(pid, marker, signal.SIGKILL):
        return False
    if not _wait_gone(pid, timeout):
        raise ClusterError(f"process {pid} still runs after SIGKILL")
    return True


def signal_group(pid: int | None, marker: str, sig: int) -> bool:
    """Send `sig` to the process group led by `pid` when `pid` is still ours; False when it is not."""
    if pid is None or not is_running(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    return True


def paused(pid: int | None) -> bool:
    """True when `pid` is stopped by a signal (SIGSTOP): state T."""
    return pid is not None and _state(pid) == "T"


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited (reaped when it is our child, so no zombie lingers).

    While a process exits, its command line reads empty before it is a zombie: only its exit, not
    the marker, tells that it is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not our child: gone once it is a zombie or has no /proc entry
            if _state(pid) in (None, "Z"):
                return True
        time.sleep(0.02)
    return False


def _state(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return None


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file joined with ` | `, for one-line error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


ADDRESS_IN_USE = "address already in use"  # how etcd, Python (errno 98) and a node report a taken port


def exit_error(what: str, process: subprocess.Popen[bytes], log: Path) -> ClusterError:
    """The error for `what` having exited during start-up, with the end of its `log`: a PortInUseError
    when the log ends saying the port it was to listen on is taken, so the caller may pick another."""
    end = tail(log)
    error = PortInUseError if ADDRESS_IN_USE in end.lower() else ClusterError
    return error(f"{what} exited during start-up with code {process.returncode}; end of {log}: {end}")


def listens_on(pid: int, port: int) -> bool:
    """True when process `pid` itself holds a socket listening on TCP `port` (IPv4 or IPv6), not merely
    some process: a port that was taken first answers too, for the process that then exits."""
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                    return True
    return False


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets in state LISTEN (0A) on `port`, from the kernel's TCP tables."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes
