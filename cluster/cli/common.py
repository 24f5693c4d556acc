"""What the CLIs share: one-line errors and a non-zero exit instead of tracebacks, the etcd TLS options."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from authsim.cluster.errors import AuthSimError, OutcomeUnknownError, one_line
from authsim.cluster.store import EtcdTLS

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


def make_console() -> Console:
    """A console for tables: the terminal's width, or 160 columns when output is a pipe or a file."""
    return Console(width=None if sys.stdout.isatty() else 160)


def run_cli(group: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a click group; a domain error prints `error: ...` on stderr and exits 1 (3: a write's outcome
    is unknown)."""
    try:
        group.main(args=list(argv) if argv is not None else None, prog_name=prog_name, standalone_mode=False)
    except OutcomeUnknownError as e:
        click.echo(f"error: {one_line(str(e))}", err=True)
        return OUTCOME_UNKNOWN_EXIT
    except AuthSimError as e:
        click.echo(f"error: {one_line(str(e))}", err=True)
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
    return 0


_Command = TypeVar("_Command", bound=Callable[..., Any])


def etcd_tls_options(command: _Command) -> _Command:
    """The options --etcd-cacert, --etcd-cert and --etcd-key (`authsim up`, `authsim provision`)."""
    options = [
        click.option(
            "--etcd-cacert", type=Path, default=None, help="TLS to --etcd: CA certificate that signed etcd's"
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
