"""Benchmark parts: raw etcd compare-and-swap latency, and N nodes appending their own override entry
at the same moment, on a plain or a TLS etcd. Run through scripts/bench (bench/run.py)."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import local_cluster
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.external_ca import init
from authsim.cluster.store import EtcdStore, EtcdTLS


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


async def interleaved_cas_latency(
    clients: dict[str, tuple[str, EtcdTLS | None, str]], count: int
) -> dict[str, list[float]]:
    """Successful CAS Txns, one per client in turn, `count` each: seconds each, by client name.

    A client is (endpoint, TLS or None, key); each keeps one connection, opened before timing starts.
    """
    stores = {name: EtcdStore([endpoint], tls=tls) for name, (endpoint, tls, _) in clients.items()}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    revisions = dict.fromkeys(clients, 0)
    try:
        for name, store in stores.items():
            await store.connect()
            await store.ping(clients[name][2])  # the connection (and TLS handshake) before any timing
        for i in range(count):
            for name, store in stores.items():
                started = time.perf_counter()
                result = await store.compare_and_swap(
                    clients[name][2], revisions[name], f"value {i}".encode() * 20
                )
                samples[name].append(time.perf_counter() - started)
                revisions[name] = result.revision
    finally:
        for store in stores.values():
            await store.close()
    return samples


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def simultaneous_appends(
    nodes: int, rounds: int, etcd: EtcdServer, tmp: Path, tls: EtcdTLS | None = None
) -> dict[str, float]:
    """N nodes append their own entry at the same moment, `rounds` times: time until all landed, the
    attempts taken, and how many cores all processes kept busy meanwhile (etcd, nodes, this client).
    With `tls`, etcd serves TLS and the nodes present that client identity."""
    endpoint = etcd.endpoint
    name = f"bench{nodes}{'tls' if tls else ''}"
    ca = init(tmp / f"extca-{name}")
    with local_cluster(
        tmp / name, nodes=nodes, cluster_name=name, etcd_endpoints=[endpoint], etcd_tls=tls
    ) as cluster:
        certs = cluster.override_certs(ca, "windows")
        clients = {n: cluster.client(n) for n in cluster.node_names}
        pids = [p for p in [etcd.pid, *(cluster.state.node(n).pid for n in cluster.node_names)] if p]
        times: list[float] = []
        attempts: list[int] = []
        cpu_used = 0.0
        for _ in range(rounds):
            cluster.authctl("rm", "ca_overrides/windows", "--force")
            barrier = threading.Barrier(nodes, timeout=30)
            replies: list[pb.WriteResponse] = []

            def append(node: str, barrier: threading.Barrier, replies: list[pb.WriteResponse]) -> None:
                request = pb.CreateOverrideRequest(type="windows", certificate=certs[node])
                barrier.wait()
                replies.append(clients[node].call("CreateOverride", request))

            threads = [threading.Thread(target=append, args=(n, barrier, replies)) for n in certs]
            cpu_before = sum(cpu_seconds(p) for p in pids) + time.process_time()
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            times.append(time.perf_counter() - started)
            cpu_used += sum(cpu_seconds(p) for p in pids) + time.process_time() - cpu_before
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
        "cores_busy": cpu_used / sum(times),
    }
