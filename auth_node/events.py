"""Events: session starts (SPEC §8, seed step 5) and override writes (audit, issue 13); stored in etcd,
trimmed to a retention, listed in pages, filtered by kind and code."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from authsim.auth_node.issuance import Credential
from authsim.cluster.errors import StoreUnavailableError, ValidationError, quoted
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.store import EtcdStore, Trim
from authsim.cluster.store.keys import events_prefix

log = logging.getLogger(__name__)
DEFAULT_RETENTION = 10_000  # events kept per cluster unless `authsim up --event-retention N` says otherwise
PAGE_EVENTS = 500  # events in one ListEvents reply at most
PAGE_BYTES = 1024 * 1024  # ... and about this many bytes of them (far below gRPC's 4 MiB message limit)
MAX_EVENT_BYTES = 64 * 1024  # a stored event larger than this is listed as one saying so
RECORD_TIMEOUT = 10.0  # seconds an event may take to be recorded before it is given up (and logged)
SESSION, OVERRIDE = "session", "override"  # the kinds of events
OVERRIDE_UPSERT = "cert_auth_override.upsert"  # the reference's event names (RFD 0237)
OVERRIDE_DELETE = "cert_auth_override.delete"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def session_start_event(
    cluster_name: str,
    ca_type: str,
    user: str,
    credential: Credential,
    success: bool,
    reason: str,
    resource_name: str,
    node_name: str,
) -> dict[str, Any]:
    info = CA_TYPES[ca_type]
    code, failure_code = info.session_codes
    record: dict[str, Any] = {
        "ca_override": {
            "active": credential.issuer.override_active,
            "public_key_hash": credential.issuer.key.public_key_hash,
        },
        "cluster_name": cluster_name,
        "code": code if success else failure_code,
        info.resource_field: resource_name,
        "ei": 0,
        "event": info.session_event,
        "sid": str(uuid.uuid4()),
        "success": success,
        "time": _now(),
        "user": user,
        "auth_node": node_name,
    }
    if not success:
        record["error"] = reason
    if credential.not_after_clipped:  # the credential ends with its issuer, before its TTL would
        record["not_after_clipped"] = True
    return record


@dataclass(frozen=True)
class OverrideWrite:
    """One kind of override write as the audit log names it: the reference's event name and code
    (RFD 0237: TCO01I-TCO04I) on success, ours in the same style (W) on refusal (it has none)."""

    event: str
    code: str
    failure_code: str


RESOURCE_WRITE = OverrideWrite(OVERRIDE_UPSERT, "TCO01I", "TCO01W")  # create, upsert, update
ENTRY_WRITE = OverrideWrite(OVERRIDE_UPSERT, "TCO02I", "TCO02W")  # an entry added or changed
ENTRY_DELETE = OverrideWrite(OVERRIDE_UPSERT, "TCO03I", "TCO03W")  # an entry removed
RESOURCE_DELETE = OverrideWrite(OVERRIDE_DELETE, "TCO04I", "TCO04W")  # the resource removed
OVERRIDE_WRITES = {
    "create": RESOURCE_WRITE,
    "upsert": RESOURCE_WRITE,
    "update": RESOURCE_WRITE,
    "delete": RESOURCE_DELETE,
    "create_override": ENTRY_WRITE,
    "update_override": ENTRY_WRITE,
    "delete_override": ENTRY_DELETE,
}


@dataclass(frozen=True)
class OverrideWriteOutcome:
    """What one override write through a node did: the revision it wrote (success) or why it was
    refused; the request id and compare-and-swap attempts either way."""

    request_id: str
    attempts: int
    revision: int = 0
    changed: bool = False
    error: str = ""  # the message the caller got; "" for a success


def override_write_event(
    cluster_name: str,
    node_name: str,
    admin: str,
    operation: str,
    ca_type: str,
    public_key: str,
    outcome: OverrideWriteOutcome,
) -> dict[str, Any]:
    """The audit event of an override write: `operation` (a key of OVERRIDE_WRITES) by `admin` (the
    caller's certificate CN), through `node_name`; `public_key` names the entry of an entry edit."""
    write = OVERRIDE_WRITES[operation]
    success = not outcome.error
    record: dict[str, Any] = {
        "attempts": outcome.attempts,
        "auth_node": node_name,
        "ca_type": ca_type,
        "cluster_name": cluster_name,
        "code": write.code if success else write.failure_code,
        "event": write.event,
        "operation": operation,
        "request_id": outcome.request_id,
        "success": success,
        "time": _now(),
        "uid": str(uuid.uuid4()),
        "user": admin,
    }
    if public_key:
        record["public_key"] = public_key
    if success:
        record |= {"revision": outcome.revision, "changed": outcome.changed}
    else:
        record["error"] = outcome.error
    return record


@dataclass
class Retention:
    """How many events the cluster keeps, and what this node knows of how many there are: a count is
    an O(events) scan in etcd, so a node counts only when the events may be more than `keep` plus a
    slack of 1 % (none below 100): it knows the count at its last trim, and that at most one event was
    added per etcd revision since. The newest `keep` events always stay; between trims, at most the
    slack more do."""

    keep: int
    count: int = -1  # the events counted at `revision` by this node's last trim (-1: not yet counted)
    revision: int = 0

    @property
    def slack(self) -> int:
        return self.keep // 100

    def may_exceed(self, revision: int) -> bool:
        """Whether the events may number more than keep + slack at `revision` (a count is due)."""
        return self.count < 0 or self.count + (revision - self.revision) > self.keep + self.slack

    def counted(self, trim: Trim) -> None:
        if trim.revision >= self.revision:
            self.count, self.revision = trim.kept, trim.revision


async def record_event(
    store: EtcdStore, cluster_name: str, event: dict[str, Any], retention: Retention
) -> None:
    """Store `event` under a key that sorts by recording time, then trim the cluster's events to the
    newest `retention.keep` when they may be over by more than its slack. A trim etcd did not answer is
    left to the next event (the event is stored)."""
    prefix = events_prefix(cluster_name)
    key = f"{prefix}{time.time_ns():020d}-{uuid.uuid4()}"
    revision = await store.create(key, json.dumps(event, sort_keys=True).encode())
    if not retention.may_exceed(revision):
        return
    try:
        retention.counted(await store.trim_prefix(prefix, retention.keep))
    except StoreUnavailableError as e:
        log.warning("events of %s not trimmed to %d this time: %s", cluster_name, retention.keep, e)


class EventRecorder:
    """Records a node's events: on the side for audit events (what they record never waits for them;
    an event that cannot be recorded is a warning in the node's log), or awaited (`record_now`)."""

    def __init__(self, store: EtcdStore, cluster_name: str, retention: int = DEFAULT_RETENTION) -> None:
        self.store = store
        self.cluster_name = cluster_name
        self.retention = Retention(retention)
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, event: dict[str, Any]) -> None:
        task = asyncio.create_task(self._record(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def record_now(self, event: dict[str, Any]) -> None:
        await record_event(self.store, self.cluster_name, event, self.retention)

    async def _record(self, event: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(self.record_now(event), RECORD_TIMEOUT)
        except Exception as e:  # whatever went wrong, the write it records stands: log it and go on
            log.warning(
                "event %s %s not recorded: %s: %s", event.get("code"), event.get("uid"), type(e).__name__, e
            )

    async def drain(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, for the events still being recorded (the node stops)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)


SESSION_EVENTS = frozenset(t.session_event for t in CA_TYPES.values())
OVERRIDE_EVENTS = frozenset({OVERRIDE_UPSERT, OVERRIDE_DELETE})
EVENT_CODES = {
    SESSION: tuple(code for t in CA_TYPES.values() for code in t.session_codes),
    OVERRIDE: tuple(sorted({code for w in OVERRIDE_WRITES.values() for code in (w.code, w.failure_code)})),
}


def event_kind(event: dict[str, Any]) -> str:
    """SESSION or OVERRIDE by the event's name; "" for anything else (a stored value that is no event)."""
    name = event.get("event")
    if name in SESSION_EVENTS:
        return SESSION
    return OVERRIDE if name in OVERRIDE_EVENTS else ""


@dataclass(frozen=True)
class EventFilter:
    """Which events a listing or a follow shows by what they are: of `kind` (SESSION, OVERRIDE) and with
    `code` (any case); "" selects any."""

    kind: str = ""
    code: str = ""

    def checked(self) -> EventFilter:
        """This filter, its code in capitals, once kind and code are ones events have."""
        code = self.code.upper()
        problems = []
        if self.kind not in ("", *EVENT_CODES):
            problems.append(f"kind: unknown event kind {quoted(self.kind)} (known: {', '.join(EVENT_CODES)})")
        known = [c for codes in EVENT_CODES.values() for c in codes]
        if code and code not in known:
            problems.append(f"code: unknown event code {quoted(self.code)} (known: {', '.join(known)})")
        if problems:
            raise ValidationError(problems)
        return EventFilter(self.kind, code)

    def matches(self, event: dict[str, Any]) -> bool:
        return (not self.kind or event_kind(event) == self.kind) and (
            not self.code or event.get("code") == self.code
        )


@dataclass(frozen=True)
class EventQuery:
    """Which events a listing shows: recorded at or after `since_ns` (Unix ns; 0: any time), of those
    `only` selects, only the newest `last` (0: all); `after` and `revision` continue a listing from its
    previous page (which passes the same `only`)."""

    since_ns: int = 0
    last: int = 0
    after: str = ""  # the `next` cursor of the previous page
    revision: int = 0  # the etcd revision the first page was read at; later pages read at it too
    only: EventFilter = EventFilter()


@dataclass(frozen=True)
class EventPage:
    """Events as JSON text, oldest first; `next` continues the listing ("" when this page ends it). With
    a filter, a page may hold no event and still have a `next`: the events it read were not selected."""

    events: list[str]
    next: str
    revision: int


async def list_events(
    store: EtcdStore, cluster_name: str, query: EventQuery, page_events: int = 0
) -> EventPage:
    """One page of the events `query` selects, read from at most `page_events` (0 or more than
    PAGE_EVENTS: PAGE_EVENTS) stored events, and no more than PAGE_BYTES of them unless one event alone
    is larger. The cursor passes every event read, selected or not."""
    problems = [f"{name}: must not be negative, got {value}" for name, value in _counts(query) if value < 0]
    if problems:
        raise ValidationError(problems)
    only = query.only.checked()
    prefix = events_prefix(cluster_name)
    revision = query.revision
    if query.after:
        start = f"{prefix}{query.after}\0"
    else:
        start = f"{prefix}{query.since_ns:020d}" if query.since_ns else ""
        if query.last:
            revision = revision or await store.ping(prefix)
            start = await _newest_start(store, prefix, start, query.last, only, revision)
    page = await store.get_page(prefix, start, min(page_events or PAGE_EVENTS, PAGE_EVENTS), revision)
    events: list[str] = []
    size, read, last_key = 0, 0, ""
    for key, value in page.items:
        event = _shown(key, value.value)
        text = json.dumps(event, sort_keys=True)
        selected = only.matches(event)
        if selected and events and size + len(text) > PAGE_BYTES:
            break
        if selected:
            events.append(text)
            size += len(text)
        read += 1
        last_key = key
    more = page.more or read < len(page.items)
    return EventPage(events, last_key[len(prefix) :] if more else "", page.revision)


async def _newest_start(
    store: EtcdStore, prefix: str, start: str, last: int, only: EventFilter, revision: int
) -> str:
    """The key where the newest `last` events `only` selects from `start` on begin (`start` when there
    are no more than `last`), at `revision`. Without a filter the keys say it; with one, the events
    from `start` on are read once, a page at a time."""
    if only == EventFilter():
        newest = await store.last_keys(prefix, last, start, revision)
        return newest[-1] if len(newest) == last else start
    selected: deque[str] = deque(maxlen=last)
    at = start
    while True:
        page = await store.get_page(prefix, at, PAGE_EVENTS, revision)
        selected.extend(key for key, value in page.items if only.matches(_shown(key, value.value)))
        if not page.more:
            return selected[0] if len(selected) == last else start
        at = f"{page.items[-1][0]}\0"


def _counts(query: EventQuery) -> list[tuple[str, int]]:
    return [("since_unix_ns", query.since_ns), ("limit", query.last), ("revision", query.revision)]


async def follow_events(
    store: EtcdStore, cluster_name: str, after_revision: int, only: EventFilter = EventFilter()
) -> AsyncIterator[tuple[str, int]]:
    """(event JSON, revision) for each event `only` selects recorded after `after_revision` (0: from
    now), in the order they were recorded; retention's deletes are not events. Runs until the caller
    stops iterating."""
    only = only.checked()
    start = after_revision + 1 if after_revision > 0 else None
    async with contextlib.aclosing(store.watch_prefix(events_prefix(cluster_name), start)) as changes:
        async for key, value, revision in changes:
            if value is not None and only.matches(event := _shown(key, value.value)):
                yield json.dumps(event, sort_keys=True), revision


def shown_event(key: str, value: bytes) -> str:
    """A stored event as JSON text (see `_shown`)."""
    return json.dumps(_shown(key, value), sort_keys=True)


def _shown(key: str, value: bytes) -> dict[str, Any]:
    """A stored event as an object. Stored data is not trusted: a value over MAX_EVENT_BYTES, not JSON,
    or not a JSON object is shown as an object naming its key and what is wrong with it."""
    if len(value) > MAX_EVENT_BYTES:
        problem = f"stored event of {len(value)} bytes is over the limit of {MAX_EVENT_BYTES}"
    else:
        try:
            data = json.loads(value)
        except ValueError:
            data, problem = None, "stored event is not JSON"
        else:
            problem = "" if isinstance(data, dict) else "stored event is not a JSON object"
        if not problem:
            return data  # type: ignore[no-any-return]
    return {"error": problem, "key": key}
