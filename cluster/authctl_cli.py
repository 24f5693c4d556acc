"""`authctl`: the admin CLI; talks to one chosen node over mutually authenticated gRPC."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from cryptography import x509
from rich.table import Table

from cluster.cert_authority import CertAuthority
from cluster.cli_common import make_console, run_cli
from cluster.errors import ClusterError, ValidationError
from cluster.launcher import admin_identity
from cluster.node_client import NodeClient
from cluster.state import ClusterState, cluster_dir
from cluster.yaml_codec import dump_yaml

console = make_console()
FORMATS = click.Choice(["yaml", "json", "text"])


@dataclass
class Target:
    """Which node a command goes to, resolved lazily so `--help` needs no cluster."""

    directory: Path
    node: str | None
    auth_server: str | None

    def host_names(self) -> dict[str, str]:
        """host id → node name, from the cluster dir (empty for a remote cluster)."""
        names = {}
        for host_file in (self.directory / "nodes").glob("*/host_id"):
            names[host_file.read_text().strip()] = host_file.parent.name
        return names

    def client(self) -> NodeClient:
        identity = admin_identity(self.directory)
        if not identity.cert.exists():
            raise ClusterError(
                f"no admin identity in {self.directory}/admin: run `authsim up --dir {self.directory}`"
            )
        if self.auth_server:
            return NodeClient(self.auth_server, identity)
        state = ClusterState.load(self.directory)
        if self.node:
            entry = state.node(self.node)
            return NodeClient(entry.address, identity, entry.name)
        for entry in state.nodes:
            client = NodeClient(entry.address, identity, entry.name)
            if client.health() == "SERVING":
                return client
            client.close()
        raise ClusterError(f"no node of {self.directory} is SERVING: start the cluster with `authsim up`")


@click.group(help="Administer an authsim cluster through one of its Auth nodes.")
@click.option(
    "--dir", "directory", default=None, help="cluster state dir (default $AUTHSIM_DIR or ./.authsim)"
)
@click.option("--node", default=None, help="node to talk to, by name (default: the first healthy node)")
@click.option("--auth-server", default=None, help="node address host:port instead of --node")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, node: str | None, auth_server: str | None) -> None:
    if node and auth_server:
        raise click.UsageError("give --node or --auth-server, not both")
    ctx.obj = Target(cluster_dir(directory), node, auth_server)


@cli.command(help="Show a resource: cas/TYPE.")
@click.argument("resource")
@click.option("--format", "fmt", type=FORMATS, default="yaml", show_default=True)
@click.pass_obj
def get(target: Target, resource: str, fmt: str) -> None:
    kind, _, name = resource.partition("/")
    if kind not in ("cas", "cert_authority", "cert_authorities") or not name:
        raise ValidationError([f"resource: unknown resource {resource!r} (known: cas/TYPE)"])
    with target.client() as client:
        ca = CertAuthority.from_proto(client.get_cert_authority(name))
    if fmt == "yaml":
        click.echo(ca.to_yaml(), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(ca.to_dict(), indent=2))
    else:
        print_cert_authority(ca, target.host_names())


@cli.command(help="Show the node: its host id, token and the CA keys its token holds.")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
@click.pass_obj
def status(target: Target, fmt: str) -> None:
    with target.client() as client:
        reply = client.node_status()
    data = {
        "node": reply.node_name,
        "host_id": reply.host_id,
        "cluster_name": reply.cluster_name,
        "token_label": reply.token_label,
        "keys": [
            {"ca_type": k.ca_type, "role": k.role, "public_key_hash": k.public_key_hash, "key_id": k.key_id}
            for k in reply.keys
        ],
    }
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "yaml":
        click.echo(dump_yaml(data), nl=False)
    else:
        console.print(
            f"node {reply.node_name}  host id {reply.host_id}  cluster {reply.cluster_name}  "
            f"token {reply.token_label}"
        )
        table = Table("CA TYPE", "ROLE", "PUBLIC KEY HASH", "KEY ID")
        for k in reply.keys:
            table.add_row(k.ca_type, k.role, k.public_key_hash, k.key_id)
        console.print(table)


def print_cert_authority(ca: CertAuthority, host_names: dict[str, str]) -> None:
    console.print(
        f"cert_authority {ca.ca_type}  cluster {ca.cluster_name}  revision {ca.revision}  "
        f"rotation {ca.rotation_state}"
    )
    table = Table("ROLE", "PUBLIC KEY HASH", "HOST ID", "NODE", "NOT AFTER")
    for role, pair in ca.all_keys():
        cert = x509.load_pem_x509_certificate(pair.cert_pem.encode())
        table.add_row(
            role,
            pair.public_key_hash[:16],
            pair.key.host_id,
            host_names.get(pair.key.host_id, "?"),
            cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(cli, argv, "authctl")


if __name__ == "__main__":
    sys.exit(main())
