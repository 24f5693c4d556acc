"""`authsim logs`: read a node's, etcd's, a target's or a real server's log by name, or follow it."""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path

import click

from authsim.cluster.cli import completion
from authsim.cluster.cli.common import dir_option
from authsim.cluster.errors import NotFoundError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local.state import cluster_dir

FOLLOW_INTERVAL = 0.2  # seconds between looks at a followed log


def last_lines(path: Path, count: int) -> list[str]:
    with path.open(errors="replace") as lines:
        return list(deque(lines, maxlen=count))


def follow(path: Path) -> None:
    """Print what is appended to `path` until interrupted, also across a rotation (the file replaced by
    a new one, or cut shorter)."""
    handle = path.open(errors="replace")
    handle.seek(0, os.SEEK_END)
    while True:
        line = handle.readline()
        if line:
            click.echo(line, nl=False)
            continue
        time.sleep(FOLLOW_INTERVAL)
        try:
            now = path.stat()
        except FileNotFoundError:
            continue
        if now.st_ino != os.fstat(handle.fileno()).st_ino or now.st_size < handle.tell():
            handle.close()
            handle = path.open(errors="replace")


@click.command(
    help="Show the end of a log: NAME is a node (node1), etcd, desktop, db (the targets), kdc or "
    "postgres (their servers). Without NAME, list the logs with their paths and sizes.\n\n"
    "Example: authsim logs node2 --lines 20 --follow"
)
@click.argument("name", required=False, shell_complete=completion.log_names)
@dir_option
@click.option("--lines", "-n", type=click.IntRange(0), default=50, show_default=True, help="lines to show")
@click.option(
    "--follow", "-f", "keep_following", is_flag=True, help="keep printing what is appended, until Ctrl-C"
)
def logs(name: str | None, directory: str | None, lines: int, keep_following: bool) -> None:
    found = ClusterLayout(cluster_dir(directory)).logs()
    if name is None:
        for label, path in found.items():
            size = f"{path.stat().st_size:,} bytes" if path.exists() else "not written yet"
            click.echo(f"{label:<10} {path}  ({size})")
        return
    if name not in found:
        raise NotFoundError(f"no log named {name!r} (known: {', '.join(found)})")
    path = found[name]
    if not path.exists():
        raise NotFoundError(f"{name}'s log {path} is not written yet")
    for line in last_lines(path, lines):
        click.echo(line, nl=False)
    if keep_following:
        follow(path)
