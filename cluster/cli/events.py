"""`authctl get events`: session-start and override-write events, newest last, read page by page and
filtered by the node (`--kind`, `--code`); `--follow` streams."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.cli.safe_text import cell, escaped
from authsim.cluster.errors import ValidationError
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.resources.yaml_codec import dump_yaml

COLUMNS = ("TIME", "EVENT", "CODE", "USER", "SUCCESS", "CA OVERRIDE", "NODE")
_AGE = re.compile(r"(\d+)([smhd])")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_unix_ns(text: str, now: float | None = None) -> int:
    """`--since`: an ISO 8601 time (UTC when it names no zone) or an age such as 90s, 15m, 2h, 1d."""
    age = _AGE.fullmatch(text.strip())
    if age:
        seconds = int(age.group(1)) * _AGE_SECONDS[age.group(2)]
        return max(int(((time.time() if now is None else now) - seconds) * 1e9), 0)
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(
            [
                f"since: '{escaped(text)[:80]}' is neither an ISO 8601 time "
                "(2026-12-02T11:00:00Z) nor an age (90s, 15m, 2h, 1d)"
            ]
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(int(when.timestamp() * 1e6) * 1000, 0)


@dataclass(frozen=True)
class EventSelection:
    """Which events `get events` shows: recorded at or after `since_ns` (0: any time), of `kind` and with
    `code` ("": any), the newest `limit` of those (0: all)."""

    since_ns: int = 0
    limit: int = 0
    kind: str = ""
    code: str = ""


def fetch_events(client: NodeClient, selection: EventSelection) -> tuple[list[dict[str, Any]], int]:
    """Every event the node lists for `selection`, page by page, oldest first; and the revision the
    listing read at (the pages read one snapshot). Each page asks for the same kind and code."""
    kind, code = selection.kind, selection.code
    request = pb.ListEventsRequest(
        since_unix_ns=selection.since_ns, limit=selection.limit, kind=kind, code=code
    )
    events: list[dict[str, Any]] = []
    while True:
        reply = client.call("ListEvents", request)
        events += [_parsed(e) for e in reply.events]
        if not reply.next:
            return events, int(reply.revision)
        request = pb.ListEventsRequest(after=reply.next, revision=reply.revision, kind=kind, code=code)


def stream_events(client: NodeClient, after_revision: int, kind: str, code: str) -> Iterator[dict[str, Any]]:
    """Each event of `kind` with `code` ("": any) recorded after `after_revision`, as the node reports
    it; runs until the caller stops."""
    request = pb.FollowEventsRequest(after_revision=after_revision, kind=kind, code=code)
    for reply in client.stream("FollowEvents", request):
        yield from (_parsed(e) for e in reply.events)


def show_events(
    client: NodeClient, console: Console, fmt: str, selection: EventSelection, follow: bool, count: int
) -> None:
    """List the events; with `follow`, keep printing new ones (one line each) until Ctrl-C or `count`."""
    events, revision = fetch_events(client, selection)
    if not follow:
        _print_listing(console, events, fmt)
        return
    for event in events:
        _print_one(console, event, fmt)
    seen = 0
    with contextlib.suppress(KeyboardInterrupt):
        for event in stream_events(client, revision, selection.kind, selection.code):
            _print_one(console, event, fmt)
            seen += 1
            if count and seen >= count:
                return


def event_row(event: dict[str, Any]) -> list[str]:
    """The text columns of one event; a field it lacks (a stored value that is not an event) shows '-'.
    CA OVERRIDE: a session's issuing override; an override write's operation, CA type and entry key."""
    override = event.get("ca_override")
    shown = "-"
    if isinstance(override, dict):
        hash_prefix = str(override.get("public_key_hash"))[:16]
        shown = f"active {hash_prefix}" if override.get("active") is True else "not active"
    elif "operation" in event:
        written = (event.get("operation"), event.get("ca_type"), str(event.get("public_key", ""))[:16])
        shown = " ".join(str(part) for part in written if part)
    success = "yes" if event.get("success") is True else f"no: {event.get('error')}"
    fields = ("time", "event", "code", "user")
    return [
        *(str(event.get(f, "-")) for f in fields),
        success,
        shown,
        str(event.get("auth_node", "-")),
    ]


def _print_listing(console: Console, events: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(events, indent=2, sort_keys=True))
    elif fmt == "yaml":
        click.echo(dump_yaml(events), nl=False)
    else:
        table = Table(*COLUMNS)
        for event in events:
            table.add_row(*(cell(c) for c in event_row(event)))
        console.print(table)


def _print_one(console: Console, event: dict[str, Any], fmt: str) -> None:
    """One event as `--follow` prints it: a JSON line, a YAML list item, or a line of text columns."""
    if fmt == "json":
        click.echo(json.dumps(event, sort_keys=True))
    elif fmt == "yaml":
        click.echo(dump_yaml([event]), nl=False)
    else:
        click.echo("  ".join(escaped(c) for c in event_row(event)))


def _parsed(text: str) -> dict[str, Any]:
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {"error": "the node sent an event that is not a JSON object"}
