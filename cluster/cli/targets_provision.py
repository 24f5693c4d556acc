"""`python -m authsim.cluster.cli.targets_provision`: the targets' files, step by step, for docker-compose.

`authsim up` makes these on one machine (`start_target`, `write_default_trust`, the servers of
`local.downstream`). In docker-compose.yml the one-shot `init` service runs `pki` after `authsim
provision pki`: each target's TLS server certificate from the cluster's server CA (the CA key never
leaves init's volume), the targets' addresses, as the nodes reach them, in authctl's cluster.yaml, and
the real servers' files: the KDC's certificate (from a KDC CA kept beside the others), config and
database, PostgreSQL's certificate, pg_hba.conf and data dir (initdb). Once the nodes serve, the
one-shot `targets-trust` service runs `trust`: the default trust (the cluster's self-signed CAs) in each
trust file that does not exist yet, as `authsim up` does, and the addresses registered in etcd, where
nodes look targets up. The target services then run `python -m authsim.cluster.targets --dir DIR ...`
on the same files, and the `kdc` and `postgres` services `serve kdc|postgres`, which loads that trust
and becomes the server. `pki` and `trust` are idempotent.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from authsim.cluster.cli.common import run_cli
from authsim.cluster.cli.provision import dir_type
from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import downstream
from authsim.cluster.local.launcher import register_target_addresses, wait_serving, write_default_trust
from authsim.cluster.local.state import ClusterState, TargetEntry
from authsim.cluster.mtls import ensure_server_identity
from authsim.cluster.store.keys import checked_cluster_name
from authsim.cluster.targets._tls import KINDS


def _address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not host:port")
    return value


def _cluster_state(admin_dir: Path) -> ClusterState:
    if not ClusterState.path(admin_dir).exists():
        raise ClusterError(
            f"no cluster.yaml in {admin_dir}: run `authsim provision pki --admin-dir {admin_dir}` first"
        )
    return ClusterState.load(admin_dir)


@click.group(help="Provision the downstream targets' files one step at a time (docker-compose).")
def targets() -> None:
    pass


@targets.command(
    "pki",
    help="Make each target's TLS server certificate (DIR/targets/KIND/) from the server CA in CA_DIR, "
    "record where nodes reach the targets in ADMIN_DIR/cluster.yaml, and make the files of the real "
    "servers behind them (the KDC's, PostgreSQL's) for `serve`.",
)
@click.option("--ca-dir", type=dir_type, required=True, help="the --ca-dir `authsim provision pki` used")
@click.option(
    "--dir", "directory", type=dir_type, required=True, help="the targets' dir (`cluster.targets --dir`)"
)
@click.option("--admin-dir", type=dir_type, required=True, help="authctl's dir, from `provision pki`")
@click.option("--cluster-name", default="mycluster", show_default=True)
@click.option("--desktop", callback=_address, required=True, help="host:port nodes reach the desktop at")
@click.option("--db", callback=_address, required=True, help="host:port nodes reach the database at")
def pki(directory: Path, ca_dir: Path, admin_dir: Path, cluster_name: str, desktop: str, db: str) -> None:
    checked_cluster_name(cluster_name)
    directory, ca_dir, admin_dir = directory.absolute(), ca_dir.absolute(), admin_dir.absolute()
    state = _cluster_state(admin_dir)
    if state.cluster_name != cluster_name:
        raise ClusterError(f"{admin_dir} holds cluster {state.cluster_name!r}, not {cluster_name!r}")
    pki, layout = ClusterLayout(ca_dir).pki, ClusterLayout(directory)
    if not pki.server_ca_key.exists():  # never a second server CA nobody trusts
        raise ClusterError(
            f"no server CA in {pki.directory}: run `authsim provision pki --ca-dir {ca_dir}` first"
        )
    addresses = {"desktop": desktop, "db": db}
    for kind in KINDS:
        ensure_server_identity(ca_dir, cluster_name, layout.target(kind).directory, [kind])
        state.targets[kind] = TargetEntry(addresses[kind])
    state.save(admin_dir)
    downstream.provision_servers(directory, ca_dir, cluster_name)
    click.echo(f"Targets of cluster {cluster_name} in {layout.targets_dir}: desktop at {desktop}, db at {db}")


@targets.command(
    "trust",
    help="Wait until every node serves, then trust the cluster's self-signed CAs in each target trust "
    "file under DIR/targets/ that does not exist yet (change trust later with `authsim trust`), and "
    "register the targets' addresses in etcd, where nodes look them up.",
)
@click.option("--admin-dir", type=dir_type, required=True, help="authctl's dir: admin identity, cluster.yaml")
@click.option("--dir", "directory", type=dir_type, required=True, help="the targets' dir, as for `pki`")
def trust(admin_dir: Path, directory: Path) -> None:
    directory, admin_dir = directory.absolute(), admin_dir.absolute()
    targets_dir = ClusterLayout(directory).targets_dir
    if not targets_dir.is_dir():
        raise ClusterError(
            f"no targets in {directory}: run `python -m authsim.cluster.cli.targets_provision pki` first"
        )
    state = _cluster_state(admin_dir)
    shown: list[str] = []

    def progress(message: str, ready: int, total: int) -> None:
        if shown[-1:] != [message]:
            shown.append(message)
            click.echo(f"{message} ({ready}/{total} SERVING)")

    wait_serving(admin_dir, state, {}, progress)
    written = write_default_trust(admin_dir, state, directory)
    for path in written:
        click.echo(f"Wrote {path}")
    if not written:
        click.echo(f"Every trust file in {targets_dir} exists: left as it is")
    register_target_addresses(state)
    click.echo(f"Registered {', '.join(f'{k} at {t.address}' for k, t in state.targets.items())} in etcd")


@targets.command(
    "serve",
    help="Become SERVER, the real server behind a target (kdc: the desktop's KDC, postgres: the "
    "database's PostgreSQL), listening on 127.0.0.1:PORT in the foreground: a container's one process. "
    "It trusts what the targets' trust files hold when it starts (restart it after `authsim trust`) "
    "and appends its output to its log under DIR, where the target reads its refusals.",
)
@click.argument("server", type=click.Choice(list(downstream.SERVERS.values())))
@click.option("--dir", "directory", type=dir_type, required=True, help="the targets' dir, as for `pki`")
@click.option("--cluster-name", default="mycluster", show_default=True, help="the KDC's realm comes from it")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="the port on 127.0.0.1")
def serve(server: str, directory: Path, cluster_name: str, port: int) -> None:
    downstream.serve(directory.absolute(), server, checked_cluster_name(cluster_name), port)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(targets, argv, "python -m authsim.cluster.cli.targets_provision")


if __name__ == "__main__":
    sys.exit(main())
