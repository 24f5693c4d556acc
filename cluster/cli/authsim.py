"""`authsim`: up, status, down, forget, logs, hsm, demo, watch, trust, external-ca and provision."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from authsim.cluster.cli import completion
from authsim.cluster.cli.common import dir_option, make_console, run_cli
from authsim.cluster.cli.demo import run_demo
from authsim.cluster.cli.examples import add_examples
from authsim.cluster.cli.external_ca import external_ca
from authsim.cluster.cli.lifecycle import down, forget, hsm, status, up
from authsim.cluster.cli.logs import logs
from authsim.cluster.cli.provision import provision
from authsim.cluster.cli.safe_text import cell_lines
from authsim.cluster.cli.trust import trust
from authsim.cluster.cli.watch import run_watch
from authsim.cluster.local.state import cluster_dir

console = make_console()


@click.group(help="Run a local multi-node Auth cluster with per-node HSM (SoftHSM2) keys.")
@click.version_option(package_name="authsim", message="%(prog)s %(version)s")
def cli() -> None:
    pass


@cli.command(help="The seed's five steps on a fresh 3-node cluster, narrated; non-zero exit if a step fails.")
@click.option(
    "--dir",
    "directory",
    default=".authsim-demo",
    show_default=True,
    help="the demo's own cluster dir (replaced on every run)",
)
@click.option(
    "--rotation", is_flag=True, help="then rotate the windows CA by phases, with its overrides enabled"
)
def demo(directory: str, rotation: bool) -> None:
    run_demo(Path(directory).absolute(), console, rotation)


@cli.command(
    help="Live view of ca_overrides/TYPE: each new revision, who wrote it, what changed, CAS attempts."
)
@click.argument("resource", shell_complete=completion.override)
@dir_option
@click.option(
    "--count", type=click.IntRange(0), default=0, help="stop after this many new revisions (0: never)"
)
def watch(resource: str, directory: str | None, count: int) -> None:
    kind, _, name = resource.partition("/")
    if kind != "ca_overrides" or not name:
        raise click.UsageError("watch takes ca_overrides/TYPE")
    run_watch(cluster_dir(directory), name, lambda line: console.print(cell_lines(line)), count)


cli.add_command(up)
cli.add_command(status)
cli.add_command(down)
cli.add_command(forget)
cli.add_command(hsm)
cli.add_command(external_ca)
cli.add_command(trust)
cli.add_command(provision)
cli.add_command(logs)


add_examples(cli, "authsim")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(cli, argv, "authsim")


if __name__ == "__main__":
    sys.exit(main())
