"""Benchmark part: a full `auth rotate --auto` of a 3-node cluster with overrides enabled, the external
CA step scripted (issue 14). Run through scripts/bench (bench/run.py)."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.local.external_ca import ExternalCA, init


def _ok(cluster: LocalCluster, *args: str, node: str | None = None) -> None:
    result = cluster.authctl(*args, node=node)
    if result.exit_code != 0:
        raise RuntimeError(f"authctl {' '.join(args)}: {result.stderr.strip()}")


def _add_entry(cluster: LocalCluster, external: ExternalCA, tmp: Path, node: str, key: str) -> None:
    """The node's CSR for `key`, signed by the external CA, added as the node's own entry."""
    with cluster.client(node) as client:
        request = pb.CreateOverrideCSRRequest(type="windows", public_key_hash=key)
        [csr] = client.call("CreateOverrideCSR", request).csrs
    cert = tmp / f"windows-{key[:16]}.pem"
    cert.write_bytes(external.sign_csr(csr.pem.encode()).public_bytes(Encoding.PEM))
    _ok(cluster, "auth", "create-override", "--type=windows", str(cert), str(external.chain_path), node=node)


def auto_rotation(tmp: Path) -> dict[str, float]:
    """Seconds from `rotate --auto` (init, then refused at the gating) through the per-node entries
    for the new keys to `rotate --auto` done at standby; and the part each step took."""
    external = init(tmp / "rotation-extca")
    with local_cluster(tmp / "rotation", nodes=3) as cluster:
        _ok(cluster, "auth", "rotate", "--type=windows")
        for node in cluster.node_names:  # overrides enabled: every node's entry for its current key
            with cluster.client(node) as client:
                key = client.get_cert_authority("windows").active_keys
            own = next(k.public_key_hash for k in key if k.key.host_id == cluster.host_id(node))
            _add_entry(cluster, external, tmp, node, own)
        started = time.perf_counter()
        refused = cluster.authctl("auth", "rotate", "--type=windows", "--auto")
        if refused.exit_code == 0 or "update_clients refused" not in refused.stderr:
            raise RuntimeError(f"rotate --auto was not gated: {refused.stderr.strip()}")
        gated = time.perf_counter()
        with cluster.client("node1") as client:
            parts = client.get_cert_authority("windows").rotation.nodes
        for part in parts:
            _add_entry(cluster, external, tmp, part.node_name, part.new_key)
        entries = time.perf_counter()
        _ok(cluster, "auth", "rotate", "--type=windows", "--auto")
        done = time.perf_counter()
    return {
        "seconds": done - started,
        "init_s": gated - started,
        "entries_s": entries - gated,
        "to_standby_s": done - entries,
    }
