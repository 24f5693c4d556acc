"""Benchmark: N nodes appending their own override entry at the same moment, against raw etcd CAS.

Run: .venv/bin/python bench/override_appends.py [--rounds 20] [--nodes 2,4,8]
Prints a table and writes bench/override_appends.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from auth_node.pb import authsim_pb2 as pb
from cluster.etcd_server import EtcdServer
from cluster.external_ca import init
from cluster.local import local_cluster
from cluster.store import EtcdStore

OUT = Path(__file__).with_name("override_appends.json")


async def raw_cas_latency(endpoint: str, count: int = 300) -> list[float]:
    """Sequential successful CAS Txns on one key with the store's own client: seconds each."""
    samples = []
    async with EtcdStore([endpoint]) as store:
        revision = 0
        for i in range(count):
            started = time.perf_counter()
            result = await store.compare_and_swap("/bench/raw", revision, f"value {i}".encode() * 20)
            samples.append(time.perf_counter() - started)
            revision = result.revision
    return samples


def simultaneous_appends(nodes: int, rounds: int, endpoint: str, tmp: Path) -> dict[str, float]:
    ca = init(tmp / f"extca{nodes}")
    name = f"bench{nodes}"
    with local_cluster(tmp / name, nodes=nodes, cluster_name=name, etcd_endpoints=[endpoint]) as cluster:
        certs = cluster.override_certs(ca, "windows")
        clients = {n: cluster.client(n) for n in cluster.node_names}
        times: list[float] = []
        attempts: list[int] = []
        for _ in range(rounds):
            cluster.authctl("rm", "ca_overrides/windows", "--force")
            barrier = threading.Barrier(nodes)
            replies: list[pb.WriteResponse] = []

            def append(node: str, barrier: threading.Barrier, replies: list[pb.WriteResponse]) -> None:
                request = pb.CreateOverrideRequest(type="windows", certificate=certs[node])
                barrier.wait()
                replies.append(clients[node].call("CreateOverride", request))

            threads = [threading.Thread(target=append, args=(n, barrier, replies)) for n in certs]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            times.append(time.perf_counter() - started)
            attempts.extend(r.attempts for r in replies)
            stored = cluster.authctl("get", "ca_overrides/windows", "--format", "json").stdout
            assert len(json.loads(stored)["spec"]["certificate_overrides"]) == nodes, "an append was lost"
        for client in clients.values():
            client.close()
    return {
        "nodes": nodes,
        "rounds": rounds,
        "all_landed_ms_median": statistics.median(times) * 1000,
        "all_landed_ms_max": max(times) * 1000,
        "attempts_mean": statistics.fmean(attempts),
        "attempts_max": max(attempts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--nodes", default="2,4,8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        etcd = EtcdServer.start(tmp / "etcd" / "data")
        try:
            raw = asyncio.run(raw_cas_latency(etcd.endpoint))
            raw_ms = statistics.median(raw) * 1000
            rows = [
                simultaneous_appends(int(n), args.rounds, etcd.endpoint, tmp) for n in args.nodes.split(",")
            ]
        finally:
            etcd.stop()
    for row in rows:
        row["ratio_to_n_raw_txn"] = row["all_landed_ms_median"] / (row["nodes"] * raw_ms)
    table = Table(
        "nodes", "all landed (median ms)", "max ms", "attempts mean / max", "N x raw Txn ms", "ratio"
    )
    for row in rows:
        table.add_row(
            str(row["nodes"]),
            f"{row['all_landed_ms_median']:.1f}",
            f"{row['all_landed_ms_max']:.1f}",
            f"{row['attempts_mean']:.2f} / {row['attempts_max']}",
            f"{row['nodes'] * raw_ms:.2f}",
            f"{row['ratio_to_n_raw_txn']:.1f}",
        )
    console = Console(width=120)
    console.print(
        f"raw etcd CAS Txn (aetcd, sequential, {len(raw)} samples): median {raw_ms:.2f} ms, "
        f"p90 {statistics.quantiles(raw, n=10)[-1] * 1000:.2f} ms"
    )
    console.print(table)
    OUT.write_text(json.dumps({"raw_txn_ms_median": raw_ms, "appends": rows}, indent=2) + "\n")
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
