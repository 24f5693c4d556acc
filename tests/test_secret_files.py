"""PINs and keys never leave their files (issue 10, item 3), tried as a hostile local user would.

While `up` runs, a thread polls every process's /proc/PID/cmdline and environ: no node's PIN or SO PIN
shows, nor in any log. `auth sign --out` and `auth create-override-csr --out` write into a folder that
`nobody` owns: a key file `nobody` made beforehand is replaced by a new file of ours, 0600, that
`nobody` cannot read; symlinks are replaced, their targets untouched; when one output cannot be written
none is left; a name too long for the file system is refused in one line before anything is written.
A failed token initialisation names its cause and no PIN; a PIN file planted as a symlink is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster
from authsim.cluster.cli.authctl_auth import csr_paths
from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout, NodeLayout
from authsim.cluster.secret_files import write_all, write_private
from authsim.hsm import provision_token
from tests import attacker

NOBODY_UID = 65534


@dataclass
class ProcScan:
    """A thread reading /proc/*/cmdline and /proc/*/environ of every process, as fast as it can."""

    seen: set[bytes] = field(default_factory=set)
    passes: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                for what in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{entry.name}/{what}", "rb") as f:
                            self.seen.add(f.read())
                    except OSError:
                        continue  # the process ended meanwhile
            self.passes += 1


@dataclass(frozen=True)
class Started:
    cluster: LocalCluster
    scan: ProcScan


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """One two-node cluster for the module, started while the /proc scan runs."""
    scan = ProcScan()
    thread = threading.Thread(target=scan.run, daemon=True)
    thread.start()
    try:
        cluster = LocalCluster.start(tmp_path_factory.mktemp("secrets") / "c", nodes=2)
    finally:
        scan.stop.set()
        thread.join()
    try:
        yield Started(cluster, scan)
    finally:
        cluster.stop()  # every node, target and etcd, by PID


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder `nobody` owns (0755), e.g. a project dir the admin writes credentials into."""
    directory = Path(tempfile.mkdtemp(prefix="authsim-shared-"))
    os.chown(directory, NOBODY_UID, -1)
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        attacker.as_attacker(*argv), env=attacker.ENV, capture_output=True, text=True, timeout=30, check=False
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_no_pin_on_a_command_line_in_an_environment_or_a_log(started: Started) -> None:
    layout = ClusterLayout(started.cluster.directory)
    pins = {
        f"{node} {secret.name}": secret.read_text().strip().encode()
        for node in started.cluster.node_names
        for secret in (layout.node(node).pin, layout.node(node).so_pin)
    }
    assert len(set(pins.values())) == 4 and all(len(p) >= 16 for p in pins.values())
    scan = started.scan
    leaked = [name for name, pin in pins.items() if any(pin in seen for seen in scan.seen)]
    assert not leaked, f"PINs seen in /proc/*/cmdline or environ: {leaked}"
    # The scan was fast enough to see the short-lived processes that initialise the tokens.
    assert any(b"init_token.py" in seen for seen in scan.seen), scan.passes
    secret_files = {layout.node(n).pin for n in started.cluster.node_names} | {
        layout.node(n).so_pin for n in started.cluster.node_names
    }
    for path in started.cluster.directory.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in secret_files:
            data = path.read_bytes()
            assert not [name for name, pin in pins.items() if pin in data], path


def sign(cluster: LocalCluster, out: Path, *users: str) -> tuple[int, str]:
    argv = ["auth", "sign", "--type", "db_client", "--out", str(out)]
    for user in users or ("alice",):
        argv += ["--user", user]
    result = cluster.authctl(*argv)
    return result.exit_code, result.stderr


def test_a_key_file_nobody_made_is_replaced_by_our_own_0600_file(started: Started, shared: Path) -> None:
    key = shared / "cred.key"
    assert as_nobody("touch", str(key)).returncode == 0
    assert as_nobody("chmod", "644", str(key)).returncode == 0
    planted = key.lstat()
    assert (planted.st_uid, stat.S_IMODE(planted.st_mode)) == (NOBODY_UID, 0o644)
    assert as_nobody("cat", str(key)).returncode == 0  # nobody could read what we would write into it

    code, err = sign(started.cluster, shared / "cred")

    assert code == 0, err
    now = key.lstat()
    assert stat.S_ISREG(now.st_mode) and now.st_ino != planted.st_ino
    assert (now.st_uid, stat.S_IMODE(now.st_mode)) == (os.geteuid(), 0o600)
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    leaf = x509.load_pem_x509_certificate((shared / "cred.crt").read_bytes())
    assert leaf.public_key() == private.public_key()
    denied = as_nobody("cat", str(key))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr and not denied.stdout


def test_symlinked_outputs_are_replaced_and_their_targets_untouched(
    started: Started, shared: Path, tmp_path: Path
) -> None:
    targets = {suffix: tmp_path / f"victim{suffix}" for suffix in (".crt", ".key")}
    for suffix, target in targets.items():
        target.write_text(f"precious {suffix}\n")
        assert as_nobody("ln", "-s", str(target), str(shared / f"cred{suffix}")).returncode == 0

    code, err = sign(started.cluster, shared / "cred")

    assert code == 0, err
    for suffix, target in targets.items():
        assert target.read_text() == f"precious {suffix}\n"
        output = (shared / f"cred{suffix}").lstat()
        assert stat.S_ISREG(output.st_mode) and output.st_uid == os.geteuid()
    assert stat.S_IMODE((shared / "cred.key").stat().st_mode) == 0o600
    assert b"BEGIN CERTIFICATE" in (shared / "cred.crt").read_bytes()


def test_when_one_output_cannot_be_written_none_is_left(started: Started, tmp_path: Path) -> None:
    (tmp_path / "cred.chain.pem").mkdir()

    code, err = sign(started.cluster, tmp_path / "cred")

    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: --out: cannot write "), err
    assert "cred.chain.pem" in err and "none of the 4 files was written" in err
    assert leftovers(tmp_path) == ["cred.chain.pem"]  # the directory, and no temp file
    assert (tmp_path / "cred.chain.pem").is_dir()


def test_with_several_users_one_unwritable_output_leaves_none(started: Started, tmp_path: Path) -> None:
    (tmp_path / "batch-bob.json").mkdir()

    code, err = sign(started.cluster, tmp_path / "batch", "alice", "bob")

    assert code == 1 and err.count("\n") == 1 and "none of the 8 files was written" in err, err
    assert leftovers(tmp_path) == ["batch-bob.json"]


def test_a_too_long_out_is_refused_before_anything_is_written(started: Started, tmp_path: Path) -> None:
    out = tmp_path / ("x" * 247)

    code, err = sign(started.cluster, out)

    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: --out: 'xxxx"), err
    assert "is 257 bytes long; a file name at most 255 bytes allowed" in err
    assert leftovers(tmp_path) == []


def csr_hashes(cluster: LocalCluster, all_nodes: bool) -> list[pb.OverrideCSR]:
    csrs = []
    for node in cluster.node_names if all_nodes else cluster.node_names[:1]:
        with cluster.client(node) as client:
            reply = client.call("CreateOverrideCSR", pb.CreateOverrideCSRRequest(type="windows"))
        csrs.extend(reply.csrs)
    return csrs


def create_csr(cluster: LocalCluster, out: str, all_nodes: bool) -> tuple[int, str]:
    argv = ["auth", "create-override-csr", "--type", "windows", "--out", out]
    result = cluster.authctl(*argv, "--all-nodes" if all_nodes else "--local-only", node="node1")
    return result.exit_code, result.stderr


def test_a_symlinked_csr_output_is_replaced_and_its_target_untouched(
    started: Started, shared: Path, tmp_path: Path
) -> None:
    prefix = f"{shared}/"
    [path] = csr_paths(prefix, csr_hashes(started.cluster, all_nodes=False))
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    assert as_nobody("ln", "-s", str(victim), str(path)).returncode == 0

    code, err = create_csr(started.cluster, prefix, all_nodes=False)

    assert code == 0, err
    assert victim.read_text() == "precious\n"
    assert stat.S_ISREG(path.lstat().st_mode) and path.lstat().st_uid == os.geteuid()
    x509.load_pem_x509_csr(path.read_bytes())


def test_all_nodes_csrs_are_written_all_or_none(started: Started, tmp_path: Path) -> None:
    prefix = f"{tmp_path}/"
    paths = csr_paths(prefix, csr_hashes(started.cluster, all_nodes=True))
    assert len(paths) == 2
    paths[-1].mkdir()

    code, err = create_csr(started.cluster, prefix, all_nodes=True)

    assert code == 1 and err.count("\n") == 1 and "none of the 2 files was written" in err, err
    assert leftovers(tmp_path) == [paths[-1].name]
    paths[-1].rmdir()

    code, err = create_csr(started.cluster, prefix, all_nodes=True)

    assert code == 0, err
    assert leftovers(tmp_path) == sorted(p.name for p in paths)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in paths)


def test_a_too_long_csr_out_is_refused_in_one_line(started: Started, tmp_path: Path) -> None:
    code, err = create_csr(started.cluster, f"{tmp_path}/{'y' * 240}", all_nodes=True)

    assert code == 1 and err.count("\n") == 1 and err.startswith("error: --out: 'yyyy"), err
    assert "a file name at most 255 bytes allowed" in err
    assert leftovers(tmp_path) == []


def test_write_private_is_0600_whatever_the_umask_and_leaves_no_temp_file(tmp_path: Path) -> None:
    umask = os.umask(0)
    try:
        write_private(tmp_path / "secret.key", b"k")
        write_all({tmp_path / "a.key": b"a", tmp_path / "a.crt": b"c"}, public={tmp_path / "a.crt"})
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"secret.key": 0o600, "a.key": 0o600, "a.crt": 0o644}


def test_write_all_takes_back_the_files_it_placed_when_a_later_one_fails(tmp_path: Path) -> None:
    (tmp_path / "old.key").write_bytes(b"old")
    (tmp_path / "c.json").mkdir()
    files = {tmp_path / "old.key": b"new", tmp_path / "b.crt": b"b", tmp_path / "c.json": b"c"}

    with pytest.raises(IsADirectoryError) as raised:
        write_all(files)

    assert raised.value.filename == str(tmp_path / "c.json")
    assert leftovers(tmp_path) == ["c.json"]  # even the replaced old.key: none of the outputs is left


def test_a_failed_token_initialisation_names_the_cause_and_no_pin(tmp_path: Path) -> None:
    label = "authsim-" + "n" * 30  # SoftHSM labels are at most 32 bytes

    with pytest.raises(ClusterError) as raised:
        provision_token(tmp_path / "n", label)

    message = str(raised.value)
    assert "\n" not in message and f"initialising token {label} failed" in message
    assert "longer than 32 bytes" in message
    node = NodeLayout(tmp_path / "n")
    for secret in (node.pin, node.so_pin):
        assert secret.read_text().strip() not in message


def test_a_pin_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    node = NodeLayout(tmp_path / "n")
    node.directory.mkdir()
    planted = tmp_path / "attacker-pin"
    planted.write_text("0000\n")
    node.pin.symlink_to(planted)

    with pytest.raises(ClusterError, match="not a regular file; a PIN file is never read through a link"):
        provision_token(node.directory, "authsim-n")
