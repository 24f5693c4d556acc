"""CSRs gathered by the cluster (issue 14 item 4): `create-override-csr` asks every node through etcd.

A real 3-node cluster: the request is a leased etcd key, each node answers for the keys of its own token
via its watch; a stopped node is a warning naming it, within the timeout, not a hang.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.local import processes
from authsim.cluster.local.launcher import node_marker
from tests.certs import openssl_key_hash


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "c", nodes=3) as started:
        yield started


def own_key(cluster: LocalCluster, node: str, ca_type: str = "windows") -> str:
    with cluster.client(node) as client:
        [key] = [str(k.public_key_hash) for k in client.node_status().keys if k.ca_type == ca_type]
    return key


def verified_key_hash(path: Path) -> str:
    """The CSR's public key hash, once `openssl req -verify` accepted its signature."""
    verified = subprocess.run(["openssl", "req", "-in", str(path), "-noout", "-verify"], capture_output=True)
    assert verified.returncode == 0 and b"verify OK" in verified.stdout + verified.stderr, verified.stderr
    return openssl_key_hash(path, "req")


def gather(cluster: LocalCluster, out: Path, *args: str, node: str = "node1") -> tuple[int, str, list[Path]]:
    out.mkdir()
    result = cluster.authctl(
        "auth", "create-override-csr", "--type=windows", "--out", f"{out}/", *args, node=node
    )
    return result.exit_code, result.stderr, sorted(out.glob("windows-*-csr.pem"))


def test_one_node_gathers_every_nodes_csr_and_a_stopped_node_is_a_warning(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    keys = {node: own_key(cluster, node) for node in cluster.node_names}

    # Asked through node1 alone, every node signs the CSR of the key in its own token.
    code, err, written = gather(cluster, tmp_path / "all")
    assert code == 0 and err == "", err
    assert sorted(verified_key_hash(p) for p in written) == sorted(keys.values())

    # One key held by another node: node1 relays it (before, node1 refused and named node2).
    code, err, written = gather(cluster, tmp_path / "one", "--public-key", keys["node2"])
    assert code == 0 and err == "", err
    assert [verified_key_hash(p) for p in written] == [keys["node2"]]

    # --local-only keeps the per-node behaviour: node1's key, the others skipped with a warning.
    code, err, written = gather(cluster, tmp_path / "local", "--local-only")
    assert code == 0
    assert [verified_key_hash(p) for p in written] == [keys["node1"]]
    assert "held by node node2" in err and "held by node node3" in err

    # node3 stopped by its PID: two CSRs and one warning naming node3, within the timeout.
    entry = cluster.state.node("node3")
    assert processes.stop(entry.pid, node_marker(cluster.directory, "node3"))
    started = time.monotonic()
    code, err, written = gather(cluster, tmp_path / "stopped", "--timeout", "3")
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert sorted(verified_key_hash(p) for p in written) == sorted([keys["node1"], keys["node2"]])
    [warning] = err.splitlines()
    assert warning.startswith("warning: no CSR for ") and keys["node3"][:16] in warning
    assert "node node3" in warning and "did not answer within 3s" in warning
    assert 3 <= elapsed < 3 + 10, elapsed
