"""Writers of one key take turns (issue 17, design E): a writer whose compare-and-swap failed waits in the
key's queue, shown its turn by a real node watch (ClusterView) on a real etcd, in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from authsim.auth_node.cluster_view import ClusterView
from authsim.cluster.store import EtcdStore, Versioned
from authsim.cluster.store.keys import (
    cluster_prefix,
    crl_key,
    crl_tickets_prefix,
    override_key,
    override_tickets_prefix,
    queue_prefix,
)
from authsim.cluster.store.queue import STALL, Session, WriteQueue


@contextlib.asynccontextmanager
async def watched(store: EtcdStore) -> AsyncIterator[tuple[str, ClusterView, Session]]:
    """A cluster name of its own, a running view of it and a node session holding a lease; its keys
    and tickets deleted after."""
    cluster = f"q{uuid.uuid4().hex[:12]}"
    view, session = ClusterView(store, cluster), Session(store)
    tasks = [asyncio.create_task(view.run()), asyncio.create_task(session.run())]
    try:
        await view.wait_ready(10)
        await until(lambda: session.lease != 0)
        yield cluster, view, session
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for prefix in (cluster_prefix(cluster), queue_prefix(cluster)):
            await store.delete_prefix(prefix)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def appending(item: bytes) -> Callable[[Versioned | None, Versioned | None], bytes]:
    """An update function adding `item` to the value."""

    def add(current: Versioned | None, _: Versioned | None) -> bytes:
        return (current.value if current else b"") + item

    return add


async def test_a_writer_behind_a_dead_writers_ticket_lands_after_one_stall_and_takes_it_out(
    store: EtcdStore,
) -> None:
    """The first ticket in the queue belongs to a writer that died while queued (its lease still
    alive). A writer whose CAS fails waits behind it, sees no update for a stall period, takes that
    ticket out and lands on its 2nd attempt; no ticket is left."""
    async with watched(store) as (cluster, view, session):
        key, tickets = override_key(cluster, "windows"), override_tickets_prefix(cluster, "windows")
        stale = await store.get(key)
        await store.create(key, b"a")  # the value the writer holds (absent) is stale: its 1st CAS fails
        dead = await store.grant_lease(10)
        await store.put_leased(f"{tickets}dead-host/r1", b"", dead)
        queue = WriteQueue(store, session, view, tickets, f"{tickets}host-a/r2")
        started = time.perf_counter()
        result = await store.update_guarded(key, None, appending(b"b"), known=(stale, None), queue=queue)
        elapsed = time.perf_counter() - started
        assert (result.changed, result.attempts) == (True, 2)
        assert elapsed >= STALL
        stored = await store.get(key)
        assert stored is not None and stored.value == b"ab"
        assert await store.get_prefix(tickets) == []
        await store.revoke_lease(dead)


QUEUED_KEYS = {  # the keys writers queue for: (key, its queue's tickets prefix)
    "override": lambda cluster: (
        override_key(cluster, "windows"),
        override_tickets_prefix(cluster, "windows"),
    ),
    "crl": lambda cluster: (crl_key(cluster, "windows"), crl_tickets_prefix(cluster, "windows")),
}


@pytest.mark.parametrize("kind", QUEUED_KEYS)
async def test_writers_at_once_take_at_most_two_attempts_and_leave_no_ticket(
    store: EtcdStore, kind: str
) -> None:
    """Eight writers of an override (or of a CRL resource: its holders after a change) start from the
    same (stale) value at once: one lands at once, every other is enqueued by its failed Txn and lands
    on its 2nd attempt, after the writers ahead of it, shown by the watch: no one waits out a stall."""
    async with watched(store) as (cluster, view, session):
        key, tickets = QUEUED_KEYS[kind](cluster)
        writers = [
            store.update_guarded(
                key,
                None,
                appending(bytes([ord("a") + i])),
                known=(None, None),
                queue=WriteQueue(store, session, view, tickets, f"{tickets}host/{i}", stall=1.0),
            )
            for i in range(8)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*writers)
        assert time.perf_counter() - started < 1.0  # the stall period
        assert sorted(r.attempts for r in results) == [1] + [2] * 7
        stored = await store.get(key)
        assert stored is not None and sorted(stored.value) == sorted(b"abcdefgh")
        assert await store.get_prefix(tickets) == []


async def test_a_ticket_put_under_an_ended_lease_goes_unqueued_and_the_session_grants_anew(
    store: EtcdStore,
) -> None:
    """The session's lease ended (revoked here, as by etcd after a long pause): the failure branch's
    ticket put fails "lease not found", applying nothing; the Txn goes again unqueued, the write lands,
    and the session holds a new lease at once (not a TTL later)."""
    async with watched(store) as (cluster, view, session):
        key, tickets = override_key(cluster, "windows"), override_tickets_prefix(cluster, "windows")
        old = session.lease
        await store.revoke_lease(old)
        await store.create(key, b"a")
        queue = WriteQueue(store, session, view, tickets, f"{tickets}host-a/r1")
        result = await store.update_guarded(key, None, appending(b"b"), known=(None, None), queue=queue)
        assert (result.changed, result.attempts) == (True, 2)
        stored = await store.get(key)
        assert stored is not None and stored.value == b"ab"
        await until(lambda: session.lease not in (0, old), timeout=2.0)
        assert await store.get_prefix(tickets) == []
