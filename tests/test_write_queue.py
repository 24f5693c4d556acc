"""Writers of one key take turns (issue 17, design E): a writer whose compare-and-swap failed waits in the
key's queue, shown its turn by a real node watch (ClusterView) on a real etcd, in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

from authsim.auth_node.cluster_view import ClusterView
from authsim.cluster.store import EtcdStore, Versioned
from authsim.cluster.store.keys import cluster_prefix, override_key, override_tickets_prefix, queue_prefix
from authsim.cluster.store.queue import STALL, Session, WriteQueue


@contextlib.asynccontextmanager
async def watched(store: EtcdStore) -> AsyncIterator[tuple[str, ClusterView]]:
    """A cluster name of its own and a running view of it; its keys and tickets deleted after."""
    cluster = f"q{uuid.uuid4().hex[:12]}"
    view = ClusterView(store, cluster)
    task = asyncio.create_task(view.run())
    try:
        await view.wait_ready(10)
        yield cluster, view
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for prefix in (cluster_prefix(cluster), queue_prefix(cluster)):
            await store.delete_prefix(prefix)


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
    async with watched(store) as (cluster, view):
        key, tickets = override_key(cluster, "windows"), override_tickets_prefix(cluster, "windows")
        stale = await store.get(key)
        await store.create(key, b"a")  # the value the writer holds (absent) is stale: its 1st CAS fails
        dead = await store.grant_lease(10)
        await store.put_leased(f"{tickets}dead-host/r1", b"", dead)
        queue = WriteQueue(store, Session(store), view, tickets, f"{tickets}host-a/r2")
        started = time.perf_counter()
        result = await store.update_guarded(key, None, appending(b"b"), known=(stale, None), queue=queue)
        elapsed = time.perf_counter() - started
        assert (result.changed, result.attempts) == (True, 2)
        assert elapsed >= STALL
        stored = await store.get(key)
        assert stored is not None and stored.value == b"ab"
        assert await store.get_prefix(tickets) == []
        await store.revoke_lease(dead)


async def test_writers_at_once_take_at_most_two_attempts_and_leave_no_ticket(store: EtcdStore) -> None:
    """Eight writers start from the same (stale) value at once: one lands at once, every other is
    enqueued by its failed Txn and lands on its 2nd attempt, after the writers ahead of it."""
    async with watched(store) as (cluster, view):
        key, tickets = override_key(cluster, "windows"), override_tickets_prefix(cluster, "windows")
        session = Session(store)
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
        results = await asyncio.gather(*writers)
        assert sorted(r.attempts for r in results) == [1] + [2] * 7
        stored = await store.get(key)
        assert stored is not None and sorted(stored.value) == sorted(b"abcdefgh")
        assert await store.get_prefix(tickets) == []


async def test_a_ticket_put_under_an_ended_lease_goes_again_under_a_new_one(store: EtcdStore) -> None:
    """The session's lease ended (revoked here, as by etcd after a long pause): the failure branch's
    ticket put fails "lease not found"; the Txn goes again under a new lease and the write lands."""
    async with watched(store) as (cluster, view):
        key, tickets = override_key(cluster, "windows"), override_tickets_prefix(cluster, "windows")
        session = Session(store)
        old = await session.lease()
        await store.revoke_lease(old)
        await store.create(key, b"a")
        queue = WriteQueue(store, session, view, tickets, f"{tickets}host-a/r1")
        result = await store.update_guarded(key, None, appending(b"b"), known=(None, None), queue=queue)
        assert (result.changed, result.attempts) == (True, 2) and await session.lease() != old
        stored = await store.get(key)
        assert stored is not None and stored.value == b"ab"
