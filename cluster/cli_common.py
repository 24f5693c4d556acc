"""What both CLIs share: one-line errors and a non-zero exit instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
from rich.console import Console

from cluster.errors import AuthSimError


def make_console() -> Console:
    """A console for tables: the terminal's width, or 160 columns when output is a pipe or a file."""
    return Console(width=None if sys.stdout.isatty() else 160)


def run_cli(group: click.Group, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a click group; a domain error prints `error: ...` on stderr and exits 1."""
    try:
        group.main(args=list(argv) if argv is not None else None, prog_name=prog_name, standalone_mode=False)
    except AuthSimError as e:
        click.echo(f"error: {e}", err=True)
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
