"""Benchmark parts: raw etcd compare-and-swap latency, and N nodes appending their own override entry
at the same moment, on a plain or a TLS etcd. Run through scripts/bench (bench/run.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.external_ca import init
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.store import EtcdStore, EtcdTLS
from authsim.cluster.store.keys import cluster_prefix, override_key, override_tickets_prefix
from authsim.cluster.store.queue import SESSION_TTL, STALL

CHANGE_SPACING = 0.02  # seconds between the changes whose watch CPU is measured


async def raw_cas_latency(endpoint: str, count: int = 300, idle: float = 0.0) -> list[float]:
    """Sequential successful CAS Txns on one key with the store's own client: seconds each. With
    `idle`, each after that many seconds of nothing (as a lone append comes: every process asleep)."""
    samples = []
    async with EtcdStore([endpoint]) as store:
        revision = 0
        for i in range(count):
            if idle:
                await asyncio.sleep(idle)
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
    """CPU time a process's threads have run so far, to the nanosecond (the scheduler's own count:
    /proc/PID/stat's ticks of 10 ms are too coarse for a few appends)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def simultaneous_appends(
    nodes: int,
    rounds: int,
    etcd: EtcdServer,
    tmp: Path,
    tls: EtcdTLS | None = None,
    dead_writer: bool = False,
    watched_changes: int = 0,
) -> dict[str, float]:
    """N nodes append their own entry at the same moment, `rounds` times: time until all landed, the
    attempts taken, and how many cores all processes kept busy meanwhile (etcd, nodes, this client).
    Each round also times the serial baseline: one client doing the N appends one after another
    through the same node API. With `dead_writer`, each round also appends at once behind the ticket
    of a writer that died while queued (its ticket first in the queue, under a live lease). With
    `watched_changes`, that many changes of the override made straight in etcd (status only) give the
    nodes' CPU per watched change. With `tls`, etcd serves TLS and the nodes present that identity."""
    endpoint = etcd.endpoint
    name = f"bench{nodes}{'tls' if tls else ''}"
    ca = init(tmp / f"extca-{name}")
    with local_cluster(
        tmp / name, nodes=nodes, cluster_name=name, etcd_endpoints=[endpoint], etcd_tls=tls
    ) as cluster:
        certs = cluster.override_certs(ca, "windows")
        clients = {n: cluster.client(n) for n in cluster.node_names}
        pids = [p for p in [etcd.pid, *(cluster.state.node(n).pid for n in cluster.node_names)] if p]
        etcd_cpu = nodes_cpu = 0.0  # from the appends until the cluster is quiet again (their CRLs too)
        aftermath = 0.0  # seconds that took
        at_once: list[float] = []
        serial: list[float] = []
        behind_dead: list[float] = []
        attempts: list[int] = []
        cpu_used = 0.0

        def fresh() -> None:
            """No override, and the cluster quiet again (the holders' CRLs re-signed without the
            removed entries): each round starts from the same state, none pays for the last one."""
            cluster.authctl("rm", "ca_overrides/windows", "--force")
            asyncio.run(_quiet(endpoint, tls))

        for _ in range(rounds):
            fresh()
            etcd_before, nodes_before = _cpu_split(pids)
            client_before, began = time.process_time(), time.perf_counter()
            seconds, replies = _append_at_once(clients, certs)
            etcd_landed, nodes_landed = _cpu_split(pids)
            cpu_used += (
                etcd_landed + nodes_landed + time.process_time() - etcd_before - nodes_before - client_before
            )
            at_once.append(seconds)
            attempts.extend(r.attempts for r in replies)
            asyncio.run(_quiet(endpoint, tls))  # the new entries' CRLs are signed after the appends
            aftermath += time.perf_counter() - began
            etcd_after, nodes_after = _cpu_split(pids)
            etcd_cpu += etcd_after - etcd_before
            nodes_cpu += nodes_after - nodes_before
            _check_all_landed(cluster, nodes)
            fresh()
            serial.append(_append_serially(clients, certs))
            _check_all_landed(cluster, nodes)
            if dead_writer:
                fresh()
                lease = asyncio.run(_dead_ticket(endpoint, tls, name))
                behind_dead.append(_append_at_once(clients, certs)[0])
                asyncio.run(_revoke(endpoint, tls, lease))
                _check_all_landed(cluster, nodes)
        idle_etcd, idle_nodes = _idle_cpu(pids, endpoint, tls)
        etcd_cpu -= idle_etcd * aftermath
        nodes_cpu -= idle_nodes * aftermath
        watch = _watch_cpu(endpoint, tls, name, pids[1:], watched_changes) if watched_changes else {}
        for client in clients.values():
            client.close()
    result: dict[str, float] = {
        "nodes": nodes,
        "rounds": rounds,
        "all_landed_ms_median": statistics.median(at_once) * 1000,
        "all_landed_ms_max": max(at_once) * 1000,
        "serial_ms_median": statistics.median(serial) * 1000,
        "attempts_mean": statistics.fmean(attempts),
        "attempts_max": max(attempts),
        "cores_busy": cpu_used / sum(at_once),
        "etcd_cpu_ms_per_append": etcd_cpu / (rounds * nodes) * 1000,
        "nodes_cpu_ms_per_append": nodes_cpu / (rounds * nodes) * 1000,
        **watch,
    }
    if behind_dead:
        result["behind_dead_writer_ms_median"] = statistics.median(behind_dead) * 1000
        result["stall_ms"] = STALL * 1000
    return result


def _append_at_once(
    clients: dict[str, NodeClient], certs: dict[str, str]
) -> tuple[float, list[pb.WriteResponse]]:
    """Each node appends its entry, all released by one barrier: seconds until all landed, the replies."""
    barrier = threading.Barrier(len(certs), timeout=30)
    replies: list[pb.WriteResponse] = []

    def append(node: str) -> None:
        request = pb.CreateOverrideRequest(type="windows", certificate=certs[node])
        barrier.wait()
        replies.append(clients[node].call("CreateOverride", request))

    threads = [threading.Thread(target=append, args=(n,)) for n in certs]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, replies


def _append_serially(clients: dict[str, NodeClient], certs: dict[str, str]) -> float:
    """One client does the N appends one after another, each through its node: seconds in all."""
    started = time.perf_counter()
    for node, cert in certs.items():
        clients[node].call("CreateOverride", pb.CreateOverrideRequest(type="windows", certificate=cert))
    return time.perf_counter() - started


def _check_all_landed(cluster: LocalCluster, nodes: int) -> None:
    stored = cluster.authctl("get", "ca_overrides/windows", "--format", "json").stdout
    assert len(json.loads(stored)["spec"]["certificate_overrides"]) == nodes, "an append was lost"


async def _quiet(endpoint: str, tls: EtcdTLS | None, still: float = 0.2, limit: float = 10.0) -> None:
    """Return once etcd's revision has not moved for `still` seconds (nothing is being written)."""
    async with EtcdStore([endpoint], tls=tls) as store:
        deadline = time.monotonic() + limit
        revision = await store.ping()
        while time.monotonic() < deadline:
            await asyncio.sleep(still)
            now = await store.ping()
            if now == revision:
                return
            revision = now
    raise AssertionError(f"etcd kept being written for {limit:g} s: the cluster never went quiet")


async def _dead_ticket(endpoint: str, tls: EtcdTLS | None, cluster_name: str) -> int:
    """The ticket of a writer that died while queued, first in the queue of the windows override; the
    lease it is under (alive: as if the node died a moment ago)."""
    async with EtcdStore([endpoint], tls=tls) as store:
        lease = await store.grant_lease(SESSION_TTL)
        ticket = f"{override_tickets_prefix(cluster_name, 'windows')}dead-host/dead-request"
        await store.put_leased(ticket, b"", lease)
        return lease


async def _revoke(endpoint: str, tls: EtcdTLS | None, lease: int) -> None:
    async with EtcdStore([endpoint], tls=tls) as store:
        await store.revoke_lease(lease)


def _idle_cpu(pids: list[int], endpoint: str, tls: EtcdTLS | None, waits: int = 5) -> tuple[float, float]:
    """CPU seconds per second that etcd (`pids[0]`) and the nodes (the rest) use while nothing happens
    but a wait for quiet (timers, health checks, the wait's own connection and reads): taken off the CPU
    measured over the appends and the wait for quiet after them."""
    etcd_before, nodes_before = _cpu_split(pids)
    started = time.perf_counter()
    for _ in range(waits):
        asyncio.run(_quiet(endpoint, tls))
    seconds = time.perf_counter() - started
    etcd, nodes = _cpu_split(pids)
    return (etcd - etcd_before) / seconds, (nodes - nodes_before) / seconds


def _cpu_split(pids: list[int]) -> tuple[float, float]:
    """CPU seconds used so far by etcd (`pids[0]`) and by the nodes (the rest) together."""
    return cpu_seconds(pids[0]), sum(cpu_seconds(p) for p in pids[1:])


def _watch_cpu(
    endpoint: str, tls: EtcdTLS | None, cluster_name: str, nodes: list[int], changes: int
) -> dict[str, float]:
    """The nodes' CPU per change of the override they watch (made straight in etcd, status only, so
    no node writes; spaced, so each node handles each change on its own), less their CPU when idle for
    as long."""

    async def change_all() -> float:
        key = override_key(cluster_name, "windows")
        async with EtcdStore([endpoint], tls=tls) as store:
            started = time.perf_counter()
            for i in range(changes):
                found = await store.get(key)
                assert found is not None
                data = json.loads(found.value)
                data.setdefault("status", {})["bench_change"] = i
                await store.compare_and_swap(key, found.mod_revision, json.dumps(data).encode())
                await asyncio.sleep(CHANGE_SPACING)
            await asyncio.sleep(0.2)  # the last deliveries
            return time.perf_counter() - started

    bare = _start_bare_watcher(endpoint, cluster_prefix(cluster_name)) if tls is None else None
    try:
        watchers = [*nodes, *([bare.pid] if bare else [])]
        before = {p: cpu_seconds(p) for p in watchers}
        seconds = asyncio.run(change_all())
        busy = {p: cpu_seconds(p) - before[p] for p in watchers}
        before = {p: cpu_seconds(p) for p in watchers}
        time.sleep(seconds)
        used = {p: max(busy[p] - (cpu_seconds(p) - before[p]), 0.0) / changes * 1e6 for p in watchers}
    finally:
        if bare is not None:
            bare.kill()
            bare.wait()
    row = {
        "watched_changes": changes,
        "watch_cpu_us_per_change_per_node": sum(used[p] for p in nodes) / len(nodes),
    }
    if bare is not None:
        row["bare_watch_cpu_us_per_change"] = used[bare.pid]
    return row


def _start_bare_watcher(endpoint: str, prefix: str) -> subprocess.Popen[str]:
    """A bare watcher process (bench/bare_watcher.py) of `prefix`, its watch open."""
    watcher = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_watcher", endpoint, prefix], stdout=subprocess.PIPE, text=True
    )
    assert watcher.stdout is not None
    if watcher.stdout.readline().strip() != "watching":
        watcher.kill()
        watcher.wait()
        raise RuntimeError("the bare watcher did not start")
    return watcher
