"""Session-start events that scale: retention, listing in pages, --follow, text output that is escaped.

Real etcd and, for the record path and the CLI, a real 2-node cluster. Long histories are written
straight into etcd (the path under test is listing); recording goes through real `exercise` calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from rich.console import Console
from rich.table import Table

from authsim.auth_node.events import (
    MAX_EVENT_BYTES,
    PAGE_BYTES,
    EventQuery,
    Retention,
    list_events,
    record_event,
    shown_event,
)
from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.cli.authsim import main as authsim_main
from authsim.cluster.cli.events import since_unix_ns
from authsim.cluster.cli.lifecycle import print_status
from authsim.cluster.cli.runner import run_in_process
from authsim.cluster.cli.safe_text import cell, escaped
from authsim.cluster.cli.watch import describe_change
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import processes
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.state import ClusterState, EtcdEntry
from authsim.cluster.local.status import ClusterStatus, HeldKeyRow, NodeRow
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride
from authsim.cluster.store import EtcdStore, EtcdTLS, Trim
from authsim.cluster.store.keys import events_prefix

RETENTION = 4  # the test cluster keeps this many events
FOLLOW_MARKER = "authsim.cluster.cli.authctl"
T = TypeVar("T")
HOSTILE_USERS = ["[/]", "[bold]x", "esc\x1b[31mred", "bell\x07", "rtl\u202eevil"]


def event_at(when_ns: int, user: str = "alice", node: str = "node1", pad: str = "") -> dict[str, Any]:
    """A session-start event as a node records it, at `when_ns`."""
    time_text = dt.datetime.fromtimestamp(when_ns / 1e9, dt.timezone.utc).isoformat(timespec="milliseconds")
    event = {
        "ca_override": {"active": False, "public_key_hash": "ab" * 32},
        "cluster_name": "mycluster",
        "code": "TDB00I",
        "db_name": "postgres",
        "ei": 0,
        "event": "db.session.start",
        "sid": str(uuid.uuid4()),
        "success": True,
        "time": time_text,
        "user": user,
        "auth_node": node,
    }
    if pad:
        event["error"] = pad
    return event


async def write_events(store: EtcdStore, cluster: str, events: list[tuple[int, dict[str, Any]]]) -> None:
    """Store events under the keys a node gives them, straight into etcd (no retention applies)."""
    prefix = events_prefix(cluster)
    for start in range(0, len(events), 256):
        await asyncio.gather(
            *(
                store.create(f"{prefix}{when:020d}-{e['sid']}", json.dumps(e, sort_keys=True).encode())
                for when, e in events[start : start + 256]
            )
        )


async def all_pages(store: EtcdStore, cluster: str, query: EventQuery, page_events: int) -> list[list[str]]:
    pages = []
    while True:
        page = await list_events(store, cluster, query, page_events)
        pages.append(page.events)
        if not page.next:
            return pages
        query = EventQuery(after=page.next, revision=page.revision)


# --- the store and the node's event functions, on the session etcd ---


async def test_concurrent_recorders_leave_exactly_the_newest_retention(
    etcd_server: EtcdServer, etcd_tls: EtcdTLS, key_prefix: str, store: EtcdStore
) -> None:
    """Four clients (as four nodes) record 120 events at once with retention 7: exactly 7 remain,
    the 7 newest keys; the trims that overlapped deleted nothing newer."""
    cluster = key_prefix.strip("/").replace("/", "-")
    recorders = [EtcdStore([etcd_server.endpoint], tls=etcd_tls) for _ in range(4)]
    for recorder in recorders:
        await recorder.connect()
    try:
        retentions = {id(r): Retention(7) for r in recorders}  # each node's own

        async def record(recorder: EtcdStore, n: int) -> None:
            for _ in range(n):
                await record_event(recorder, cluster, event_at(time.time_ns()), retentions[id(recorder)])

        await asyncio.gather(*(record(r, 30) for r in recorders))
        recorded = await store.get_prefix(events_prefix(cluster))
        assert len(recorded) == 7
        # every later key is newer than every kept one: write 5 more, the oldest 5 of the 7 go
        kept = [k for k, _ in recorded]
        await asyncio.gather(*(record(r, 1) for r in recorders[:1] * 5))
        now = [k for k, _ in await store.get_prefix(events_prefix(cluster))]
        assert len(now) == 7 and now[:2] == kept[5:]
    finally:
        for recorder in recorders:
            await recorder.close()
        await store.delete_prefix(events_prefix(cluster))


async def test_a_node_counts_its_events_only_when_they_may_exceed_the_retention_by_its_slack(
    key_prefix: str, store: EtcdStore
) -> None:
    """Retention 200 keeps up to 2 more between trims: 250 events by one node leave the newest 200 to
    202, and the node counted (a trim) far fewer times than it recorded (about once per 3 events once
    full, where it used to count after every event)."""
    cluster = key_prefix.strip("/").replace("/", "-") + "-slack"
    trims: list[Trim] = []

    class CountingStore(EtcdStore):
        async def trim_prefix(self, prefix: str, keep: int) -> Trim:
            trims.append(await super().trim_prefix(prefix, keep))
            return trims[-1]

    retention = Retention(200)
    assert retention.slack == 2
    async with CountingStore(store.endpoints, tls=store.tls) as node:
        try:
            for n in range(250):
                await record_event(node, cluster, event_at(time.time_ns(), user=f"u{n}"), retention)
            kept = [json.loads(v.value)["user"] for _, v in await store.get_prefix(events_prefix(cluster))]
        finally:
            await store.delete_prefix(events_prefix(cluster))
    assert 200 <= len(kept) <= 202 and kept[-200:] == [f"u{n}" for n in range(50, 250)]
    assert len(trims) < 40


async def test_trim_of_a_long_excess_deletes_the_oldest_in_one_go(key_prefix: str, store: EtcdStore) -> None:
    """More keys over the retention than one probe reads (64): the cutoff is read at the probe's revision."""
    prefix = f"{key_prefix}trim/"
    for start in range(0, 300, 100):
        await asyncio.gather(*(store.create(f"{prefix}{i:05d}", b"x") for i in range(start, start + 100)))
    trimmed = await store.trim_prefix(prefix, 10)
    assert (trimmed.deleted, trimmed.kept) == (290, 10)
    assert [k for k, _ in await store.get_prefix(prefix)] == [f"{prefix}{i:05d}" for i in range(290, 300)]
    assert (await store.trim_prefix(prefix, 10)).deleted == 0


async def test_pages_are_ordered_newest_last_and_select_since_and_limit(
    key_prefix: str, store: EtcdStore
) -> None:
    cluster = key_prefix.strip("/").replace("/", "-")
    base = 1_700_000_000 * 10**9
    events = [(base + i * 10**9, event_at(base + i * 10**9, user=f"u{i:03d}")) for i in range(250)]
    try:
        await write_events(store, cluster, events)
        pages = await all_pages(store, cluster, EventQuery(), page_events=40)
        assert [len(p) for p in pages] == [40] * 6 + [10]
        users = [json.loads(e)["user"] for page in pages for e in page]
        assert users == [f"u{i:03d}" for i in range(250)]  # oldest first, newest last, nothing twice

        since = EventQuery(since_ns=base + 200 * 10**9)
        users = [json.loads(e)["user"] for p in await all_pages(store, cluster, since, 40) for e in p]
        assert users == [f"u{i:03d}" for i in range(200, 250)]

        newest = [
            json.loads(e)["user"] for p in await all_pages(store, cluster, EventQuery(last=45), 40) for e in p
        ]
        assert newest == [f"u{i:03d}" for i in range(205, 250)]

        both = EventQuery(since_ns=base + 10 * 10**9, last=300)  # fewer than asked for: all since
        assert len([e for p in await all_pages(store, cluster, both, 40) for e in p]) == 240

        # pages read one snapshot: an event recorded between pages is not in this listing
        first = await list_events(store, cluster, EventQuery(), 100)
        later = base + 10**12
        await write_events(store, cluster, [(later, event_at(later, user="late"))])
        rest = await all_pages(store, cluster, EventQuery(after=first.next, revision=first.revision), 100)
        assert "late" not in [json.loads(e)["user"] for p in rest for e in p]
        assert len(first.events) + sum(len(p) for p in rest) == 250
    finally:
        await store.delete_prefix(events_prefix(cluster))


async def test_a_page_stays_far_below_the_grpc_limit_and_bad_stored_values_are_named(
    key_prefix: str, store: EtcdStore
) -> None:
    cluster = key_prefix.strip("/").replace("/", "-")
    prefix = events_prefix(cluster)
    base = 1_700_000_000 * 10**9
    fat = [(base + i, event_at(base + i, pad="p" * 60_000)) for i in range(40)]  # 40 x 60 kB = 2.4 MB
    try:
        await write_events(store, cluster, fat)
        pages = await all_pages(store, cluster, EventQuery(), page_events=0)
        assert len(pages) >= 3 and sum(len(p) for p in pages) == 40
        assert all(sum(len(e) for e in p) <= PAGE_BYTES for p in pages)

        await store.delete_prefix(prefix)
        await store.create(f"{prefix}1-a", b"\xff not json")
        await store.create(f"{prefix}2-b", b"[1, 2]")
        await store.create(f"{prefix}3-c", b"{" + b" " * MAX_EVENT_BYTES + b"}")
        listed = [json.loads(e) for e in (await list_events(store, cluster, EventQuery())).events]
        assert [e["error"] for e in listed] == [
            "stored event is not JSON",
            "stored event is not a JSON object",
            f"stored event of {MAX_EVENT_BYTES + 2} bytes is over the limit of {MAX_EVENT_BYTES}",
        ]
        assert [e["key"] for e in listed] == [f"{prefix}1-a", f"{prefix}2-b", f"{prefix}3-c"]
        assert json.loads(shown_event("k", b'{"user": "\\u001b"}')) == {"user": "\x1b"}
    finally:
        await store.delete_prefix(prefix)


# --- the text helper every CLI table uses ---


def test_escaped_shows_control_characters_and_leaves_markup_as_written() -> None:
    assert escaped("esc\x1b[31mred") == "esc\\x1b[31mred"
    assert escaped("bell\x07 del\x7f nl\n c1\x9b") == "bell\\x07 del\\x7f nl\\x0a c1\\x9b"
    assert escaped("rtl\u202eevil \u2066x\u2069") == "rtl\\u202eevil \\u2066x\\u2069"
    assert escaped("[/] [bold]x café 東京") == "[/] [bold]x café 東京"
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    table = Table("USER")
    for user in HOSTILE_USERS:
        table.add_row(cell(user))
    console.print(table)
    console.print(cell("[/] after a table"))
    text = console.export_text()
    assert "[/]" in text and "[bold]x" in text and "esc\\x1b[31mred" in text and "bell\\x07" in text
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text


def test_watch_lines_escape_what_etcd_holds() -> None:
    after = CertAuthorityOverride(
        ca_type="windows",
        cluster_name="mycluster",
        certificate_overrides=(CertificateOverride(public_key="\x1b[2J" + "a" * 60, disabled=True),),
    )
    [line] = describe_change(None, after, lambda _: "node\x07[/]")
    assert "\x1b" not in line and "\x07" not in line
    assert line.startswith("+ \\x1b[2J") and "node\\x07[/]" in line


def test_status_table_escapes_names_from_the_cluster_files(capsys: pytest.CaptureFixture[str]) -> None:
    state = ClusterState("[/]c\x1b[2J", EtcdEntry(endpoints=["127.0.0.1:2379"], embedded=False))
    row = NodeRow(
        "[bold]n\x07", "127.0.0.1:1", None, "SERVING", "h\u202e", [HeldKeyRow("windows", "active", "ab" * 32)]
    )
    print_status(ClusterStatus(state, None, [row]))
    out = capsys.readouterr().out
    assert "[/]c\\x1b[2J" in out and "[bold]n\\x07" in out and "h\\u202e" in out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out


def test_since_takes_a_time_or_an_age() -> None:
    assert since_unix_ns("2026-12-02T11:00:00Z") == 1_796_209_200 * 10**9
    assert since_unix_ns("2026-12-02T11:00:00") == 1_796_209_200 * 10**9  # no zone: UTC
    assert since_unix_ns("2026-12-02T12:00:00+01:00") == 1_796_209_200 * 10**9
    assert since_unix_ns("15m", now=1000.0) == 100 * 10**9
    assert since_unix_ns("2h", now=10_000.0) == 2800 * 10**9


# --- a real cluster: the record path, the RPC pages, the CLI ---


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """2 nodes that both hold an active db_client key, keeping the newest RETENTION events."""
    with local_cluster(tmp_path_factory.mktemp("ev") / "c", nodes=2, event_retention=RETENTION) as running:
        rotated = running.authctl("auth", "rotate", "--type=db_client")
        assert rotated.exit_code == 0, rotated.stderr
        yield running


@dataclass
class ClusterEtcd:
    """A store on a test cluster's etcd and the loop it runs on (the tests around it are synchronous)."""

    store: EtcdStore
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)


@pytest.fixture
def etcd(cluster: LocalCluster) -> Iterator[ClusterEtcd]:
    """The cluster's etcd, for writing histories straight into it; no events before or after a test."""
    state = cluster.state
    prefix = events_prefix(state.cluster_name)
    etcd = ClusterEtcd(EtcdStore(state.etcd.endpoints, tls=state.etcd.tls), asyncio.new_event_loop())
    try:
        etcd.run(etcd.store.connect())
        etcd.run(etcd.store.delete_prefix(prefix))
        yield etcd
        etcd.run(etcd.store.delete_prefix(prefix))
    finally:
        etcd.run(etcd.store.close())
        etcd.loop.close()


def exercise(cluster: LocalCluster, node: str, user: str) -> dict[str, Any]:
    """A real Exercise call on `node` (through the API, not the in-process CLI: safe from a thread)."""
    with cluster.client(node) as client:
        reply = client.call("Exercise", pb.ExerciseRequest(type="db_client", user=user))
    event: dict[str, Any] = json.loads(reply.event)
    return event


def follow_process(cluster: LocalCluster, fmt: str) -> subprocess.Popen[str]:
    """`authctl get events --follow --count 1` as its own process, reading its output as it comes."""
    argv = [sys.executable, "-m", FOLLOW_MARKER, "--dir", str(cluster.directory), "get", "events"]
    return subprocess.Popen(
        [*argv, "--follow", "--count", "1", "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_follow(process: subprocess.Popen[str]) -> None:
    processes.stop(process.pid, FOLLOW_MARKER)
    process.wait(timeout=10)


def test_a_history_past_4_mib_is_listed_in_pages_newest_last(
    cluster: LocalCluster, etcd: ClusterEtcd
) -> None:
    """12,000 events (4.6 MB of JSON; one reply of them failed with RESOURCE_EXHAUSTED before)."""
    base = (time.time_ns() // 10**9 - 10_000) * 10**9  # whole seconds: --since below is exact
    events = [(base + i * 10**6, event_at(base + i * 10**6, user=f"user{i:05d}")) for i in range(12_000)]
    etcd.run(write_events(etcd.store, "mycluster", events))
    assert sum(len(json.dumps(e, sort_keys=True)) for _, e in events) > 4 * 1024 * 1024  # gRPC max

    listed = cluster.authctl("get", "events", "--format", "json")
    assert listed.exit_code == 0, listed.stderr
    users = [e["user"] for e in json.loads(listed.stdout)]
    assert users == [f"user{i:05d}" for i in range(12_000)]

    newest = cluster.authctl("get", "events", "--format", "json", "--limit", "3", node="node2")
    assert newest.exit_code == 0, newest.stderr
    assert [e["user"] for e in json.loads(newest.stdout)] == ["user11997", "user11998", "user11999"]

    since = dt.datetime.fromtimestamp((base + 11_990 * 10**6) / 1e9, dt.timezone.utc).isoformat()
    recent = cluster.authctl("get", "events", "--format", "yaml", "--since", since)
    assert recent.exit_code == 0, recent.stderr
    assert [e["user"] for e in yaml.safe_load(recent.stdout)] == [
        f"user{i:05d}" for i in range(11_990, 12_000)
    ]
    both = cluster.authctl("get", "events", "--format", "json", "--since", since, "--limit", "2")
    assert [e["user"] for e in json.loads(both.stdout)] == ["user11998", "user11999"]

    with cluster.client("node1") as client:  # one reply is a page, far below gRPC's 4 MiB
        reply = client.call("ListEvents", pb.ListEventsRequest())
        assert reply.next and reply.ByteSize() < 2 * 1024 * 1024
        small = client.call("ListEvents", pb.ListEventsRequest(page_size=100, limit=150))
        assert [json.loads(e)["user"] for e in small.events] == [
            f"user{i:05d}" for i in range(11_850, 11_950)
        ]
        rest = client.call("ListEvents", pb.ListEventsRequest(after=small.next, revision=small.revision))
        assert len(rest.events) == 50 and not rest.next


def test_concurrent_exercises_on_two_nodes_keep_exactly_the_newest(
    cluster: LocalCluster, etcd: ClusterEtcd
) -> None:
    """Real `Exercise` calls, three at a time on each node, with retention 4: exactly the 4 newest stay."""
    layout = ClusterLayout(cluster.directory)
    assert yaml.safe_load(layout.state_file.read_text())["event_retention"] == RETENTION
    for node in cluster.node_names:
        assert yaml.safe_load(layout.node(node).config.read_text())["event_retention"] == RETENTION
    replies: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    def three_exercises(node: str) -> None:
        try:
            replies.extend(exercise(cluster, node, "alice") for _ in range(3))
        except BaseException as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=three_exercises, args=(n,)) for n in cluster.node_names * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert len(replies) == 12 and {e["auth_node"] for e in replies} == {"node1", "node2"}

    kept = cluster.events()
    assert len(kept) == RETENTION
    dropped = {e["sid"] for e in replies} - {e["sid"] for e in kept}
    assert {e["sid"] for e in kept} <= {e["sid"] for e in replies} and len(dropped) == 12 - RETENTION
    assert min(e["time"] for e in kept) >= max(e["time"] for e in replies if e["sid"] in dropped)
    assert [e["time"] for e in kept] == sorted(e["time"] for e in kept)


def test_follow_prints_an_event_recorded_after_it_started(cluster: LocalCluster, etcd: ClusterEtcd) -> None:
    etcd.run(
        write_events(etcd.store, "mycluster", [(time.time_ns(), event_at(time.time_ns(), user="before"))])
    )
    follow = follow_process(cluster, "json")
    try:
        assert follow.stdout is not None
        assert json.loads(follow.stdout.readline())["user"] == "before"  # the listing, then it follows
        event = exercise(cluster, "node2", "[/]after")
        out, err = follow.communicate(timeout=20)
        assert follow.returncode == 0, err
        [line] = out.splitlines()
        followed = json.loads(line)
        assert followed["sid"] == event["sid"] and followed["user"] == "[/]after"
    finally:
        stop_follow(follow)


def test_text_output_escapes_markup_and_control_characters(cluster: LocalCluster, etcd: ClusterEtcd) -> None:
    """`[/]` through a real exercise (a legal name that crashed the table), the rest stored straight in
    etcd (the API may refuse them; what is stored must still print safely), and one that is not JSON."""
    exercise(cluster, "node1", "[/]")
    now = time.time_ns()
    hostile = [(now + i, event_at(now + i, user=u)) for i, u in enumerate(HOSTILE_USERS[1:])]
    etcd.run(write_events(etcd.store, "mycluster", hostile))
    etcd.run(etcd.store.create(f"{events_prefix('mycluster')}{now + 99:020d}-x", b"\x1b]0;pwned\x07"))
    shown_users = ["[/]", "[bold]x", "esc\\x1b[31mred", "bell\\x07", "rtl\\u202eevil"]

    table = cluster.authctl("get", "events", "--format", "text")
    assert table.exit_code == 0, table.stderr
    assert "Traceback" not in table.stderr and "MarkupError" not in table.stderr
    assert "\x1b" not in table.stdout and "\x07" not in table.stdout and "\u202e" not in table.stdout
    assert all(user in table.stdout for user in shown_users), table.stdout
    assert "stored event is not JSON" in table.stdout

    follow = follow_process(cluster, "text")  # one line per event: the listing, then a new one
    try:
        assert follow.stdout is not None
        listed = [follow.stdout.readline() for _ in range(6)]
        assert "stored event is not JSON" in listed[-1]
        exercise(cluster, "node1", "[bold]late")
        out, err = follow.communicate(timeout=20)
        assert follow.returncode == 0 and "Traceback" not in err, err
    finally:
        stop_follow(follow)
    lines = "".join(listed) + out
    assert "\x1b" not in lines and "\x07" not in lines and "\u202e" not in lines
    assert all(user in lines for user in shown_users), lines
    assert out.count("\n") == 1 and "[bold]late" in out


def test_bad_options_are_one_line_errors(cluster: LocalCluster) -> None:
    bad_since = cluster.authctl("get", "events", "--since", "yesterday\x1b")
    assert bad_since.exit_code == 1
    assert bad_since.stderr.startswith("error: since: 'yesterday\\x1b' is neither an ISO 8601 time")
    assert len(bad_since.stderr.strip().splitlines()) == 1
    count_alone = cluster.authctl("get", "events", "--count", "2")
    assert count_alone.exit_code == 2 and "--count goes with --follow" in count_alone.stderr
    not_events = cluster.authctl("get", "cas/windows", "--limit", "2")
    assert not_events.exit_code == 2 and "options of `get events`" in not_events.stderr


def test_event_retention_below_one_is_refused_before_anything_starts(tmp_path: Path) -> None:
    refused = run_in_process(authsim_main, ["up", "--dir", str(tmp_path / "c"), "--event-retention", "0"])
    assert refused.exit_code == 2 and "--event-retention" in refused.stderr
    assert not (tmp_path / "c").exists()
