"""`authsim provision`: the cluster PKI and one node's state dir, step by step, for containers.

`authsim up` does all of this on one machine. In docker-compose.yml a one-shot init service runs
`provision pki` and each node service runs `provision node` on its own volume before
`python -m authsim.auth_node`. Both commands are idempotent: a second run reuses every key, token and id.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from authsim.auth_node.config import NodeConfig, ensure_host_id
from authsim.auth_node.events import DEFAULT_RETENTION
from authsim.cluster.cli.common import etcd_endpoints, etcd_tls_from_options, etcd_tls_options, run_cli
from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout, NodeLayout
from authsim.cluster.local.state import ClusterState, EtcdEntry, NodeEntry
from authsim.cluster.mtls import (
    ADMIN_CN,
    ensure_admin_identity,
    ensure_etcd_client_identity,
    ensure_etcd_member_identity,
    ensure_node_identity,
    issued_cluster_name,
)
from authsim.cluster.secret_files import write_all
from authsim.cluster.store import EtcdTLS
from authsim.cluster.store.keys import DNS_LABEL, checked_cluster_name
from authsim.hsm import provision_token

NODE_PORT = 3025

dir_type = click.Path(file_okay=False, path_type=Path)


def _names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _node_names(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = _names(value)
    bad = [name for name in names if not DNS_LABEL.fullmatch(name)]
    if not names or bad or len(set(names)) != len(names):
        raise click.BadParameter(
            "give distinct node names, each a lower-case DNS label (it is the node's TLS name), "
            f"comma-separated; got {value!r}"
        )
    return names


def _addresses(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    """`--advertise host:port[,host:port...]` as a list ([] when not given)."""
    addresses = _names(value or "")
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"{address!r} is not host:port")
    return addresses


def _copy(sources: tuple[Path, ...], targets: tuple[Path, ...]) -> None:
    """Copy each source file to the target at the same place, all or none; `*.key` files are 0600."""
    files = {target: source.read_bytes() for source, target in zip(sources, targets, strict=True)}
    write_all(files, public={t for t in targets if t.suffix != ".key"})


@click.group(help="Provision the cluster PKI and node state dirs one step at a time (docker-compose).")
def provision() -> None:
    pass


@provision.command(
    "pki",
    help="Make the cluster CAs, the admin identity and a TLS server certificate for each node. "
    "Node files go to DIR/nodes/NAME/; the admin identity and a cluster.yaml for authctl to ADMIN_DIR.",
)
@click.option("--dir", "directory", type=dir_type, required=True, help="where DIR/nodes/NAME/ is written")
@click.option(
    "--ca-dir",
    type=dir_type,
    default=None,
    help="where the CA private keys stay (default DIR; keep it private)",
)
@click.option("--admin-dir", type=dir_type, default=None, help="authctl's cluster dir (default DIR)")
@click.option("--cluster-name", default="mycluster", show_default=True, help="the cluster's name")
@click.option("--nodes", callback=_node_names, required=True, help="node names, comma-separated")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=NODE_PORT, show_default=True, help="node gRPC port"
)
@click.option(
    "--etcd",
    callback=etcd_endpoints,
    default="",
    help="etcd endpoints host:port,..., recorded in cluster.yaml",
)
@click.option(
    "--advertise",
    callback=_addresses,
    default="",
    help="where authctl reaches the nodes, one host:port per node in --nodes order, recorded in "
    "cluster.yaml (default NAME:PORT, which resolves only on the nodes' network, e.g. docker-compose's)",
)
@etcd_tls_options
@click.option(
    "--etcd-ca",
    is_flag=True,
    help="make an etcd CA (kept in CA_DIR): a member certificate for the --etcd hosts in DIR/etcd/, "
    "each node's etcd client certificate (CN = its name) in DIR/nodes/NAME/, the admin's in "
    "ADMIN_DIR/admin/; the etcd members serve TLS with them (docker-compose)",
)
def pki(
    directory: Path,
    ca_dir: Path | None,
    admin_dir: Path | None,
    cluster_name: str,
    nodes: list[str],
    port: int,
    etcd: list[str],
    advertise: list[str],
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_ca: bool,
) -> None:
    checked_cluster_name(cluster_name)
    if advertise and len(advertise) != len(nodes):
        raise click.UsageError(
            f"--advertise: give one host:port per node of --nodes ({len(nodes)}), got {len(advertise)}"
        )
    tls = etcd_tls_from_options(etcd_cacert, etcd_cert, etcd_key)
    if (tls is not None or etcd_ca) and not etcd:
        what = (
            "--etcd-ca makes certificates for"
            if etcd_ca
            else "--etcd-cacert, --etcd-cert and --etcd-key are TLS to"
        )
        raise click.UsageError(f"{what} --etcd: give --etcd too")
    if tls is not None and etcd_ca:
        raise click.UsageError(
            "--etcd-ca makes the etcd client certificates: leave out --etcd-cacert/--etcd-cert/--etcd-key"
        )
    if tls is not None:
        tls = tls.checked()
    ca_dir, admin_dir = (ca_dir or directory).absolute(), (admin_dir or directory).absolute()
    state_path = ClusterState.path(admin_dir)
    if state_path.exists() and (existing := ClusterState.load(admin_dir)).cluster_name != cluster_name:
        raise ClusterError(f"{admin_dir} holds cluster {existing.cluster_name!r}, not {cluster_name!r}")
    ensure_admin_identity(ca_dir, cluster_name)
    if admin_dir != ca_dir:
        _copy(ClusterLayout(ca_dir).admin.files, ClusterLayout(admin_dir).admin.files)
    for name in nodes:
        node_dir = ClusterLayout(directory.absolute()).node(name).directory
        ensure_node_identity(ca_dir, cluster_name, node_dir, name)
    if etcd_ca:
        tls = _etcd_pki(directory.absolute(), ca_dir, admin_dir, cluster_name, nodes, etcd)
    addresses = advertise or [f"{name}:{port}" for name in nodes]
    entries = [NodeEntry(name, address) for name, address in zip(nodes, addresses, strict=True)]
    ClusterState(cluster_name, EtcdEntry(etcd, embedded=False, tls=tls), entries).save(admin_dir)
    click.echo(f"PKI of cluster {cluster_name} for {', '.join(nodes)} in {directory}")


def _etcd_pki(
    directory: Path, ca_dir: Path, admin_dir: Path, cluster_name: str, nodes: list[str], etcd: list[str]
) -> EtcdTLS:
    """The etcd member identity (naming every endpoint's host), each node's etcd client identity and
    the admin's; returns the admin's."""
    hosts = [endpoint.rpartition(":")[0] for endpoint in etcd]
    ensure_etcd_member_identity(ca_dir, cluster_name, ClusterLayout(directory).etcd.directory, hosts)
    for name in nodes:
        ensure_etcd_client_identity(ca_dir, cluster_name, ClusterLayout(directory).node(name).directory, name)
    return ensure_etcd_client_identity(
        ca_dir, cluster_name, ClusterLayout(admin_dir).admin.directory, ADMIN_CN
    )


@provision.command(
    "node",
    help="Provision a node's state dir: its SoftHSM2 token (tokens/ 0700, PIN 0600), host id, "
    "TLS files copied from PKI/nodes/NAME/ (with its etcd client identity when `provision pki "
    "--etcd-ca` made one), and node.yaml for `python -m authsim.auth_node --config`.",
)
@click.option(
    "--dir", "directory", type=dir_type, required=True, help="the node's own state dir (its volume)"
)
@click.option("--pki", "pki_dir", type=dir_type, required=True, help="the DIR `provision pki` wrote")
@click.option("--name", required=True, help="node name, as given to `provision pki --nodes`")
@click.option(
    "--cluster-name",
    default=None,
    help="the cluster's name (default: the one `provision pki` made the PKI for; another is refused)",
)
@click.option("--listen", default=f"0.0.0.0:{NODE_PORT}", show_default=True, help="gRPC listen host:port")
@click.option(
    "--etcd", callback=etcd_endpoints, required=True, help="etcd endpoints host:port[,host:port...]"
)
@etcd_tls_options
@click.option("--pkcs11-module", default=None, help="PKCS#11 module (default: SoftHSM2)")
@click.option(
    "--event-retention",
    type=click.IntRange(1),
    default=DEFAULT_RETENTION,
    show_default=True,
    help="session-start events the cluster keeps, the newest (give every node the same)",
)
def node(
    directory: Path,
    pki_dir: Path,
    name: str,
    cluster_name: str | None,
    listen: str,
    etcd: list[str],
    etcd_cacert: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    pkcs11_module: str | None,
    event_retention: int,
) -> None:
    if cluster_name is not None:
        checked_cluster_name(cluster_name)
    if not etcd:
        raise click.BadParameter("give at least one etcd endpoint", param_hint="--etcd")
    tls = etcd_tls_from_options(etcd_cacert, etcd_cert, etcd_key)
    if tls is not None:
        tls = tls.checked()  # absolute paths in node.yaml; a missing file refused before anything is written
    issued = ClusterLayout(pki_dir).node(name)  # what `provision pki` made for this node
    if not issued.tls_cert.exists():
        raise ClusterError(
            f"no TLS files for node {name} in {issued.directory}: "
            "run `authsim provision pki --nodes ...` naming it"
        )
    cluster_name = _pki_cluster_name(issued.tls_cert, pki_dir, cluster_name)
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    token = provision_token(directory, f"authsim-{name}", pkcs11_module)
    _copy(issued.tls_files, NodeLayout(directory).tls_files)
    if tls is None and issued.etcd_client.cert.exists():  # made by `provision pki --etcd-ca`
        own = NodeLayout(directory).etcd_client
        _copy(issued.etcd_client.files, own.files)
        tls = EtcdTLS(own.etcd_ca, own.cert, own.key)
    config = NodeConfig(
        name=name,
        cluster_name=cluster_name,
        host_id=ensure_host_id(directory),
        listen=listen,
        etcd_endpoints=tuple(etcd),
        node_dir=directory,
        pkcs11_module=token.module_path,
        token_label=token.label,
        etcd_tls=tls,
        event_retention=event_retention,
    )
    click.echo(f"Wrote {config.save()}")


def _pki_cluster_name(tls_cert: Path, pki_dir: Path, given: str | None) -> str:
    """The cluster name the PKI's certificate for this node was made for; a different --cluster-name
    is refused naming both (the node would join a cluster its certificates are not for)."""
    issued = issued_cluster_name(tls_cert)
    if given is not None and given != issued:
        raise ClusterError(
            f"--cluster-name {given!r}: the PKI in {pki_dir} was made for cluster {issued!r}; "
            f"give --cluster-name {issued} (or leave it out)"
        )
    return checked_cluster_name(issued)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(provision, argv, "authsim provision")


if __name__ == "__main__":
    sys.exit(main())
