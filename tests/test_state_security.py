"""State-dir security and a hung etcd, against real clusters (issue 5: security items 7 and 9, reliability 5).

After `up`, every secret in the state dir is private by its own mode: token dirs 0700, PIN files and
private key files 0600, the pki dir 0700 (checked with the most permissive umask, so no secret relies on
the user's). After a full demo run, the only files in the state dir holding a private key are the
software keys meant to be there; no log, etcd file, JSON, YAML or token-derived file does. With etcd
frozen (SIGSTOP), authctl returns within a bound with a one-line error naming the timeout.
"""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from authsim.cluster.api.local_cluster import LocalCluster
from authsim.cluster.cli.demo import EMPTY_OVERRIDE, run_demo
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import launcher, processes

PEM_PRIVATE_KEY = b"PRIVATE KEY-----"  # the end of every PEM private key header and footer
# Raw DER private keys, in case one is ever written without PEM armour: the start of PKCS#8 for RSA and
# for EC (version 0, then the algorithm), and of a PKCS#1 RSA-2048 key (version 0, then the modulus).
DER_PRIVATE_KEY_STARTS = {
    "PKCS#8 RSA": bytes.fromhex("020100300d06092a864886f70d0101010500"),
    "PKCS#8 EC": bytes.fromhex("020100301306072a8648ce3d0201"),
    "PKCS#1 RSA-2048": bytes.fromhex("02010002820101"),
}
# The software keys a cluster keeps on disk (relative to its dir): its three TLS CAs, the admin identity,
# the nodes' and targets' gRPC/TLS keys, the embedded etcd's member key, the etcd client keys of the
# admin and the nodes, the KDC's PKINIT key and PostgreSQL's TLS key (and the KDC's CA), and in a demo
# the stand-in external CA's keys.
EXPECTED_KEY_FILES = re.compile(
    r"pki/[^/]+\.key|admin/admin\.key|nodes/[^/]+/tls\.key|targets/[^/]+/tls\.key|demo/extca/[^/]+\.key"
    r"|etcd/tls\.key|admin/etcd-client\.key|nodes/[^/]+/etcd-client\.key"
    r"|targets/desktop/kdc/kdc\.key|targets/db/postgres/tls\.key"
)
AUTHCTL_BOUND = 30.0  # seconds authctl may take against a frozen etcd
TIMEOUT_WORDS = re.compile(r"(?i)time ?out|timed out|deadline|unavailable|no node .* is SERVING")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes started under umask 0: a secret that relied on the user's umask would show as 0666."""
    directory = tmp_path_factory.mktemp("state") / "c"
    umask = os.umask(0)
    try:
        running = LocalCluster.start(directory, nodes=2)  # `up` stops what it started if it fails
    finally:
        os.umask(umask)
    try:
        yield running
    finally:
        running.stop()  # every node, target and etcd, by PID


def test_secrets_are_private_after_up(cluster: LocalCluster) -> None:
    directory = cluster.directory
    layout = ClusterLayout(directory)
    assert mode(layout.pki.directory) == 0o700
    assert mode(layout.admin.directory) == 0o700
    assert cluster.node_names == ["node1", "node2"]
    for node in cluster.node_names:
        tokens = layout.node(node).tokens
        assert mode(tokens) == 0o700, tokens
        assert any(tokens.iterdir()), f"{tokens} holds no token"
        for secret in (layout.node(node).pin, layout.node(node).so_pin):
            assert mode(secret) == 0o600, secret
    keys = [p for p in directory.rglob("*.key") if p.is_file()]
    relative = {p.relative_to(directory).as_posix() for p in keys}
    expected = {"pki/server-ca.key", "pki/admin-ca.key", "admin/admin.key", "nodes/node1/tls.key"}
    expected |= {"pki/etcd-ca.key", "etcd/tls.key", "admin/etcd-client.key", "nodes/node1/etcd-client.key"}
    assert mode(layout.etcd.directory) == 0o700
    assert expected | {"nodes/node2/tls.key", "targets/db/tls.key", "targets/desktop/tls.key"} <= relative
    assert {"targets/desktop/kdc/kdc.key", "targets/db/postgres/tls.key"} <= relative  # the real servers
    for key in keys:
        assert mode(key) == 0o600, f"{key} is {oct(mode(key))}"
    holding_a_key = [p for p in files_under(directory) if PEM_PRIVATE_KEY in p.read_bytes()]
    assert sorted(holding_a_key) == sorted(keys)  # every private key is in a *.key file, and 0600


def test_authctl_against_a_frozen_etcd_returns_in_bounded_time(cluster: LocalCluster, tmp_path: Path) -> None:
    """Reads, writes and the default-node lookup all end with a one-line error naming the cause."""
    empty = tmp_path / "override.yaml"
    empty.write_text(EMPTY_OVERRIDE.format(ca_type="windows", cluster="mycluster"))
    commands: list[tuple[tuple[str, ...], str | None]] = [
        (("get", "ca_overrides/windows"), "node1"),
        (("create", str(empty)), "node2"),
        (("get", "ca_overrides"), None),
    ]
    etcd_pid = cluster.state.etcd.pid
    assert etcd_pid is not None and processes.is_running(etcd_pid, launcher.etcd_marker(cluster.directory))
    os.kill(etcd_pid, signal.SIGSTOP)
    try:
        for args, node in commands:
            started = time.monotonic()
            result = cluster.authctl(*args, node=node)
            elapsed = time.monotonic() - started
            message = result.stderr.strip()
            assert elapsed < AUTHCTL_BOUND, f"authctl {' '.join(args)} took {elapsed:.1f} s"
            assert result.exit_code != 0, result
            assert message.startswith("error: ") and message.splitlines() == [message], message
            assert TIMEOUT_WORDS.search(message), message
    finally:
        os.kill(etcd_pid, signal.SIGCONT)
    deadline = time.monotonic() + AUTHCTL_BOUND
    while (result := cluster.authctl("get", "ca_overrides", node="node1")).exit_code != 0:
        assert time.monotonic() < deadline, f"no recovery after SIGCONT: {result.stderr.strip()}"
        time.sleep(0.5)


def test_a_demo_run_leaves_private_keys_only_where_expected(tmp_path: Path) -> None:
    """The whole state dir of a demo (logs, etcd data, tokens, JSON, YAML) and its console output."""
    directory = tmp_path / "demo"
    output = io.StringIO()
    try:
        run_demo(directory, Console(file=output, width=160))
    finally:
        launcher.down(directory)  # every process by PID; etcd flushes its data on the way down
    assert PEM_PRIVATE_KEY.decode() not in output.getvalue()
    files = files_under(directory)
    holding: dict[str, bytes] = {}
    for path in files:
        data = path.read_bytes()
        name = path.relative_to(directory).as_posix()
        if PEM_PRIVATE_KEY in data:
            holding[name] = data
        for form, start in DER_PRIVATE_KEY_STARTS.items():
            assert start not in data, f"{name} holds what looks like a {form} private key in DER"
    unexpected = sorted(name for name in holding if not EXPECTED_KEY_FILES.fullmatch(name))
    assert unexpected == [], f"private key material in {unexpected}"
    nodes = [f"node{i}" for i in (1, 2, 3)]
    meant = {"pki/server-ca.key", "pki/admin-ca.key", "admin/admin.key", "demo/extca/root.key"}
    meant |= {f"nodes/{n}/tls.key" for n in nodes} | {"targets/db/tls.key", "targets/desktop/tls.key"}
    meant |= {f"nodes/{n}/etcd-client.key" for n in nodes} | {"etcd/tls.key", "admin/etcd-client.key"}
    meant |= {"pki/kdc-ca.key", "targets/desktop/kdc/kdc.key", "targets/db/postgres/tls.key"}
    assert meant <= set(holding), "the scan did not see the keys that are meant to be there"
    for name in holding:
        assert mode(directory / name) == 0o600, name
    # The scan reads what it has to: etcd's files hold the stored resources in the clear, logs exist.
    etcd_files = [p for p in files if "etcd/data" in p.as_posix()]
    assert any(b"cert_authority_override" in p.read_bytes() for p in etcd_files)
    assert any(b"BEGIN CERTIFICATE" in p.read_bytes() for p in etcd_files)
    assert all(ClusterLayout(directory).node(n).log.stat().st_size > 0 for n in nodes)
    assert any(p.suffix == ".object" for p in files), "no token object files were scanned"
