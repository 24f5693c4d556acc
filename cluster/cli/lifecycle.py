"""`authsim up`, `status` and `down`: start, inspect and stop a local cluster (SPEC §9)."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from authsim.cluster.cli.common import dir_option, etcd_tls_from_options, etcd_tls_options, make_console
from authsim.cluster.cli.safe_text import cell, escaped
from authsim.cluster.errors import one_line
from authsim.cluster.local import launcher
from authsim.cluster.local.state import cluster_dir
from authsim.cluster.local.status import ClusterStatus, collect_status
from authsim.cluster.resources.ca_types import CA_TYPES

console = make_console()


@click.command(help="Start etcd (unless --etcd), the nodes, and wait until every node is SERVING.")
@dir_option
@click.option("--nodes", type=click.IntRange(1, 64), default=None, help="number of Auth nodes (default 3)")
@click.option("--cluster-name", default=None, help="cluster name (default mycluster)")
@click.option("--etcd", "etcd", default=None, help="existing etcd endpoints host:port[,host:port...]")
@click.option("--base-port", type=click.IntRange(1024, 65000), default=None, help="first node gRPC port")
@etcd_tls_options
@click.option(
    "--event-retention",
    type=click.IntRange(1),
    default=None,
    help="session-start events the cluster keeps, the newest (default 10000, or as at the last up)",
)
@click.option("--detach", is_flag=True, help="return once the cluster is up (stop it with `authsim down`)")
def up(
    directory: str | None,
    nodes: int | None,
    cluster_name: str | None,
    etcd: str | None,
    base_port: int | None,
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    event_retention: int | None,
    detach: bool,
) -> None:
    path = cluster_dir(directory)
    endpoints = [e.strip() for e in etcd.split(",") if e.strip()] if etcd else None
    options = launcher.UpOptions(
        nodes,
        cluster_name,
        endpoints,
        base_port,
        etcd_tls_from_options(etcd_cacert, etcd_cert, etcd_key),
        event_retention,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} SERVING"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def show(message: str, ready: int, total: int) -> None:
            bar.update(task, description=message, completed=ready, total=total)

        launcher.up(path, options, show)
    print_status(collect_status(path))
    if detach:
        console.print(f"Cluster is up. Stop it with: authsim down --dir {path}")
        return
    console.print("Cluster is up; Ctrl-C stops it.")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    stopped = launcher.down(path)
    console.print(f"stopped: {', '.join(stopped) or 'nothing'}")


@click.command(help="Show nodes, health, and the CA keys each node's token holds.")
@dir_option
def status(directory: str | None) -> None:
    print_status(collect_status(cluster_dir(directory)))


@click.command(help="Stop the cluster's processes; tokens, keys and etcd data stay unless --purge.")
@dir_option
@click.option("--purge", is_flag=True, help="also delete the cluster dir (tokens, keys, etcd data)")
def down(directory: str | None, purge: bool) -> None:
    path = cluster_dir(directory)
    stopped = launcher.down(path, purge=purge)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    if purge:
        console.print(f"deleted {path}")


def print_status(report: ClusterStatus) -> None:
    state = report.state
    etcd = ", ".join(state.etcd.endpoints)
    if report.etcd_running is None:
        where = f"(external{', TLS' if state.etcd.tls else ''})"
    else:
        where = f"(embedded, TLS, {'running' if report.etcd_running else 'stopped'})"
    console.print(
        Text.assemble("cluster ", (escaped(state.cluster_name), "bold"), f"  etcd {escaped(etcd)} {where}")
    )
    table = Table("NODE", "ADDRESS", "PID", "HEALTH", "HOST ID", *(t.upper() for t in CA_TYPES))
    for row in report.nodes:
        keys = [
            ", ".join(f"{k.role} {k.public_key_hash[:12]}" for k in row.keys if k.ca_type == ca) or "-"
            for ca in CA_TYPES
        ]
        cells = [row.name, row.address, str(row.pid or "-"), row.health, row.host_id or "-", *keys]
        table.add_row(*(cell(c) for c in cells))
    console.print(table)
    for problem in report.problems:
        console.print(f"problem: {one_line(problem)}", markup=False, style="red")
