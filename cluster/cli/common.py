"""What the CLIs share: one-line errors and a non-zero exit instead of tracebacks, the etcd TLS options,
`--format`.

Exit status of both CLIs: 0 done (`status`: every part healthy); 1 an error, printed as one
`error: ...` line (`status`: a part is not healthy); 2 a usage error: an unknown option or a wrong
value, or a dir without a cluster; 3 a write's outcome is unknown; 130 interrupted (Ctrl-C)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from authsim.cluster.errors import AuthSimError, OutcomeUnknownError, exact_node_commands, one_line
from authsim.cluster.local.state import ClusterState, cluster_dir
from authsim.cluster.resources.yaml_codec import dump_yaml
from authsim.cluster.store import EtcdTLS

_Command = TypeVar("_Command", bound=Callable[..., Any])

UNHEALTHY_EXIT = 1  # `status`: a part of the cluster is not healthy
USAGE_EXIT = 2  # click's own for a usage error; also a dir without a cluster
OUTCOME_UNKNOWN_EXIT = 3  # a write was sent but its answer lost: it may or may not have landed

dir_option = click.option(
    "--dir", "directory", default=None, help="cluster state dir (default $AUTHSIM_DIR or ./.authsim)"
)


def etcd_endpoints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    """An `--etcd` value `host:port[,host:port...]` as a list ([] when not given)."""
    endpoints = [part.strip() for part in (value or "").split(",") if part.strip()]
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise click.BadParameter(f"etcd endpoint {endpoint!r} is not host:port")
    return endpoints


class NoClusterError(click.ClickException):
    """The dir holds no cluster: exit status 2, as for a usage error, printed as `error: ...`."""

    exit_code = USAGE_EXIT

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def cluster_dir_of_cluster(directory: str | None) -> Path:
    """`cluster_dir(directory)`; NoClusterError when it holds no cluster.yaml."""
    path = cluster_dir(directory)
    if not ClusterState.path(path).exists():
        raise NoClusterError(
            f"no cluster in {path} ({ClusterState.path(path).name} missing): run `authsim up --dir {path}`"
        )
    return path


def format_option(default: str) -> Callable[[_Command], _Command]:
    """`--format text|json|yaml`."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json", "yaml"]),
        default=default,
        show_default=True,
        help="text: tables for people; json or yaml: every field, for scripts",
    )


def print_data(data: object, fmt: str) -> None:
    """`data` as JSON or YAML on stdout."""
    click.echo(json.dumps(data, indent=2) if fmt == "json" else dump_yaml(data), nl=fmt == "json")


def make_console() -> Console:
    """A console for tables: the terminal's width; when output is a pipe or a file, $COLUMNS if set,
    else 160 columns."""
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS", "").isdigit()
    return Console(width=160 if piped else None)


def run_cli(group: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a click group; a domain error prints `error: ...` on stderr and exits 1 (3: a write's outcome
    is unknown). An error naming the command to run on another node names it in full (authctl's
    arguments, the node changed); the group gets the arguments as its context's `obj`."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        # without standalone mode, click returns the status of a `click.exceptions.Exit` (`status`)
        returned = group.main(args=args, prog_name=prog_name, standalone_mode=False, obj=args)
    except OutcomeUnknownError as e:
        click.echo(f"error: {exact_node_commands(one_line(str(e)), args)}", err=True)
        return OUTCOME_UNKNOWN_EXIT
    except AuthSimError as e:
        click.echo(f"error: {exact_node_commands(one_line(str(e)), args)}", err=True)
        return 1
    except OSError as e:  # a file named on the command line: missing, unreadable, a directory
        where = f": {e.filename}" if e.filename else ""
        click.echo(f"error: {e.strerror or e}{where}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return returned if isinstance(returned, int) else 0


def etcd_tls_options(command: _Command) -> _Command:
    """The options --etcd-cacert, --etcd-cert and --etcd-key (`authsim up`, `authsim provision`)."""
    options = [
        click.option(
            "--etcd-cacert",
            type=Path,
            default=None,
            help="TLS to --etcd: the CA certificate (PEM) that signed etcd's server certificate",
        ),
        click.option("--etcd-cert", type=Path, default=None, help="TLS to --etcd: client certificate (PEM)"),
        click.option(
            "--etcd-key", type=Path, default=None, help="TLS to --etcd: client certificate's key (PEM)"
        ),
    ]
    for option in reversed(options):  # as if stacked as decorators: the help lists them in this order
        command = option(command)
    return command


def etcd_tls_from_options(cacert: Path | None, cert: Path | None, key: Path | None) -> EtcdTLS | None:
    """The three TLS options as one EtcdTLS, None when none is given; all or none."""
    given = {"--etcd-cacert": cacert, "--etcd-cert": cert, "--etcd-key": key}
    if cacert is None and cert is None and key is None:
        return None
    if cacert is None or cert is None or key is None:
        missing = ", ".join(flag for flag, value in given.items() if value is None)
        raise click.UsageError(f"--etcd-cacert, --etcd-cert and --etcd-key go together; missing {missing}")
    return EtcdTLS(cacert, cert, key)
