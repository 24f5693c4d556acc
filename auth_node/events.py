"""Session-start events (SPEC §8, seed step 5): stored in etcd, trimmed to a retention, listed in pages."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from authsim.auth_node.issuance import Credential
from authsim.cluster.errors import StoreUnavailableError, ValidationError
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.keys import events_prefix

log = logging.getLogger(__name__)
DEFAULT_RETENTION = 10_000  # events kept per cluster unless `authsim up --event-retention N` says otherwise
PAGE_EVENTS = 500  # events in one ListEvents reply at most
PAGE_BYTES = 1024 * 1024  # ... and about this many bytes of them (far below gRPC's 4 MiB message limit)
MAX_EVENT_BYTES = 64 * 1024  # a stored event larger than this is listed as one saying so


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
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "user": user,
        "auth_node": node_name,
    }
    if not success:
        record["error"] = reason
    if credential.not_after_clipped:  # the credential ends with its issuer, before its TTL would
        record["not_after_clipped"] = True
    return record


async def record_event(
    store: EtcdStore, cluster_name: str, event: dict[str, Any], retention: int = DEFAULT_RETENTION
) -> None:
    """Store `event` under a key that sorts by recording time, then trim the cluster's events to the
    newest `retention`. A trim etcd did not answer is left to the next event (the event is stored)."""
    prefix = events_prefix(cluster_name)
    await store.create(
        f"{prefix}{time.time_ns():020d}-{event['sid']}", json.dumps(event, sort_keys=True).encode()
    )
    try:
        await store.trim_prefix(prefix, retention)
    except StoreUnavailableError as e:
        log.warning("events of %s not trimmed to %d this time: %s", cluster_name, retention, e)


@dataclass(frozen=True)
class EventQuery:
    """Which events a listing shows: recorded at or after `since_ns` (Unix ns; 0: any time), only the
    newest `last` of those (0: all); `after` and `revision` continue a listing from its previous page."""

    since_ns: int = 0
    last: int = 0
    after: str = ""  # the `next` cursor of the previous page
    revision: int = 0  # the etcd revision the first page was read at; later pages read at it too


@dataclass(frozen=True)
class EventPage:
    """Events as JSON text, oldest first; `next` continues the listing ("" when this page ends it)."""

    events: list[str]
    next: str
    revision: int


async def list_events(
    store: EtcdStore, cluster_name: str, query: EventQuery, page_events: int = 0
) -> EventPage:
    """One page of the events `query` selects: at most `page_events` (0 or more than PAGE_EVENTS:
    PAGE_EVENTS) events, and no more than PAGE_BYTES of them unless one event alone is larger."""
    problems = [f"{name}: must not be negative, got {value}" for name, value in _counts(query) if value < 0]
    if problems:
        raise ValidationError(problems)
    prefix = events_prefix(cluster_name)
    revision = query.revision
    if query.after:
        start = f"{prefix}{query.after}\0"
    else:
        start = f"{prefix}{query.since_ns:020d}" if query.since_ns else ""
        if query.last:
            revision = revision or await store.ping(prefix)
            newest = await store.last_keys(prefix, query.last, start, revision)
            if len(newest) == query.last:
                start = newest[-1]
    page = await store.get_page(prefix, start, min(page_events or PAGE_EVENTS, PAGE_EVENTS), revision)
    events: list[str] = []
    size, last_key = 0, ""
    for key, value in page.items:
        text = shown_event(key, value.value)
        if events and size + len(text) > PAGE_BYTES:
            break
        events.append(text)
        size += len(text)
        last_key = key
    more = page.more or len(events) < len(page.items)
    return EventPage(events, last_key[len(prefix) :] if more else "", page.revision)


def _counts(query: EventQuery) -> list[tuple[str, int]]:
    return [("since_unix_ns", query.since_ns), ("limit", query.last), ("revision", query.revision)]


async def follow_events(
    store: EtcdStore, cluster_name: str, after_revision: int
) -> AsyncIterator[tuple[str, int]]:
    """(event JSON, revision) for each event recorded after `after_revision` (0: from now), in the order
    they were recorded; retention's deletes are not events. Runs until the caller stops iterating."""
    start = after_revision + 1 if after_revision > 0 else None
    async with contextlib.aclosing(store.watch_prefix(events_prefix(cluster_name), start)) as changes:
        async for key, value, revision in changes:
            if value is not None:
                yield shown_event(key, value.value), revision


def shown_event(key: str, value: bytes) -> str:
    """A stored event as JSON text. Stored data is not trusted: a value over MAX_EVENT_BYTES, not JSON,
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
            return json.dumps(data, sort_keys=True)
    return json.dumps({"error": problem, "key": key}, sort_keys=True)
