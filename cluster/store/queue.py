"""Writers of one contended key take turns (issue 17, design E): a writer whose compare-and-swap fails
waits until the writers ahead of it have written, instead of retrying at random.

The failed Txn itself enqueues the writer: its failure branch puts the writer's ticket (under the
node's session lease; a re-put keeps its create_revision, so its place) and lists the tickets. The
tickets with a lower create_revision are ahead; each writer ahead deletes its ticket in its own
successful Txn, so the writer waits for that many updates of the key, shown by its node's watch. The
tickets live under a prefix no node watches. When the key stays quiet for a stall period, the first
ticket ahead belongs to a hung or dead writer: the first waiter to notice deletes it (a Txn comparing
its mod_revision, so only one waiter wins, and not a ticket its writer just put again); a dead node's
tickets also go when its lease ends. Tickets only decide when to try: correctness still comes from
each writer's own compare-and-swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from authsim.cluster.errors import StoreUnavailableError
from authsim.cluster.store.etcd import CasResult, EtcdStore, Versioned

log = logging.getLogger(__name__)

SESSION_TTL = 10  # seconds a dead node's tickets outlive it
STALL = 0.05  # seconds without an update of the key after which the first writer ahead is taken as hung
RETRY_DELAY = 1.0  # seconds before asking etcd for the session lease again


class KeyUpdates(Protocol):
    """A watch of the keys written (the node's own), as the queue uses it."""

    def current(self) -> bool:
        """Whether the watch runs (updates show up as they land)."""
        ...

    async def updates_after(self, key: str, revision: int, count: int, quiet: float) -> int:
        """Wait until `count` updates of `key` with a mod_revision above `revision` have shown up, or
        none for `quiet` seconds; how many did."""
        ...

    def values_since(
        self, key: str, guard_key: str | None, revision: int
    ) -> tuple[Versioned | None, Versioned | None] | None:
        """`key` and `guard_key` as the watch holds them once it reflects `revision`; else None."""
        ...


class Session:
    """A node's session lease: the keys put under it (its writers' tickets) go when it ends, within
    `ttl` seconds of the node's death. `run` grants it, renews it every third of its TTL, and grants a
    new one once it ended; while there is none, writers do not queue (they retry at random)."""

    def __init__(self, store: EtcdStore, ttl: int = SESSION_TTL) -> None:
        self.store = store
        self.ttl = ttl
        self.lease = 0  # 0: none now
        self._ended = asyncio.Event()

    def ended(self, lease: int) -> None:
        """etcd no longer knows `lease`: `run` grants a new one at once."""
        if self.lease == lease:
            self.lease = 0
            self._ended.set()

    async def run(self) -> None:
        while True:
            try:
                if not self.lease:
                    self.lease = await self.store.grant_lease(self.ttl)
                elif not await self.store.refresh_lease(self.lease):
                    self.lease = 0
                    continue
            except StoreUnavailableError as e:
                log.warning("session lease not granted or renewed: %s", e)
                await asyncio.sleep(RETRY_DELAY)
                continue
            self._ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), self.ttl / 3)


@dataclass
class WriteQueue:
    """One writer's place in the queue of the key it writes (the `Queue` of `EtcdStore.update_guarded`)."""

    store: EtcdStore
    session: Session
    watch: KeyUpdates
    tickets: str  # the prefix of the key's tickets
    ticket: str  # this writer's ticket key, under `tickets`
    stall: float = STALL
    placed: bool = False  # whether the ticket may be in the queue

    def usable(self) -> bool:
        return self.watch.current() and self.session.lease != 0

    def lease(self) -> int:
        return self.session.lease

    def lease_ended(self, lease: int) -> None:
        self.session.ended(lease)

    async def wait_turn(
        self, key: str, guard_key: str | None, failed: CasResult
    ) -> tuple[Versioned | None, Versioned | None] | None:
        ahead = self._ahead(failed.tickets)
        after = failed.revision
        while ahead:
            if await self.watch.updates_after(key, after, len(ahead), self.stall) >= len(ahead):
                break
            if not self.usable():  # the watch broke, not a writer ahead: try now, evict no one
                return None
            page = await self.store.get_page(self.tickets)  # stalled: who is still ahead?
            ahead, after = self._ahead(page.items), page.revision
            if ahead and await self._evict(*ahead[0]):
                ahead = ahead[1:]
        return self.watch.values_since(key, guard_key, failed.revision)

    def _ahead(
        self, tickets: tuple[tuple[str, Versioned], ...] | list[tuple[str, Versioned]]
    ) -> list[tuple[str, Versioned]]:
        """The tickets ahead of this writer's, first first; none when its own is gone (evicted: it
        tries at once, and a failure puts it at the back)."""
        own = next((found.create_revision for name, found in tickets if name == self.ticket), 0)
        return sorted((t for t in tickets if t[1].create_revision < own), key=lambda t: t[1].create_revision)

    async def _evict(self, ticket: str, found: Versioned) -> bool:
        """Delete a stalled writer's ticket unless it was put again since; whether it is gone."""
        result = await self.store.delete(ticket, found.mod_revision)
        if result.succeeded:
            log.info("queue: took out %s, its writer silent for %.0f ms", ticket, self.stall * 1000)
        return result.succeeded or result.current is None


def writer_queue(
    store: EtcdStore, session: Session | None, watch: KeyUpdates, tickets: str, writer: str
) -> WriteQueue | None:
    """The place of one write, named `writer` (unique: its node's host id and the write's id), in the
    queue whose tickets live under `tickets`; None without a session (the write backs off instead)."""
    if session is None:
        return None
    return WriteQueue(store, session, watch, tickets, f"{tickets}{writer}")
