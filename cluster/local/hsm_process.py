"""A node's HSM process (`up --hsm process`): p11-kit's server serving the node's one token on a Unix
socket, like a network HSM appliance. It runs in its own session: the listener forks a p11-kit-remote
per connection, so stopping (or pausing) the HSM signals the whole group, never the listener alone."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from authsim.auth_node.config import NodeConfig
from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import hsm_users, processes
from authsim.cluster.local.hsm_users import Isolation
from authsim.cluster.local.state import ClusterState, NodeEntry
from authsim.hsm import TokenConfig
from authsim.hsm.provision import HSM_PROCESS

READY_TIMEOUT = 10.0  # seconds for a started HSM process to accept connections
RUNNING, PAUSED, STOPPED, INPROCESS = "RUNNING", "PAUSED", "STOPPED", "in-process"
ACTIONS = ("stop", "start", "pause", "resume")


def hsm_marker(directory: Path, name: str) -> str:
    """A string only this node's HSM process's command line contains (its socket)."""
    return str(ClusterLayout(directory).node(name).hsm_socket)


def start(token: TokenConfig, log: Path, isolation: Isolation | None = None) -> subprocess.Popen[bytes]:
    """Start p11-kit's server for `token` on its socket (a stale socket file is replaced); with
    `isolation`, as the HSM user, accepting only the node user's connections."""
    server_socket = token.server_socket
    if server_socket is None:
        raise ClusterError(f"token {token.label} has no HSM process socket (hsm: inprocess)")
    exe = shutil.which("p11-kit")
    if exe is None:
        raise ClusterError("p11-kit not found on PATH: install p11-kit and p11-kit-modules (scripts/setup)")
    _socket_folder(server_socket.parent, isolation)
    server_socket.unlink(missing_ok=True)
    argv = [exe, "server", "-f", "-n", str(server_socket), "--provider", token.module_path]
    if isolation is not None:
        argv += isolation.server_flags()
    argv.append(f"pkcs11:token={token.label}")
    return processes.spawn(argv, log, token.softhsm_env())


def wait_ready(process: subprocess.Popen[bytes], server_socket: Path, log: Path) -> None:
    """Return once `server_socket` accepts a connection; ClusterError when the process exits first or
    after READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not _accepts(server_socket):
        if process.poll() is not None:
            raise processes.exit_error(f"HSM process {server_socket}", process, log)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"HSM process {process.pid} not accepting on {server_socket} after {READY_TIMEOUT:g} s"
            )
        time.sleep(0.01)


def state_of(directory: Path, state: ClusterState, entry: NodeEntry) -> str:
    """RUNNING, PAUSED (SIGSTOP) or STOPPED for an HSM process; `in-process` without one."""
    if state.hsm != HSM_PROCESS:
        return INPROCESS
    if not processes.is_running(entry.hsm_pid, hsm_marker(directory, entry.name)):
        return STOPPED
    return PAUSED if processes.paused(entry.hsm_pid) else RUNNING


def launch(directory: Path, state: ClusterState, entry: NodeEntry, token: TokenConfig) -> None:
    """Start `entry`'s HSM process unless it runs, its PID recorded at once, and wait until it accepts
    (isolated when `entry` runs as a user of its own: then its socket is handed to that user)."""
    if processes.is_running(entry.hsm_pid, hsm_marker(directory, entry.name)):
        return
    log = ClusterLayout(directory).node(entry.name).hsm_log
    isolation = hsm_users.recorded(entry.user)
    process = start(token, log, isolation)
    entry.hsm_pid = process.pid
    state.save(directory)
    assert token.server_socket is not None  # start() refused a token without one
    wait_ready(process, token.server_socket, log)
    if isolation is not None:
        hsm_users.hand_socket_to_node(token.server_socket, isolation)


def stop(directory: Path, entry: NodeEntry) -> bool:
    """Stop `entry`'s HSM process and its children (`down`): SIGTERM, SIGKILL after a while."""
    stopped = processes.stop_group(entry.hsm_pid, hsm_marker(directory, entry.name))
    entry.hsm_pid = None
    return stopped


def control(directory: Path, name: str, action: str) -> str:
    """`authsim hsm ACTION NODE`: `stop` kills the HSM process's group (an HSM gone at once), `start`
    starts it again on the same socket, `pause` SIGSTOPs the group (an HSM that hangs), `resume`
    SIGCONTs it. Returns the HSM's state afterwards."""
    state = ClusterState.load(directory)
    entry = state.node(name)
    if state.hsm != HSM_PROCESS:
        raise ClusterError(
            f"the nodes of {directory} load their tokens in-process: `authsim hsm` needs `up --hsm process`"
        )
    marker = hsm_marker(directory, name)
    current = state_of(directory, state, entry)
    if action == "start":
        launch(directory, state, entry, NodeConfig.load(ClusterLayout(directory).node(name).config).token())
    elif current == STOPPED:
        raise ClusterError(f"{name}'s HSM is not running: `authsim hsm start {name}` first")
    elif action == "stop":
        processes.kill_group(entry.hsm_pid, marker)
        entry.hsm_pid = None
    elif action in ("pause", "resume"):
        processes.signal_group(entry.hsm_pid, marker, signal.SIGSTOP if action == "pause" else signal.SIGCONT)
    else:
        raise ClusterError(f"unknown HSM action {action!r}: one of {', '.join(ACTIONS)}")
    state.save(directory)
    return state_of(directory, state, entry)


def _accepts(server_socket: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(server_socket))
        except OSError:
            return False
    return True


def _socket_folder(folder: Path, isolation: Isolation | None) -> None:
    """Make `folder`: ours alone (0700), or with `isolation` the HSM user's, passable by the node users
    (0710); refuse one that is a link, or owned by anyone else (one in the temp dir could have been
    made by another user first)."""
    uid, gid, mode = hsm_users.socket_folder_owner(isolation)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (os.geteuid(), uid):
        raise ClusterError(
            f"HSM socket folder {folder} must be a real folder owned by uid {uid} "
            f"(it is {stat.filemode(info.st_mode)}, uid {info.st_uid}): remove it and start again"
        )
    if (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) != (uid, gid, mode):
        os.chown(folder, uid, gid)
        os.chmod(folder, mode)
