"""Phased, override-aware rotation on 3 nodes with real tokens and etcd (issue 14 items 1 and 2)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.config import NodeConfig
from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local.external_ca import ExternalCA, init

WORKER = Path(__file__).with_name("_token_worker.py")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rotation")


@pytest.fixture(scope="module")
def external(tmp: Path) -> ExternalCA:
    return init(tmp / "extca")


@pytest.fixture(scope="module")
def cluster(tmp: Path) -> Iterator[LocalCluster]:
    """3 nodes, each signing with its own active key of each CA type."""
    with local_cluster(tmp / "c", nodes=3) as running:
        for ca_type in ("windows", "db_client"):
            ok(running, "auth", "rotate", f"--type={ca_type}")
        yield running


def ok(cluster: LocalCluster, *args: str, node: str | None = None) -> str:
    result = cluster.authctl(*args, node=node)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.stdout


def cert_authority(cluster: LocalCluster, ca_type: str) -> pb.CertAuthority:
    with cluster.client("node1") as client:
        return client.get_cert_authority(ca_type)


def key_hashes(keys: object) -> set[str]:
    return {k.public_key_hash for k in keys}  # type: ignore[attr-defined]


def token_key_ids(cluster: LocalCluster, node: str) -> set[str]:
    """The key ids of every private key of the node's host in its token, listed by a process of its own."""
    config = NodeConfig.load(ClusterLayout(cluster.directory).node(node).config)
    token = config.token()
    request = {
        "node_dir": str(token.node_dir),
        "label": token.label,
        "host_id": config.host_id,
        "node_name": node,
        "action": "list",
    }
    env = token.process_env()
    env["SOFTHSM2_CONF"] = str(token.softhsm_conf)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(WORKER), json.dumps(request)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {k["key_id"] for k in json.loads(proc.stdout)["keys"]}


def keys_by_node(cluster: LocalCluster, ca: pb.CertAuthority) -> dict[str, set[str]]:
    """node -> key ids of `ca` it holds."""
    hosts = {cluster.host_id(n): n for n in cluster.node_names}
    found: dict[str, set[str]] = {n: set() for n in cluster.node_names}
    for pair in [*ca.active_keys, *ca.additional_trusted_keys]:
        found[hosts[pair.key.host_id]].add(pair.key.key_id)
    return found


def add_entry(
    cluster: LocalCluster, external: ExternalCA, tmp: Path, ca_type: str, node: str, key: str, *flags: str
) -> None:
    """A CSR for `key` from `node`, signed by the external CA, added as that node's entry."""
    out = tmp / f"{ca_type}-{key[:12]}-"
    ok(
        cluster,
        "auth",
        "create-override-csr",
        f"--type={ca_type}",
        "--public-key",
        key,
        "--out",
        str(out),
        node=node,
    )
    [csr] = out.parent.glob(f"{out.name}*-csr.pem")
    cert = tmp / f"{ca_type}-{key[:12]}.pem"
    cert.write_bytes(external.sign_csr(csr.read_bytes()).public_bytes(Encoding.PEM))
    ok(
        cluster,
        "auth",
        "create-override",
        f"--type={ca_type}",
        str(cert),
        str(external.chain_path),
        *flags,
        node=node,
    )


def test_phase_walk_is_gated_by_overrides_and_standby_destroys_the_old_keys(
    cluster: LocalCluster, external: ExternalCA, tmp: Path
) -> None:
    for node, pem in cluster.override_certs(external, "windows").items():
        path = tmp / f"windows-old-{node}.pem"
        path.write_text(pem + "\n")
        ok(
            cluster,
            "auth",
            "create-override",
            "--type=windows",
            str(path),
            str(external.chain_path),
            node=node,
        )
    before = cert_authority(cluster, "windows")
    old = key_hashes(before.active_keys)
    old_ids = keys_by_node(cluster, before)

    out = ok(cluster, "auth", "rotate", "--type=windows", "--phase=init")
    assert all(f"node {n}: new key" in out for n in cluster.node_names), out
    ca = cert_authority(cluster, "windows")
    assert ca.rotation.phase == "init" and key_hashes(ca.active_keys) == old
    new = {n.node_name: n.new_key for n in ca.rotation.nodes}
    assert key_hashes(ca.additional_trusted_keys) == set(new.values()) and len(new) == 3

    for args in (("--phase=update_clients",), ("--auto",)):
        refused = cluster.authctl("auth", "rotate", "--type=windows", *args)
        assert refused.exit_code != 0
        assert "update_clients refused" in refused.stderr
        for node, key in new.items():
            command = f"authctl --node {node} auth create-override-csr --type windows --public-key {key}"
            assert command in refused.stderr, refused.stderr
    assert cert_authority(cluster, "windows") == ca  # the refused write changed nothing

    for node, key in new.items():
        match = re.search(
            rf"--node {node} auth create-override-csr --type windows --public-key ({key})", refused.stderr
        )
        assert match is not None
        add_entry(cluster, external, tmp, "windows", node, match.group(1))
    out = ok(cluster, "auth", "rotate", "--type=windows", "--auto")
    for phase in ("update_clients", "update_servers", "standby"):
        assert f"rotation moved to phase {phase}" in out, out
    assert out.count("destroyed in its token") == 3

    after = cert_authority(cluster, "windows")
    assert after.rotation.phase == "standby" and key_hashes(after.active_keys) == set(new.values())
    assert not after.additional_trusted_keys
    with cluster.client("node1") as client:
        [override] = client.call("ListOverrides", pb.GetOverrideRequest(type="windows")).overrides
    assert {e.public_key for e in override.certificate_overrides} == set(new.values())
    for node in cluster.node_names:
        held = token_key_ids(cluster, node)
        assert not held & old_ids[node], node  # the token itself no longer holds an old key
        signed = cluster.sign("windows", "alice", tmp / f"alice-{node}", node=node)
        assert signed["ca_override"] == {"active": True, "public_key_hash": new[node]}


@pytest.mark.parametrize("phase", ["init", "update_clients", "update_servers"])
def test_rollback_restores_the_old_keys_and_removes_the_new_ones_and_their_entries(
    cluster: LocalCluster, external: ExternalCA, tmp: Path, phase: str
) -> None:
    before = cert_authority(cluster, "db_client")
    walk = ["init", "update_clients", "update_servers"]
    for step in walk[: walk.index(phase) + 1]:
        ok(cluster, "auth", "rotate", "--type=db_client", f"--phase={step}")
        if step == "init":
            rotation = cert_authority(cluster, "db_client").rotation
            new = {n.node_name: n.new_key for n in rotation.nodes}
            add_entry(cluster, external, tmp, "db_client", "node2", new["node2"], "--disabled")
    during = cert_authority(cluster, "db_client")
    new_ids = {n: ids - keys_by_node(cluster, before)[n] for n, ids in keys_by_node(cluster, during).items()}

    out = ok(cluster, "auth", "rotate", "--type=db_client", "--phase=rollback")
    assert out.count("signs with its old key(s)") == 3, out
    after = cert_authority(cluster, "db_client")
    assert after.rotation.phase == "rollback"
    assert list(after.active_keys) == list(before.active_keys)
    assert not after.additional_trusted_keys
    with cluster.client("node1") as client:
        [override] = client.call("ListOverrides", pb.GetOverrideRequest(type="db_client")).overrides
    assert not override.certificate_overrides  # the new key's entry left with it
    for node in cluster.node_names:
        assert len(new_ids[node]) == 1
        assert not token_key_ids(cluster, node) & new_ids[node], node
        signed = cluster.sign("db_client", "bob", tmp / f"bob-{phase}-{node}", node=node)
        assert signed["ca_override"]["public_key_hash"] in key_hashes(before.active_keys)


def test_a_node_killed_during_init_makes_its_key_when_it_starts_again(cluster: LocalCluster) -> None:
    victim = cluster.state.node("node3")
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    try:
        waited = cluster.authctl("auth", "rotate", "--type=db_client", "--phase=init", "--timeout=20")
        assert waited.exit_code != 0
        assert "not done on node(s) node3" in waited.stderr, waited.stderr
        assert "node node1: new key" in waited.stdout and "node node2: new key" in waited.stdout
    finally:
        LocalCluster.start(cluster.directory, nodes=3)  # `authsim up` restarts the missing node only
    out = ok(cluster, "auth", "rotate", "--type=db_client", "--phase=init")
    assert "node node3: new key" in out
    ca = cert_authority(cluster, "db_client")
    assert len(ca.additional_trusted_keys) == 3 and all(n.done == "init" for n in ca.rotation.nodes)
    ok(cluster, "auth", "rotate", "--type=db_client", "--phase=rollback")
