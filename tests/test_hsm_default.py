"""`--hsm process` is `up`'s default (issue 16). As root in a dir whose parent folders other users
cannot pass, the nodes cannot be isolated: `up` still starts an HSM process per node, runs the nodes
and HSMs as root, says why in one line and in `status`, and leaves the dir as private as an in-process
cluster's: nothing handed to another user, no o+x added, no account made. A cluster recorded before
`hsm` was keeps loading its tokens in-process."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import launcher, processes
from authsim.cluster.local.hsm_process import hsm_marker
from authsim.cluster.local.launcher import node_marker
from tests.attacker import passable_dir

BIN = Path(sys.executable).parent
NODES = 2


@dataclass
class World:
    cluster: LocalCluster
    private: Path  # the 0700 folder above the cluster dir
    up_stderr: str
    accounts_before: set[str]


def _accounts() -> set[str]:
    """Every authsim user and group of this machine."""
    users = {f"user {u.pw_name}" for u in pwd.getpwall() if u.pw_name.startswith("authsim")}
    return users | {f"group {g.gr_name}" for g in grp.getgrall() if g.gr_name.startswith("authsim")}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """`authsim up` with no --hsm, as root, umask 077, in `<passable>/private/c` (private 0700)."""
    with passable_dir() as tmp:
        private = tmp / "private"
        private.mkdir(mode=0o700)
        directory = private / "c"
        accounts = _accounts()
        up = f"umask 077 && exec {BIN / 'authsim'} up --dir {directory} --nodes {NODES} --detach"
        try:
            done = subprocess.run(["sh", "-c", up], capture_output=True, text=True, timeout=180, check=False)
            assert done.returncode == 0, done.stderr
            yield World(LocalCluster(directory), private, done.stderr, accounts)
        finally:
            launcher.down(directory)


def _node_config(directory: Path, node: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ClusterLayout(directory).node(node).config.read_text())
    return config


def _uid(pid: int | None) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


def test_a_new_cluster_serves_each_token_from_an_hsm_process(world: World) -> None:
    directory = world.cluster.directory
    state = world.cluster.state
    assert state.hsm == "process"
    for entry in state.nodes:
        assert processes.is_running(entry.hsm_pid, hsm_marker(directory, entry.name))
        assert _node_config(directory, entry.name)["hsm"] == "process"
        assert world.cluster.hsm(entry.name).state == "RUNNING"
        assert world.cluster.health(entry.name) == "SERVING"


def test_as_root_below_a_private_folder_the_nodes_run_as_root_and_up_and_status_say_why(world: World) -> None:
    reason = f"folder {world.private} is drwx------, not passable by other users"
    lines = [line for line in world.up_stderr.splitlines() if line.startswith("warning: ")]
    assert lines == [
        f"warning: nodes not isolated (they run as root): {reason}; use a --dir below folders others may "
        "pass, e.g. /srv or /var/tmp, for per-node users"
    ]
    status = subprocess.run(
        [BIN / "authsim", "status", "--dir", str(world.cluster.directory), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = json.loads(status.stdout)["nodes"]
    assert [row["hsm"] for row in rows] == [f"RUNNING (not isolated: {reason})"] * NODES
    for entry in world.cluster.state.nodes:
        assert entry.user is None and entry.not_isolated == reason
        assert _uid(entry.pid) == 0 and _uid(entry.hsm_pid) == 0
        assert processes.is_running(entry.pid, node_marker(world.cluster.directory, entry.name))


def test_unisolated_nothing_in_the_dir_is_handed_to_or_opened_for_other_users(world: World) -> None:
    """As an in-process cluster under umask 077 leaves it: every path root's, every folder 0700 (no o+x
    for node users to pass), group and other bits only on public files (certificates, CRLs) and the
    HSM sockets, all inside those folders."""
    assert world.cluster.state.hsm == "process"  # HSM processes, run by root
    handed, opened = [], []
    for path in _tree(world.cluster.directory):
        info = os.lstat(path)
        if (info.st_uid, info.st_gid) != (0, 0):
            handed.append(f"{path} {info.st_uid}:{info.st_gid}")
        if stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) != 0o700:
            opened.append(f"{path} {stat.filemode(info.st_mode)}")
        public = path.suffix in (".pem", ".crl") or path.name == "hsm.sock"
        if not stat.S_ISDIR(info.st_mode) and info.st_mode & 0o077 and not public:
            opened.append(f"{path} {stat.filemode(info.st_mode)}")
    assert handed == [] and opened == []
    assert stat.S_IMODE(os.stat(world.private).st_mode) == 0o700
    assert _accounts() == world.accounts_before  # no useradd/groupadd for this cluster


def _tree(directory: Path) -> list[Path]:
    """`directory` and everything below it, links not followed."""
    paths = [directory]
    for root, dirs, files in os.walk(directory):
        paths += [Path(root) / name for name in (*dirs, *files)]
    return paths


def test_a_cluster_recorded_without_hsm_keeps_loading_its_tokens_in_process(tmp_path: Path) -> None:
    """A new dir gets HSM processes; a cluster.yaml from before `hsm` was recorded (in-process then)
    keeps its nodes loading SoftHSM themselves: no HSM process is started for it."""
    directory = tmp_path / "c"
    with local_cluster(directory, nodes=1) as cluster:
        assert cluster.state.hsm == "process" and cluster.state.node("node1").hsm_pid is not None
    state_file = ClusterLayout(directory).state_file
    recorded = yaml.safe_load(state_file.read_text())
    del recorded["hsm"]
    state_file.write_text(yaml.safe_dump(recorded, sort_keys=False))
    with local_cluster(directory, nodes=1) as cluster:
        entry = cluster.state.node("node1")
        assert cluster.state.hsm == "inprocess" and entry.hsm_pid is None
        assert cluster.hsm("node1").state == "in-process"
        assert _node_config(directory, "node1")["hsm"] == "inprocess"
        assert cluster.health("node1") == "SERVING"
