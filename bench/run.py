"""The benchmark: our figures beside the raw limits measured in the same run (issue 5).

Run: ./scripts/bench [--quick] [--out DIR]. Prints a table, writes results.json and results.png into DIR
(default .authsim-bench, untracked; `--out bench` for the figures the README shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from authsim.cluster.api.local_cluster import local_cluster
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.launcher import UpOptions, down, up
from authsim.cluster.mtls import ADMIN_CN, ensure_etcd_client_identity, ensure_etcd_member_identity
from authsim.cluster.store import EtcdStore, EtcdTLS
from authsim.cluster.store.keys import cluster_prefix
from authsim.cluster.store.rbac import grant_cluster_access
from authsim.hsm.provision import HSM_INPROCESS
from bench.events import record_cost
from bench.hsm import hsm_rows
from bench.issuance import issuance_rate, propagation, raw_sign_rate
from bench.override_appends import interleaved_cas_latency, raw_cas_latency, simultaneous_appends
from bench.rotation import auto_rotation

BATCH = 32  # requests per SignBatch call
IDLE = 0.2  # seconds of quiet before each lone raw Txn: as long as the bench waits before each round
APPEND_TARGETS = {1: 1.8, 2: 1.7, 4: 2.0, 8: 2.5, 16: 3.5}  # all landed / (N x raw CAS), issue 17


def rss_mib(pid: int | None) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def up_time(tmp: Path, nodes: int) -> dict[str, Any]:
    """`authsim up` of a fresh cluster (tokens, keys, etcd, the KDC's database, initdb, targets) until
    every node is SERVING and both targets and their real servers (KDC, PostgreSQL) serve; then `up`
    again of the same, stopped, dir (warm). The default `--hsm` (an HSM process per node; as root in
    `tmp`, which others cannot pass yet, not isolated)."""
    directory = tmp / f"up{nodes}"
    started = time.perf_counter()
    state = up(directory, UpOptions(nodes=nodes))
    seconds = time.perf_counter() - started
    rss = [rss_mib(n.pid) for n in state.nodes]
    down(directory)
    started = time.perf_counter()
    up(directory, UpOptions(nodes=nodes))
    warm = time.perf_counter() - started
    down(directory)
    return {"nodes": nodes, "up_s": seconds, "warm_up_s": warm, "rss_mib_per_node": statistics.fmean(rss)}


def measure(quick: bool, tmp: Path) -> dict[str, Any]:
    seconds = 1.5 if quick else 5.0
    rounds = 5 if quick else 20
    result: dict[str, Any] = {"cpu_count": os.cpu_count(), "quick": quick}
    raw_sign = raw_sign_rate(tmp, seconds)
    # in-process: raw SoftHSM's ceiling, and the baseline of the HSM process rows (hsm_report)
    with local_cluster(tmp / "c", nodes=3, hsm=HSM_INPROCESS) as cluster:
        assert cluster.authctl("auth", "rotate", "--type=db_client").exit_code == 0
        rate = max(issuance_rate(cluster, "node2", seconds, n) for n in (4, 16, 64))
        batched = max(issuance_rate(cluster, "node2", seconds, n, BATCH) for n in (2, 4))
        delays = propagation(cluster, tmp, 20 if quick else 100)
    result["issuance"] = {
        "raw_softhsm_signs_per_s": raw_sign,
        "credentials_per_s": rate,
        "ratio": rate / raw_sign,
        "batch": BATCH,
        "batched_credentials_per_s": batched,
        "batched_ratio": batched / raw_sign,
    }
    ordered = sorted(delays)
    result["propagation_ms"] = {
        "median": statistics.median(delays) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "changes": len(delays),
    }
    etcd = EtcdServer.start(tmp / "etcd" / "data")
    try:
        raw = asyncio.run(raw_cas_latency(etcd.endpoint, 100 if quick else 300))
        raw_ms = statistics.median(raw) * 1000
        idle = asyncio.run(raw_cas_latency(etcd.endpoint, 20 if quick else 60, idle=IDLE))
        raw_idle_ms = statistics.median(idle) * 1000
        sizes = (1, 2, 4, 8) if quick else (1, 2, 4, 8, 16)
        appends = [
            simultaneous_appends(
                n, rounds, etcd, tmp, dead_writer=n == 8, watched_changes=(100 if quick else 300) * (n == 8)
            )
            for n in sizes
        ]
        result["events"] = asyncio.run(record_cost(etcd.endpoint, 100 if quick else 300))
    finally:
        etcd.stop()
    for row in appends:
        row["ratio_to_n_raw_txn"] = row["all_landed_ms_median"] / (row["nodes"] * raw_ms)
        row["ratio_to_serial"] = row["all_landed_ms_median"] / row["serial_ms_median"]
    result["etcd"] = {
        "raw_cas_ms_median": raw_ms,
        "raw_cas_per_s": 1000 / raw_ms,
        "raw_cas_after_idle_ms_median": raw_idle_ms,
        "idle_s": IDLE,
        "appends": appends,
    }
    result["etcd_tls"] = tls_cost(tmp, 100 if quick else 300, rounds)
    result["up"] = [up_time(tmp, n) for n in ((3,) if quick else (3, 16))]
    result["rotation"] = auto_rotation(tmp)
    result["hsm"] = hsm_rows(tmp, _passable(tmp) / "hsm", seconds, BATCH, 3 if quick else 10)
    return result


def hsm_report(table: Table, hsm: dict[str, Any], inprocess: float, inprocess_batched: float) -> None:
    """The rows of issue 16: the HSM process's socket against SoftHSM in-process, the same run."""
    raw = f"{hsm['raw_inprocess_signs_per_s']:.0f} signs/s in-process"
    table.add_row(
        "signs/s through an HSM process's socket",
        f"{hsm['raw_socket_signs_per_s']:.0f}",
        raw,
        f"{hsm['socket_ratio']:.2f}",
        "socket cost",
    )
    for label, ours, theirs in (
        ("credentials/s, hsm process, Sign calls", hsm["credentials_per_s"], inprocess),
        ("credentials/s, hsm process, SignBatch", hsm["batched_credentials_per_s"], inprocess_batched),
    ):
        table.add_row(
            label,
            f"{ours:.0f}",
            f"{theirs:.0f} in-process",
            f"{ours / theirs:.2f}",
            f">= {hsm['socket_ratio']:.2f}",
        )
    table.add_row(
        f"resume / start to first signature (median of {hsm['rounds']})",
        f"{hsm['resume_to_signature_s_median']:.2f} s / {hsm['start_to_signature_s_median']:.2f} s",
        "",
        "",
        "",
    )


def _passable(tmp: Path) -> Path:
    """`tmp` made passable by others (o+x): as root, a `hsm="process"` cluster's nodes run as their own
    users and must reach their dirs."""
    tmp.chmod(tmp.stat().st_mode | 0o011)
    return tmp


def tls_cost(tmp: Path, count: int, rounds: int) -> dict[str, float]:
    """What TLS to etcd costs, on three fresh etcds side by side: plain; TLS with client certificates
    (as the embedded etcd serves); TLS with RBAC on, used by a node user. Raw CAS Txns go to the three
    in turn (so a busy moment of the machine hits all alike), then one node appends on plain and TLS."""
    pki = tmp / "etcd-pki"
    member = ensure_etcd_member_identity(pki, "bench")
    admin = ensure_etcd_client_identity(pki, "bench", pki / "admin", ADMIN_CN)
    node = ensure_etcd_client_identity(pki, "bench", pki / "node1", "node1")
    servers: list[EtcdServer] = []
    try:
        for name, tls in (("plain", None), ("tls", member), ("rbac", member)):
            servers.append(EtcdServer.start(tmp / f"etcd-{name}" / "data", tls=tls))
        plain, tls_etcd, rbac_etcd = servers
        asyncio.run(_enable_rbac(rbac_etcd.endpoint, admin))
        clients = {
            "plain": (plain.endpoint, None, "/bench/raw"),
            "tls": (tls_etcd.endpoint, admin, "/bench/raw"),
            "tls_rbac": (rbac_etcd.endpoint, node, cluster_prefix("bench") + "raw"),
        }
        samples = asyncio.run(interleaved_cas_latency(clients, count))
        raw = {name: statistics.median(times) * 1000 for name, times in samples.items()}
        own = tmp / "tls-cost"  # cluster dirs apart from the other append rows
        own.mkdir()
        append_plain = simultaneous_appends(1, rounds, plain, own)["all_landed_ms_median"]
        append_tls = simultaneous_appends(1, rounds, tls_etcd, own, admin)["all_landed_ms_median"]
    finally:
        for server in servers:
            server.stop()
    return {
        "raw_cas_ms_plain": raw["plain"],
        "raw_cas_ms_tls": raw["tls"],
        "raw_cas_ms_tls_rbac": raw["tls_rbac"],
        "append_1_node_ms_plain": append_plain,
        "append_1_node_ms_tls": append_tls,
        "raw_cas_tls_ratio": raw["tls"] / raw["plain"],
        "raw_cas_tls_rbac_ratio": raw["tls_rbac"] / raw["plain"],
        "append_tls_ratio": append_tls / append_plain,
    }


async def _enable_rbac(endpoint: str, admin: EtcdTLS) -> None:
    async with EtcdStore([endpoint], tls=admin) as store:
        await grant_cluster_access(store, "bench", ADMIN_CN, ["node1"])


def report(result: dict[str, Any]) -> None:
    issuance, prop, etcd = result["issuance"], result["propagation_ms"], result["etcd"]
    table = Table("measure", "ours", "raw limit (same run)", "ratio", "target")
    raw_signs = f"{issuance['raw_softhsm_signs_per_s']:.0f} SoftHSM signs/s"
    table.add_row(
        "credentials/s, one node, Sign calls",
        f"{issuance['credentials_per_s']:.0f}",
        raw_signs,
        f"{issuance['ratio']:.2f}",
        ">= 0.8",
    )
    table.add_row(
        f"credentials/s, one node, SignBatch of {issuance['batch']}",
        f"{issuance['batched_credentials_per_s']:.0f}",
        raw_signs,
        f"{issuance['batched_ratio']:.2f}",
        ">= 0.8",
    )
    for row in etcd["appends"]:
        table.add_row(
            f"appends by {row['nodes']} node{'s' if row['nodes'] > 1 else ''} at once, all landed",
            f"{row['all_landed_ms_median']:.1f} ms, "
            f"attempts {row['attempts_mean']:.2f}/{row['attempts_max']}, "
            f"{row['cores_busy']:.1f} cores busy",
            f"{row['nodes'] * etcd['raw_cas_ms_median']:.1f} ms (N x raw CAS)",
            f"{row['ratio_to_n_raw_txn']:.2f}",
            f"<= {APPEND_TARGETS[row['nodes']]}",
        )
        table.add_row(
            f"  the same {row['nodes']} appends one after another (one client)",
            f"{row['serial_ms_median']:.1f} ms",
            "",
            f"{row['ratio_to_serial']:.2f} (at once / serial)",
            "<= 1.3",
        )
        table.add_row(
            "  CPU per append, until quiet: etcd / nodes",
            f"{row['etcd_cpu_ms_per_append']:.1f} / {row['nodes_cpu_ms_per_append']:.1f} ms",
            "",
            "",
            "",
        )
        if row["nodes"] == 1:
            table.add_row(
                "  the one append, against a raw CAS from idle",
                f"{row['all_landed_ms_median']:.1f} ms",
                f"{etcd['raw_cas_after_idle_ms_median']:.2f} ms (raw CAS, {etcd['idle_s']:g} s quiet before)",
                f"{row['all_landed_ms_median'] / etcd['raw_cas_after_idle_ms_median']:.2f}",
                "",
            )
        if "behind_dead_writer_ms_median" in row:
            table.add_row(
                "  the same at once, behind a writer dead while queued",
                f"{row['behind_dead_writer_ms_median']:.1f} ms",
                f"{row['all_landed_ms_median']:.1f} ms (none dead)",
                f"+{row['behind_dead_writer_ms_median'] - row['all_landed_ms_median']:.1f} ms",
                f"<= +{row['stall_ms']:.0f} ms (a stall)",
            )
        if "watch_cpu_us_per_change_per_node" in row:
            bare = row.get("bare_watch_cpu_us_per_change")
            table.add_row(
                f"  watch CPU per change per node ({row['nodes']} entries)",
                f"{row['watch_cpu_us_per_change_per_node']:.0f} us",
                "" if bare is None else f"{bare:.0f} us (a bare watcher, nothing done)",
                "" if bare is None else f"{row['watch_cpu_us_per_change_per_node'] / bare:.2f}",
                "",
            )
    events = result["events"]
    table.add_row(
        f"record an event, {events['retention']} kept (create + trim)",
        f"{events['record_ms_median']:.2f} ms",
        f"{events['create_ms_median']:.2f} ms (bare create)",
        f"{events['record_ms_median'] / events['create_ms_median']:.1f}",
        "",
    )
    tls = result["etcd_tls"]
    table.add_row(
        "raw etcd CAS Txn over TLS (client cert)",
        f"{tls['raw_cas_ms_tls']:.2f} ms",
        f"{tls['raw_cas_ms_plain']:.2f} ms (plain)",
        f"{tls['raw_cas_tls_ratio']:.2f}",
        "TLS cost",
    )
    table.add_row(
        "raw etcd CAS Txn over TLS + RBAC (node user)",
        f"{tls['raw_cas_ms_tls_rbac']:.2f} ms",
        f"{tls['raw_cas_ms_plain']:.2f} ms (plain)",
        f"{tls['raw_cas_tls_rbac_ratio']:.2f}",
        "TLS cost",
    )
    table.add_row(
        "append by 1 node, etcd over TLS",
        f"{tls['append_1_node_ms_tls']:.1f} ms",
        f"{tls['append_1_node_ms_plain']:.1f} ms (plain etcd)",
        f"{tls['append_tls_ratio']:.2f}",
        "TLS cost",
    )
    for row in result["up"]:
        table.add_row(
            f"authsim up, {row['nodes']} nodes + KDC + PostgreSQL (fresh)",
            f"{row['up_s']:.1f} s, {row['rss_mib_per_node']:.0f} MiB RSS/node",
            "",
            "",
            "<= 10 s" if row["nodes"] == 3 else "",
        )
        table.add_row(
            f"authsim up, {row['nodes']} nodes + KDC + PostgreSQL (warm dir)",
            f"{row.get('warm_up_s', 0.0):.1f} s",
            "",
            "",
            "<= 5 s" if row["nodes"] == 3 else "",
        )
    table.add_row(
        "override write-to-effect",
        f"median {prop['median']:.1f} ms, p99 {prop['p99']:.1f} ms",
        "",
        "",
        "p99 <= 250 ms",
    )
    rotation = result["rotation"]
    table.add_row(
        "rotate --auto, 3 nodes, overrides (external CA scripted)",
        f"{rotation['seconds']:.1f} s: init {rotation['init_s']:.1f}, 3 entries {rotation['entries_s']:.1f}, "
        f"to standby {rotation['to_standby_s']:.1f}",
        "",
        "",
        "",
    )
    hsm_report(table, result["hsm"], issuance["credentials_per_s"], issuance["batched_credentials_per_s"])
    Console(width=200).print(
        f"raw etcd CAS Txn: median {etcd['raw_cas_ms_median']:.2f} ms "
        f"({etcd['raw_cas_per_s']:.0f}/s, one client, back to back), "
        f"{etcd['raw_cas_after_idle_ms_median']:.2f} ms {etcd['idle_s']:g} s after the last; "
        f"{result['cpu_count']} cores"
    )
    Console(width=200).print(table)


def plot(result: dict[str, Any], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rows = result["etcd"]["appends"]
    sizes = [r["nodes"] for r in rows]
    left.plot(sizes, [r["all_landed_ms_median"] for r in rows], "o-", label="all appends landed (median)")
    left.plot(
        sizes,
        [2 * n * result["etcd"]["raw_cas_ms_median"] for n in sizes],
        "--",
        label="target: 2 x N x raw CAS",
    )
    left.set(xlabel="nodes appending at once", ylabel="ms", title="Per-node appends vs raw etcd CAS")
    left.legend()
    issuance = result["issuance"]
    right.bar(
        ["raw SoftHSM\nsigns/s", "Sign\ncredentials/s", f"SignBatch of {issuance['batch']}\ncredentials/s"],
        [
            issuance["raw_softhsm_signs_per_s"],
            issuance["credentials_per_s"],
            issuance["batched_credentials_per_s"],
        ],
    )
    right.set(title="Issuance through one node")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer rounds, no 16-node runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".authsim-bench"),
        help="folder for results.json and results.png (default .authsim-bench, untracked; "
        "`--out bench` replaces the figures the README shows)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.quick, Path(tmp))
    report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "results.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
