"""Failure paths users meet: a start-up that fails half-way, an override that expired, a missing file."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import processes
from authsim.cluster.local.downstream import LABELS
from authsim.cluster.local.external_ca import init
from authsim.cluster.local.launcher import down, etcd_marker, node_marker
from authsim.cluster.local.state import ClusterState
from authsim.cluster.local.target_process import target_marker
from authsim.hsm.provision import HSM_PROCESS

BIN = Path(sys.executable).parent


def test_failed_up_leaves_no_process_running(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with local_cluster(directory, nodes=3):
        pass
    ClusterLayout(directory).node("node2").pin.write_text("wrong-pin")
    with pytest.raises(ClusterError, match="node node2 exited during start-up"):
        LocalCluster.start(directory, nodes=3)
    state = LocalCluster(directory).state
    assert not any(processes.is_running(n.pid, node_marker(directory, n.name)) for n in state.nodes)
    assert not any(processes.is_running(t.pid, target_marker(directory, k)) for k, t in state.targets.items())
    assert not processes.is_running(state.etcd.pid, etcd_marker(directory))


def test_an_override_that_expired_is_refused_at_signing_with_the_fix(tmp_path: Path) -> None:
    ca = init(tmp_path / "extca")
    with local_cluster(tmp_path / "c", nodes=1) as cluster:
        with cluster.client("node1") as client:
            csr = client.call("CreateOverrideCSR", pb.CreateOverrideCSRRequest(type="db_client")).csrs[0]
        soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3)
        cert = tmp_path / "short.pem"
        cert.write_bytes(ca.sign_csr(csr.pem.encode(), not_after=soon).public_bytes(Encoding.PEM))
        added = cluster.authctl("auth", "create-override", "--type=db_client", str(cert), node="node1")
        assert added.exit_code == 0, added.stderr
        assert cluster.sign("db_client", "u", tmp_path / "before")["ca_override"]["active"]
        time.sleep(max(0.0, (soon - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 0.5)
        refused = cluster.authctl(
            "auth", "sign", "--type=db_client", "--user", "u", "--out", str(tmp_path / "x")
        )
        assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
        assert "override of key" in refused.stderr and "is not valid now" in refused.stderr
        assert "--set-cert" in refused.stderr


def test_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "c", nodes=1) as cluster:
        for args in (
            ("create", str(tmp_path / "missing.yaml")),
            ("auth", "create-override", "--type=windows", str(tmp_path / "missing.pem")),
            ("auth", "pub-key-hash", "--cert", str(tmp_path / "missing.pem")),
        ):
            result = cluster.authctl(*args)
            assert result.exit_code != 0, args
            assert "missing" in result.stderr and "Traceback" not in result.stderr, args
            assert result.stderr.count("\n") <= 2, result.stderr


def test_sign_finds_the_active_key_holder_from_an_admin_dir_without_node_dirs(tmp_path: Path) -> None:
    """An admin dir that holds only cluster.yaml and the admin identity (docker-compose, a remote
    cluster): without --node, `auth sign` asks the nodes their host ids and goes to the key's holder."""
    with local_cluster(tmp_path / "c", nodes=3) as cluster:
        ca = json.loads(cluster.authctl("get", "cas/db_client", "--format", "json").stdout)
        holder_host = ca["spec"]["active_keys"]["tls"][0]["key"]["host_id"]
        holder = next(n for n in cluster.node_names if cluster.host_id(n) == holder_host)
        admin = tmp_path / "admin-only"
        admin.mkdir()
        source, copy = ClusterLayout(cluster.directory), ClusterLayout(admin)
        shutil.copy(source.state_file, copy.state_file)
        shutil.copytree(source.admin.directory, copy.admin.directory)
        out = tmp_path / "cred"
        sign = ["auth", "sign", "--type=db_client", "--user=u", "--out", str(out)]
        done = subprocess.run(
            [str(BIN / "authctl"), "--dir", str(admin), *sign], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(Path(f"{out}.json").read_text())["node"] == holder


def test_purge_and_demo_delete_only_a_dir_authsim_made(tmp_path: Path) -> None:
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    for argv in (["down", "--dir", str(notes), "--purge"], ["demo", "--dir", str(notes)]):
        done = subprocess.run(
            [BIN / "authsim", *argv], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1
        assert done.stderr == (
            f"error: {notes} was not made by `authsim up` (no .authsim-cluster in it): not deleting it\n"
        )
        assert (notes / "notes.txt").read_text() == "keep me"

    missing = tmp_path / "missing"
    done = subprocess.run(
        [BIN / "authsim", "down", "--dir", str(missing), "--purge"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr) == (1, f"error: {missing} does not exist: nothing to purge\n")
    assert "deleted" not in done.stdout


def test_a_partial_down_keeps_the_pid_of_the_etcd_it_did_not_stop(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with local_cluster(directory, nodes=1) as cluster:
        assert down(directory, only={"node1"}) == ["node1", "node1 HSM"]
        etcd_pid = cluster.state.etcd.pid
        assert etcd_pid is not None and processes.is_running(etcd_pid, etcd_marker(directory))
        assert "etcd" in cluster.stop(purge=True)  # stopped by the PID kept, then deleted
    assert not directory.exists() and not processes.is_running(etcd_pid, etcd_marker(directory))


def _processes_of(directory: Path) -> list[int]:
    """PIDs whose command line names `directory` (etcd, nodes and targets all do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(directory) in cmdline and state != "Z" and "authsim up" not in cmdline:
                found.append(int(proc.name))
    return found


def test_up_interrupted_at_any_moment_leaves_nothing_running_and_up_works_again(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    state_file = ClusterLayout(directory).state_file

    def saved() -> int:
        return state_file.stat().st_mtime_ns if state_file.exists() else 0

    interrupted = 0
    try:
        for delay in (0.0, 0.4, 1.0, 2.0, 8.0):  # 8 s: up has finished
            before = saved()
            up = subprocess.Popen(
                [BIN / "authsim", "up", "--dir", str(directory), "--nodes", "2", "--detach"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                deadline = time.monotonic() + 30
                while saved() == before and up.poll() is None:  # past its imports: it saved its plan
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                time.sleep(delay)
                up.send_signal(signal.SIGINT)
                _, err = up.communicate(timeout=60)
            finally:
                up.kill()
                up.wait()
            assert "Traceback" not in err, err
            assert up.returncode in (0, 130, -signal.SIGINT), err
            if left := _processes_of(directory):  # the signal came once the cluster was up: all is up
                planned = _planned_parts(directory)
                assert sorted(down(directory)) == planned, (
                    f"after {delay}s only part of the cluster runs: {err}; {_command_lines(left)}"
                )
            else:
                assert (up.returncode, err.splitlines()[-1:]) == (130, ["aborted"])
                interrupted += 1
        assert interrupted >= 2
    finally:
        _stop_everything(directory)
    with local_cluster(directory, nodes=2) as cluster:  # and up works again, on the same dir
        assert cluster.exercise("db_client", "alice")["success"]
    assert _processes_of(directory) == []


def _planned_parts(directory: Path) -> list[str]:
    """What `down` names when every part `up` planned for `directory` runs: each node (and its HSM
    process, in that mode), each target, each downstream server, and the embedded etcd."""
    state = ClusterState.load(directory)
    parts = [node.name for node in state.nodes] + [f"{kind} target" for kind in state.targets]
    if state.hsm == HSM_PROCESS:
        parts += [f"{node.name} HSM" for node in state.nodes]
    parts += [LABELS[name] for name in state.servers] + ["etcd"]
    return sorted(parts)


def _stop_everything(directory: Path) -> None:
    """Stop whatever a failed assertion left running: the recorded parts by `down`, and anything else
    naming `directory` (what `up` failed to record; the failure says so)."""
    down(directory)
    for pid in _processes_of(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _command_lines(pids: list[int]) -> list[str]:
    """What each of `pids` runs (for a failure message)."""
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
    return lines


SITE_PACKAGES = sysconfig.get_paths()["platlib"]


def _interrupted(argv: list[str], delay: float) -> tuple[int, str]:
    """Run `argv`, send SIGINT `delay` seconds after it loads its first compiled module from
    site-packages (Python's own start-up is over, the CLI's imports are under way); its exit status
    and stderr. Stopped by PID whatever happens."""
    run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        maps = Path(f"/proc/{run.pid}/maps")
        deadline = time.monotonic() + 30
        while not any(SITE_PACKAGES in line and ".so" in line for line in maps.read_text().splitlines()):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1]
            time.sleep(0.002)
        time.sleep(delay)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait()
    return run.returncode, err


def test_ctrl_c_while_the_clis_load_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C while Python imports the CLI's modules (before any handler of the CLI exists) printed a
    KeyboardInterrupt traceback; now `aborted` and status 130; a later one meets `up`'s own handling."""
    directory = tmp_path / "c"
    try:
        for delay in (0.0, 0.1, 0.3):
            code, err = _interrupted(
                [str(BIN / "authsim"), "up", "--dir", str(directory), "--nodes", "1", "--detach"], delay
            )
            assert "Traceback" not in err, (delay, err)
            if delay == 0.0:  # still importing: up never began
                assert not directory.exists()
            if _processes_of(directory):  # the signal came once the cluster was up: all of it is up
                assert sorted(down(directory)) == _planned_parts(directory), (
                    f"after {delay}s only part runs: {err}"
                )
            else:
                assert (code, err.splitlines()[-1:]) == (130, ["aborted"]), (delay, err)
        code, err = _interrupted([str(BIN / "authctl"), "--dir", str(directory), "get", "ca_overrides"], 0.0)
        assert (code, err) == (130, "aborted\n")
    finally:
        _stop_everything(directory)
    assert _processes_of(directory) == []
