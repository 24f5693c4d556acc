"""`authsim`: start, inspect and stop a local multi-node Auth cluster."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster import launcher
from cluster.ca_types import CA_TYPES
from cluster.cli_common import etcd_tls_from_options, etcd_tls_options, make_console, run_cli
from cluster.demo import run_demo
from cluster.external_ca_cli import external_ca
from cluster.provision_cli import provision
from cluster.state import cluster_dir
from cluster.status import ClusterStatus, collect_status
from cluster.targets.trust_cli import trust
from cluster.watch import run_watch

console = make_console()
dir_option = click.option(
    "--dir", "directory", default=None, help="cluster state dir (default $AUTHSIM_DIR or ./.authsim)"
)


@click.group(help="Run a local multi-node Auth cluster with per-node HSM (SoftHSM2) keys.")
def cli() -> None:
    pass


@cli.command(help="Start etcd (unless --etcd), the nodes, and wait until every node is SERVING.")
@dir_option
@click.option("--nodes", type=click.IntRange(1, 64), default=None, help="number of Auth nodes (default 3)")
@click.option("--cluster-name", default=None, help="cluster name (default mycluster)")
@click.option("--etcd", "etcd", default=None, help="existing etcd endpoints host:port[,host:port...]")
@click.option("--base-port", type=click.IntRange(1024, 65000), default=None, help="first node gRPC port")
@etcd_tls_options
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
    detach: bool,
) -> None:
    path = cluster_dir(directory)
    endpoints = [e.strip() for e in etcd.split(",") if e.strip()] if etcd else None
    options = launcher.UpOptions(
        nodes, cluster_name, endpoints, base_port, etcd_tls_from_options(etcd_cacert, etcd_cert, etcd_key)
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


@cli.command(help="Show nodes, health, and the CA keys each node's token holds.")
@dir_option
def status(directory: str | None) -> None:
    print_status(collect_status(cluster_dir(directory)))


@cli.command(help="Stop the cluster's processes; tokens, keys and etcd data stay unless --purge.")
@dir_option
@click.option("--purge", is_flag=True, help="also delete the cluster dir (tokens, keys, etcd data)")
def down(directory: str | None, purge: bool) -> None:
    path = cluster_dir(directory)
    stopped = launcher.down(path, purge=purge)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    if purge:
        console.print(f"deleted {path}")


@cli.command(help="The seed's five steps on a fresh 3-node cluster, narrated; non-zero exit if a step fails.")
@click.option(
    "--dir",
    "directory",
    default=".authsim-demo",
    show_default=True,
    help="the demo's own cluster dir (replaced on every run)",
)
def demo(directory: str) -> None:
    run_demo(Path(directory).absolute(), console)


@cli.command(
    help="Live view of ca_overrides/TYPE: each new revision, who wrote it, what changed, CAS attempts."
)
@click.argument("resource")
@dir_option
@click.option(
    "--count", type=click.IntRange(0), default=0, help="stop after this many new revisions (0: never)"
)
def watch(resource: str, directory: str | None, count: int) -> None:
    kind, _, name = resource.partition("/")
    if kind != "ca_overrides" or not name:
        raise click.UsageError("watch takes ca_overrides/TYPE")
    run_watch(
        cluster_dir(directory), name, lambda line: console.print(line, markup=False, highlight=False), count
    )


def print_status(report: ClusterStatus) -> None:
    state = report.state
    etcd = ", ".join(state.etcd.endpoints)
    if report.etcd_running is None:
        tls = ", TLS" if state.etcd.tls else ""
        console.print(f"cluster [bold]{state.cluster_name}[/]  etcd {etcd} (external{tls})")
    else:
        console.print(
            f"cluster [bold]{state.cluster_name}[/]  etcd {etcd} (embedded, "
            f"{'running' if report.etcd_running else 'stopped'})"
        )
    table = Table("NODE", "ADDRESS", "PID", "HEALTH", "HOST ID", *(t.upper() for t in CA_TYPES))
    for row in report.nodes:
        keys = [
            ", ".join(f"{k.role} {k.public_key_hash[:12]}" for k in row.keys if k.ca_type == ca) or "-"
            for ca in CA_TYPES
        ]
        table.add_row(row.name, row.address, str(row.pid or "-"), row.health, row.host_id or "-", *keys)
    console.print(table)


cli.add_command(external_ca)
cli.add_command(trust)
cli.add_command(provision)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(cli, argv, "authsim")


if __name__ == "__main__":
    sys.exit(main())
