"""Who a node and its HSM process run as under `up --hsm process` when the launcher is root: the
isolation of issue 16.

    authsim-hsm        (system user, own group) runs every HSM process (p11-kit server -a/-z) and owns
                       every token dir (0700) and SoftHSM conf; nothing else may read a token file
    authsim-<node>     (system user, group authsim-nodes) runs that node (setpriv in the node's argv);
                       owns the node dir (0710, group authsim-hsm: the HSM process may pass through it
                       to its token dir), its PIN, TLS keys, log, sockets and ca-keys.json
    authsim-nodes      every node user's group: may pass into the HSM socket folders (0710) and write
                       the cluster's CRL dir

The HSM process accepts only its node's uid (p11-kit's `-u`: any other peer's connection is closed),
and its socket is handed to the node user (0600) once it listens. The accounts are made with useradd
the first time a root `up` needs them; the same node name in two clusters of one machine is one user.
Without root none of this is possible: the nodes and HSM processes run as the launcher's user. Nor when
a folder above the cluster dir lets no other user pass (`unreachable`): then root runs them, the dir
left as an in-process cluster's (no o+x added, nothing handed over), and `up` and `status` say why.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout, NodeLayout
from authsim.hsm.provision import HSM_PROCESS

HSM_USER = "authsim-hsm"
NODE_GROUP = "authsim-nodes"
NOT_ISOLATED = "not isolated: needs root"
PASSABLE_DIR_ADVICE = "use a --dir below folders others may pass, e.g. /srv or /var/tmp, for per-node users"
_ACCOUNT_ATTEMPTS = 20  # useradd/groupadd fail while another one holds /etc/passwd's lock
_NO_LOGIN = ["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Isolation:
    """The node's user and the HSM user, for one node."""

    node: Account
    hsm: Account

    def node_argv(self, argv: list[str]) -> list[str]:
        """`argv` run as the node user (group authsim-nodes, no other groups). setpriv switches in the
        child before exec: no fork in the launcher, whose gRPC threads make fork unsafe."""
        user = [f"--reuid={self.node.uid}", f"--regid={self.node.gid}", "--clear-groups"]
        return ["setpriv", *user, "--", *argv]

    def server_flags(self) -> list[str]:
        """p11-kit server's flags: run as the HSM user and group, accept only the node user's uid."""
        return ["-a", self.hsm.name, "-z", self.hsm.name, "-u", self.node.name]


def node_user(node_name: str) -> str:
    return f"authsim-{node_name}"


def wanted(hsm_mode: str) -> bool:
    """Whether `up` isolates nodes from their tokens: HSM processes, and a launcher that is root."""
    return hsm_mode == HSM_PROCESS and os.geteuid() == 0


def describe(user: str | None, not_isolated: str | None = None) -> str:
    """How status shows a node's isolation: the user it runs as, or that it has none and why (the
    recorded reason of a root `up`, or that the launcher is not root)."""
    if user:
        return f"isolated: {user}"
    if not_isolated:
        return f"not isolated: {not_isolated}"
    return NOT_ISOLATED if os.geteuid() != 0 else "not isolated"


def unreachable(directory: Path) -> str | None:
    """Why the node and HSM users could not reach `directory`: the first folder above it that does not
    let other users pass (o+x); None when every one does."""
    for folder in reversed(directory.resolve().parents):
        mode = os.stat(folder).st_mode
        if not mode & stat.S_IXOTH:
            return f"folder {folder} is {stat.filemode(mode)}, not passable by other users"
    return None


def warning(not_isolated: str) -> str:
    """The line `up` prints when a root `up --hsm process` could not isolate the nodes."""
    return f"nodes not isolated (they run as root): {not_isolated}; {PASSABLE_DIR_ADVICE}"


def ensure(node_name: str) -> Isolation:
    """The node's isolation, its accounts made when missing (root only)."""
    _ensure_group(NODE_GROUP)
    _ensure_user(HSM_USER, ["--user-group"])
    _ensure_user(node_user(node_name), ["--gid", NODE_GROUP])
    return Isolation(_account(node_user(node_name)), _account(HSM_USER))


def recorded(user: str | None) -> Isolation | None:
    """The isolation of a node recorded as running as `user` (None: not isolated)."""
    if user is None:
        return None
    return Isolation(_account(user), _account(HSM_USER))


def prepare_cluster_dir(directory: Path) -> None:
    """Let the node and HSM users reach their dirs (the folders above it let them pass: `unreachable`):
    the cluster dir and `nodes/` are given o+x (not o+r), the CRL dir is written by every node (group
    authsim-nodes, 0775)."""
    resolved = directory.resolve()
    layout = ClusterLayout(resolved)
    for folder in (resolved, layout.nodes_dir):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, stat.S_IMODE(os.stat(folder).st_mode) | stat.S_IXOTH)
    layout.crl_dir.mkdir(exist_ok=True)
    os.chown(layout.crl_dir, 0, grp.getgrnam(NODE_GROUP).gr_gid)
    os.chmod(layout.crl_dir, 0o775)


def secure_node_dir(node: NodeLayout, isolation: Isolation) -> None:
    """Hand the node dir to the node user and the token to the HSM user: the node dir 0710 (group
    authsim-hsm), the token dir and SoftHSM conf the HSM user's alone, the SO PIN and the HSM log the
    launcher's alone, everything else the node's (its log made first, so the node can append to it)."""
    node.log.touch(mode=0o600, exist_ok=True)
    launcher_only = {node.so_pin, node.hsm_log}
    hsm_only = {node.tokens, node.softhsm_conf}
    for path in _tree(node.directory):
        if path in launcher_only or path == node.hsm_socket.parent:
            continue
        if path in hsm_only or node.tokens in path.parents:
            os.lchown(path, isolation.hsm.uid, isolation.hsm.gid)
        else:
            os.lchown(path, isolation.node.uid, isolation.node.gid)
    os.chmod(node.tokens, 0o700)
    os.chmod(node.softhsm_conf, 0o600)
    os.chown(node.directory, isolation.node.uid, isolation.hsm.gid)
    os.chmod(node.directory, 0o710)


def socket_folder_owner(isolation: Isolation | None) -> tuple[int, int, int]:
    """(uid, gid, mode) the HSM socket folder must have: the HSM user's, passable by the node users
    (0710, group authsim-nodes); without isolation the launcher's alone (0700)."""
    if isolation is None:
        return os.geteuid(), os.getegid(), 0o700
    return isolation.hsm.uid, isolation.node.gid, 0o710


def hand_socket_to_node(server_socket: Path, isolation: Isolation) -> None:
    """Let only the node user open the HSM socket (0600, its own): p11-kit binds it as the HSM user."""
    os.chown(server_socket, isolation.node.uid, isolation.node.gid)
    os.chmod(server_socket, 0o600)


def _tree(directory: Path) -> list[Path]:
    """`directory` and everything below it, links not followed."""
    paths = [directory]
    for root, dirs, files in os.walk(directory):
        paths += [Path(root) / name for name in (*dirs, *files)]
    return paths


def _account(name: str) -> Account:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ClusterError(f"user {name} does not exist: `authsim up` as root makes it") from None
    return Account(name, entry.pw_uid, entry.pw_gid)


def _ensure_group(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        _add(["groupadd", "--system", name], lambda: grp.getgrnam(name))


def _ensure_user(name: str, group: list[str]) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        _add(["useradd", *_NO_LOGIN, *group, name], lambda: pwd.getpwnam(name))


def _add(argv: list[str], exists: Callable[[], object]) -> None:
    """Run useradd/groupadd until the account exists (another `up` may be making it at the same time,
    or hold the lock on /etc/passwd)."""
    error = ""
    for _ in range(_ACCOUNT_ATTEMPTS):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        try:
            exists()
            return
        except KeyError:
            error = (done.stderr or done.stdout).strip()
        time.sleep(0.1)
    raise ClusterError(f"HSM isolation: {' '.join(argv)} failed: {error}")
