"""`authsim up`, `status`, `down` and `forget`: start, inspect, stop a local cluster; clear one from etcd."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from authsim.cluster.cli import completion
from authsim.cluster.cli.common import (
    UNHEALTHY_EXIT,
    cluster_dir_of_cluster,
    dir_option,
    etcd_endpoints,
    etcd_tls_from_options,
    etcd_tls_options,
    format_option,
    make_console,
    print_data,
)
from authsim.cluster.cli.safe_text import cell, cell_lines, escaped
from authsim.cluster.errors import ClusterError, one_line
from authsim.cluster.local import hsm_process, hsm_users, identity, launcher
from authsim.cluster.local.state import EtcdEntry, cluster_dir
from authsim.cluster.local.status import ClusterStatus, collect_status, expiry_line
from authsim.cluster.store.keys import checked_cluster_name
from authsim.hsm.provision import HSM_MODES

console = make_console()


@click.command(help="Start etcd (unless --etcd), the nodes, and wait until every node is SERVING.")
@dir_option
@click.option("--nodes", type=click.IntRange(1, 64), default=None, help="number of Auth nodes (default 3)")
@click.option(
    "--cluster-name",
    default=None,
    help="cluster name: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit "
    "(default mycluster)",
)
@click.option(
    "--etcd",
    "etcd",
    callback=etcd_endpoints,
    default=None,
    help="existing etcd endpoints host:port[,host:port...]",
)
@click.option(
    "--join",
    is_flag=True,
    help="with --etcd: add this dir's nodes to the cluster of that name already on the etcd (else refused)",
)
@click.option("--base-port", type=click.IntRange(1024, 65000), default=None, help="first node gRPC port")
@etcd_tls_options
@click.option(
    "--event-retention",
    type=click.IntRange(1),
    default=None,
    help="session-start events the cluster keeps, the newest (default 10000, or as at the last up)",
)
@click.option(
    "--hsm",
    type=click.Choice(list(HSM_MODES)),
    default=None,
    help="process: each node's token served by its own HSM process (p11-kit server) on a socket (as root, "
    "node and HSM run as users of their own when the folders above --dir let others pass); inprocess: the "
    f"node loads SoftHSM itself (default {launcher.DEFAULT_HSM}, or as at the last up)",
)
@click.option(
    "--hsm-timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="seconds a token call may take before the node counts its HSM unavailable "
    "(default 3, or as at the last up)",
)
@click.option("--detach", is_flag=True, help="return once the cluster is up (stop it with `authsim down`)")
def up(
    directory: str | None,
    nodes: int | None,
    cluster_name: str | None,
    etcd: list[str],
    join: bool,
    base_port: int | None,
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    event_retention: int | None,
    hsm: str | None,
    hsm_timeout: float | None,
    detach: bool,
) -> None:
    path = cluster_dir(directory)
    options = launcher.UpOptions(
        nodes,
        cluster_name,
        etcd or None,
        base_port,
        etcd_tls_from_options(etcd_cacert, etcd_cert, etcd_key),
        event_retention,
        join,
        hsm,
        hsm_timeout,
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

        state = launcher.up(path, options, show)
    print_status(collect_status(path))
    for not_isolated in dict.fromkeys(n.not_isolated for n in state.nodes if n.not_isolated):
        click.echo(f"warning: {escaped(hsm_users.warning(not_isolated))}", err=True)
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


@click.command(
    help="HSM outages: stop (kill the HSM process's group), start (again, on the same socket), pause "
    "(SIGSTOP: the HSM hangs), resume (SIGCONT) NODE's HSM. Needs `up --hsm process`."
)
@click.argument("action", type=click.Choice(list(hsm_process.ACTIONS)))
@click.argument("node", shell_complete=completion.node_names)
@dir_option
def hsm(action: str, node: str, directory: str | None) -> None:
    state = hsm_process.control(cluster_dir(directory), node, action)
    console.print(f"{node}'s HSM: {state}", markup=False)


@click.command(
    help="Show etcd, the nodes (health, HSM, the CA keys each node's token holds) and the targets. "
    "Exit status: 0 when every part is healthy (SERVING; HSM processes running; no stored resource "
    "breaking a rule), 1 when one is not (listed under `unhealthy`), 2 when DIR holds no cluster or "
    "the options are wrong."
)
@dir_option
@format_option("text")
def status(directory: str | None, fmt: str) -> None:
    report = collect_status(cluster_dir_of_cluster(directory))
    if fmt == "text":
        print_status(report)
    else:
        print_data(report.to_dict(), fmt)
    if report.unhealthy():
        raise click.exceptions.Exit(UNHEALTHY_EXIT)


@click.command(help="Stop the cluster's processes; tokens, keys and etcd data stay unless --purge.")
@dir_option
@click.option("--purge", is_flag=True, help="also delete the cluster dir (tokens, keys, embedded etcd data)")
@click.option(
    "--purge-etcd",
    is_flag=True,
    help="with --purge, on an external etcd: also delete the cluster's keys there (only while they are "
    "this dir's cluster's)",
)
def down(directory: str | None, purge: bool, purge_etcd: bool) -> None:
    path = cluster_dir(directory)
    if purge_etcd and not purge:
        raise click.UsageError("--purge-etcd goes with --purge")
    if not purge:
        stopped = launcher.down(path)
        console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return
    purged = launcher.purge(path, purge_etcd)
    console.print(f"stopped: {', '.join(purged.stopped) or 'nothing was running'}")
    console.print(f"deleted {escaped(str(path))}")
    state = purged.kept_in_etcd
    if purged.etcd_keys_deleted is not None:
        console.print(f"deleted {purged.etcd_keys_deleted} keys of the cluster from etcd", markup=False)
    elif state is not None:
        where = ", ".join(state.etcd.endpoints)
        command = forget_command(state.etcd, state.cluster_name, state.cluster_id)
        console.print(
            f"the cluster's data stays in etcd at {where}; remove it with: {command}",
            markup=False,
            soft_wrap=True,
        )


def forget_command(etcd: EtcdEntry, cluster_name: str, cluster_id: str | None) -> str:
    """The `authsim forget` command line that deletes the cluster's keys from `etcd`."""
    words = ["authsim", "forget", "--etcd", ",".join(etcd.endpoints), "--cluster-name", cluster_name]
    words += ["--cluster-id", cluster_id or identity.NO_ID]
    if etcd.tls is not None:
        words += ["--etcd-cacert", str(etcd.tls.cacert), "--etcd-cert", str(etcd.tls.cert)]
        words += ["--etcd-key", str(etcd.tls.key)]
    return shlex.join(words)


@click.command(
    help="Delete a cluster's keys (resources, node records, events) from an etcd, e.g. one whose dir is "
    "gone. Stop its nodes first: etcd does not show whether they still run. Without --cluster-id it "
    "shows the cluster's id and key count and deletes nothing; the id typed back confirms."
)
@click.option(
    "--etcd", "etcd", callback=etcd_endpoints, required=True, help="etcd endpoints host:port[,host:port...]"
)
@click.option("--cluster-name", required=True, help="the cluster's name")
@click.option(
    "--cluster-id",
    default=None,
    help=f"the cluster's id, as `authsim status` or this command shows it ('{identity.NO_ID}': data written "
    "before clusters had ids)",
)
@etcd_tls_options
def forget(
    etcd: list[str],
    cluster_name: str,
    cluster_id: str | None,
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
) -> None:
    tls = etcd_tls_from_options(etcd_cacert, etcd_cert, etcd_key)
    if not etcd:
        raise click.BadParameter("give at least one etcd endpoint", param_hint="--etcd")
    entry = EtcdEntry(etcd, embedded=False, tls=tls.checked() if tls else None)
    name = checked_cluster_name(cluster_name)
    where = ",".join(entry.endpoints)
    seen = identity.stored(entry, name)
    if not seen.keys:
        console.print(f"etcd at {where} holds no key of cluster {name}: nothing to delete", markup=False)
        return
    if cluster_id is None:
        found = seen.identity.cluster_id if seen.identity else identity.NO_ID
        raise ClusterError(
            f"etcd at {where} holds cluster {name!r} {identity.describe(seen)}; nothing deleted: stop its "
            f"nodes, then give --cluster-id {found} to delete them"
        )
    identity.require_id(entry, name, seen, None if cluster_id == identity.NO_ID else cluster_id)
    deleted = identity.forget(entry, name, seen)
    console.print(f"deleted {deleted} keys of cluster {name} from etcd at {where}", markup=False)


def print_status(report: ClusterStatus) -> None:
    """The report as tables that fit 80 columns: addresses are never cut (other cells wrap)."""
    state = report.state
    etcd = ", ".join(state.etcd.endpoints)
    if report.etcd_running is None:
        where = f"(external{', TLS' if state.etcd.tls else ''})"
    else:
        where = f"(embedded, TLS, {'running' if report.etcd_running else 'stopped'})"
    console.print(
        Text.assemble(
            "cluster ",
            (escaped(state.cluster_name), "bold"),
            f"  id {escaped(state.cluster_id or '-')}  etcd {escaped(etcd)} {where}",
        )
    )
    nodes = _table("NODE", "ADDRESS", "PID", "HEALTH", "HSM")
    for row in report.nodes:
        nodes.add_row(*(cell(c) for c in (row.name, row.address, str(row.pid or "-"), row.health, row.hsm)))
    console.print(nodes)
    services = _table("SERVICE", "ADDRESS", "PID", "HEALTH")
    etcd_pid = state.etcd.pid if report.etcd_running else None
    services.add_row(
        cell("etcd"),
        cell_lines("\n".join(state.etcd.endpoints)),
        cell(str(etcd_pid or "-")),
        cell(report.etcd_health),
    )
    for target in report.targets:
        services.add_row(
            *(cell(c) for c in (target.name, target.address, str(target.pid or "-"), target.health))
        )
    console.print(services)
    keys = _table("NODE", "HOST ID", "CA KEYS IN ITS TOKEN")
    for row in report.nodes:
        held = "\n".join(f"{k.ca_type} {k.role} {k.public_key_hash[:12]}" for k in row.keys) or "-"
        keys.add_row(cell(row.name), cell(row.host_id or "-"), cell_lines(held))
    console.print(keys)
    if report.etcd_error:
        console.print(f"etcd: {one_line(report.etcd_error)}", markup=False, style="red", soft_wrap=True)
    for problem in report.problems:
        console.print(f"problem: {one_line(problem)}", markup=False, style="red")
    for alert in report.expiry_alerts:
        console.print(one_line(expiry_line(alert)), markup=False, style="yellow")
    down = [part for part in report.unhealthy() if not part.startswith("problem: ")]
    if down:
        console.print(f"unhealthy: {', '.join(down)}", markup=False, style="red")


_WHOLE = ("NODE", "SERVICE", "ADDRESS", "HOST ID")  # columns never wrapped nor cut


def _table(*headers: str) -> Table:
    """A table whose _WHOLE columns are never wrapped nor cut; the other cells wrap to fit."""
    table = Table()
    for header in headers:
        table.add_column(header, no_wrap=header in _WHOLE, overflow="fold")
    return table
