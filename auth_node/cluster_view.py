"""This node's live copy of the cluster's CAs and overrides, kept current by an etcd watch (SPEC §8)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from authsim.cluster.errors import NotFoundError, StoreUnavailableError
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.crl import CertAuthorityCRL
from authsim.cluster.resources.override import CertAuthorityOverride
from authsim.cluster.resources.stored import (
    StoredCertAuthority,
    StoredOverride,
    read_cert_authority,
    read_override,
)
from authsim.cluster.store import EtcdStore, Versioned
from authsim.cluster.store.addresses import node_name, target_address
from authsim.cluster.store.keys import cluster_prefix, crl_key, crl_prefix, override_key, override_prefix

log = logging.getLogger(__name__)
RETRY_DELAY = 0.5  # seconds before listing again after the watch broke
SETTLE = 0.02  # seconds without a change after which background work runs (the burst is over)
SETTLE_MAX = 0.25  # seconds after a burst's first change background work runs at the latest
UPDATES_KEPT = 256  # recent update revisions kept per queued key, for writers waiting their turn


class ClusterView:
    """Issuance reads CAs and overrides from here: no etcd round trip per credential.

    `ready` is set while the copy is current (listed, and the watch running); a broken watch clears
    it, so a node cut off from etcd stops issuing under a state that may have changed meanwhile.
    Stored values are distrusted: one that breaks a rule is kept with its problems, never used.
    """

    def __init__(
        self, store: EtcdStore, cluster_name: str, settle: float = SETTLE, settle_max: float = SETTLE_MAX
    ) -> None:
        self.store = store
        self.settle = settle
        self.settle_max = settle_max
        self.cluster_name = cluster_name
        self.prefix = cluster_prefix(cluster_name)
        self.cert_authorities: dict[str, CertAuthority] = {}
        self.invalid_cas: dict[str, StoredCertAuthority] = {}  # stored CAs that break a rule
        self.node_names: dict[str, str] = {}  # host id -> node name
        self.targets: dict[str, str] = {}  # target kind -> address
        self.stored_overrides: dict[str, Versioned] = {}  # as stored, to start a CAS without a read
        # likewise for the CAs, which override writes are checked against
        self.stored_cas: dict[str, Versioned] = {}
        self.stored_crls: dict[str, Versioned] = {}  # revoked serials and signed CRLs, per CA type
        # each CRL resource as last decoded (None: unreadable), by the mod_revision it was decoded at
        self._crls: dict[str, tuple[int, CertAuthorityCRL | None]] = {}
        # the latest override read of each type, by the mod_revision it was read at: decoded and checked
        # on first use, and the base of the next read (entries unchanged since are not parsed again)
        self._decoded: dict[str, tuple[int, StoredOverride]] = {}
        # pending cluster-wide CSR requests (id, stored value) as they appear, for csr.answer_csr_requests;
        # a listing after a broken watch queues the pending ones again (the answerer skips repeats)
        self.csr_requests: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.revision = 0  # the etcd revision this copy reflects at least
        self.ready = asyncio.Event()
        self._changed = asyncio.Condition()
        # background work is released once per burst of changes, all of it at the same moment: one
        # wake-up of this process per burst, not one per task (each costs as much CPU as the change)
        self._released_at = 0  # the revision background work was last released at
        self._release_pending = False
        self._burst_began = 0.0  # loop time of the first change not yet released
        self._last_change = 0.0  # loop time of the latest change
        # background tasks waiting for a release past the revision each has seen
        self._waiting: list[tuple[int, asyncio.Future[bool]]] = []
        # override or CRL resource key -> the revision of the latest change of it this copy holds (watched,
        # or written here: see `wrote`), so that a watched change older than one written here is not applied
        self._held_since: dict[str, int] = {}
        # key -> the mod_revisions of its latest updates seen, for writers waiting their turn (queue.py)
        self._updates: dict[str, deque[int]] = {}
        self._overrides = override_prefix(cluster_name)
        self._queued = (self._overrides, crl_prefix(cluster_name))  # the keys writers queue for

    async def run(self) -> None:
        """List, then watch from the listing's revision; on any failure, list and watch again."""
        while True:
            try:
                # Events after this revision are replayed: harmless. The prefix: a key RBAC lets us read.
                start = await self.store.ping(self.prefix)
                listing = await self.store.get_prefix(self.prefix)
                self.cert_authorities.clear()
                self.invalid_cas.clear()
                self.node_names.clear()
                self.targets.clear()
                self.stored_overrides.clear()
                self.stored_cas.clear()
                self.stored_crls.clear()
                self._crls.clear()
                self._decoded.clear()
                self._held_since.clear()
                for key, found in listing:
                    self._apply(key, found)
                await self._advance(start)
                self.ready.set()
                async with contextlib.aclosing(self.store.watch_prefix(self.prefix, start + 1)) as changes:
                    async for key, value, revision in changes:
                        if self._newer(key, revision):
                            self._apply(key, value)
                        if key.startswith(self._queued):
                            self._updates.setdefault(key, deque(maxlen=UPDATES_KEPT)).append(revision)
                        await self._advance(revision)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken stream, a compacted revision: start over
                self.ready.clear()
                log.warning("watch of %s stopped (%s); listing again", self.prefix, e)
                await asyncio.sleep(RETRY_DELAY)

    async def wait_ready(self, timeout: float) -> None:
        """Return once the copy is current; StoreUnavailableError after `timeout` seconds."""
        if self.ready.is_set():  # (wait_for costs a task per call even when set)
            return
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise StoreUnavailableError("this node has not loaded the cluster's CAs from etcd yet") from None

    def stored_override(self, ca_type: str) -> StoredOverride | None:
        """The override resource of `ca_type` in this copy, with the rules it breaks. Decoded on first
        use, not on every change: with N nodes appending, each change reaches every node, and most nodes
        never read it."""
        found = self.stored_overrides.get(ca_type)
        if found is None:
            return None
        revision, decoded = self._decoded.get(ca_type) or (0, None)
        if revision != found.mod_revision or decoded is None:
            decoded = read_override(found.value, found.mod_revision, self.cluster_name, ca_type, decoded)
            if not decoded.valid:
                log.error("%s", decoded.error())
            self._decoded[ca_type] = (found.mod_revision, decoded)
        return decoded

    def last_read_override(self, ca_type: str) -> StoredOverride | None:
        """The override of `ca_type` as last read here, whatever its revision (a base for reading
        another revision of it)."""
        return self._decoded.get(ca_type, (0, None))[1]

    def crl(self, ca_type: str) -> CertAuthorityCRL | None:
        """The CRL resource of `ca_type` in this copy; None when there is none or it is unreadable
        (logged). Decoded on first use, like the overrides: every append changes it."""
        found = self.stored_crls.get(ca_type)
        if found is None:
            return None
        revision, decoded = self._crls.get(ca_type) or (0, None)
        if revision != found.mod_revision:
            try:
                decoded = CertAuthorityCRL.from_json(found.value, found.mod_revision)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                decoded = None
                log.error("ignoring unreadable ca_crls/%s (revision %d): %s", ca_type, found.mod_revision, e)
            self._crls[ca_type] = (found.mod_revision, decoded)
        return decoded

    def override(self, ca_type: str) -> CertAuthorityOverride | None:
        """The override resource of `ca_type` to issue under; StoredDataError when it breaks a rule."""
        stored = self.stored_override(ca_type)
        if stored is None:
            return None
        if not stored.valid:
            raise stored.error()
        return stored.resource

    def cert_authority(self, ca_type: str) -> CertAuthority:
        """The CA of `ca_type`; StoredDataError when its stored value breaks a rule, else NotFoundError."""
        found = self.cert_authorities.get(ca_type)
        if found is not None:
            return found
        if ca_type in self.invalid_cas:
            raise self.invalid_cas[ca_type].error()
        raise NotFoundError(f"cert_authority {ca_type} of cluster {self.cluster_name} not found")

    def wrote(
        self, ca_type: str, value: Versioned | None, revision: int, crls: Versioned | None = None
    ) -> bool:
        """Take this node's own write of `ca_type`'s override (None: its removal), and of its CRL
        resource when the same Txn wrote it, landed at `revision`, before the watch shows it:
        read-your-writes on this node without waiting for the watch. False when the copy is not current
        (then wait with `caught_up`)."""
        if not self.ready.is_set():
            return False
        written = {override_key(self.cluster_name, ca_type): value}
        if crls is not None:
            written[crl_key(self.cluster_name, ca_type)] = crls
        for key, new in written.items():
            if self._newer(key, revision):
                self._apply(key, new)
        return True

    def _newer(self, key: str, revision: int) -> bool:
        """Whether a change of `key` at `revision` is newer than what this copy holds of it (an override
        or CRL resource written here may be held before the watch shows it, and changes before it after)."""
        if not key.startswith(self._queued):
            return True
        if self._held_since.get(key, 0) >= revision:
            return False
        self._held_since[key] = revision
        return True

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Wait until this copy reflects `revision` (read-your-writes on this node)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.revision >= revision), timeout)
            except TimeoutError:
                return False
        return True

    async def next_change(self, seen: int, timeout: float) -> bool:
        """For background work (CRLs, alerts, rotation parts): wait until the copy has moved past
        revision `seen` and the burst of changes is over: `settle` seconds without a change, or
        `settle_max` seconds since its first change (False after `timeout` seconds without a change).
        A burst (N nodes appending) is one round of work, not one per change, and the replies waiting
        for the changes go first. Every task waiting here is released at the same moment: one wake-up
        of this process, not one per task. (Releasing at a burst's first change costs the appends of 2
        to 4 nodes half as much time again: the holders' CRLs are then signed among them; releasing a
        fixed time after it, each of 16 appends some 20 ms apart ran every node's checks again.)"""
        if self._released_at > seen:
            return True
        loop = asyncio.get_running_loop()
        released: asyncio.Future[bool] = loop.create_future()  # a future and a timer each: no task
        timer = loop.call_later(timeout, _resolve, released, False)
        self._waiting.append((seen, released))
        try:
            return await released
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiting.remove((seen, released))

    def _release_when_settled(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = min(self._last_change + self.settle, self._burst_began + self.settle_max) - now
        if wait > 0.001:  # changes came meanwhile: one timer again, not one per change
            loop.call_later(wait, self._release_when_settled)
        else:
            self._release()

    def _release(self) -> None:
        self._release_pending = False
        self._released_at = self.revision
        waiting = self._waiting
        self._waiting = [(seen, w) for seen, w in waiting if seen >= self._released_at]
        for seen, released in waiting:
            if seen < self._released_at:
                _resolve(released, True)

    def current(self) -> bool:
        return self.ready.is_set()

    async def updates_after(self, key: str, revision: int, count: int, quiet: float) -> int:
        """Wait until `count` updates of `key` after `revision` have shown up, or none for `quiet` s;
        how many did (the `KeyUpdates` of a write queue)."""
        updates = self._updates.setdefault(key, deque(maxlen=UPDATES_KEPT))

        def seen() -> int:
            return sum(1 for r in updates if r > revision)

        async with self._changed:
            while (before := seen()) < count and self.ready.is_set():
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: seen() > before), quiet)
                except TimeoutError:
                    break
        return seen()

    def values_since(
        self, key: str, guard_key: str | None, revision: int
    ) -> tuple[Versioned | None, Versioned | None] | None:
        """A queued key (an override's, a CRL resource's) and its guard key (its CA's) as this copy
        holds them, once it reflects `revision`."""
        if self.revision < revision or not self.ready.is_set():
            return None
        return self._stored(key), None if guard_key is None else self._stored(guard_key)

    def _stored(self, key: str) -> Versioned | None:
        kind, _, name = key[len(self.prefix) :].partition("/")
        stored = {"ca_overrides": self.stored_overrides, "cas": self.stored_cas, "ca_crls": self.stored_crls}
        return stored[kind].get(name)

    async def _advance(self, revision: int) -> None:
        async with self._changed:
            self.revision = max(self.revision, revision)
            self._changed.notify_all()
        loop = asyncio.get_running_loop()
        self._last_change = loop.time()
        if not self._release_pending and self.revision > self._released_at:
            self._release_pending = True
            self._burst_began = self._last_change
            loop.call_later(self.settle, self._release_when_settled)

    def _apply(self, key: str, value: Versioned | None) -> None:
        kind, _, name = key[len(self.prefix) :].partition("/")
        try:
            if kind == "cas":
                self.cert_authorities.pop(name, None)
                self.invalid_cas.pop(name, None)
                self.stored_cas.pop(name, None)
                if value is not None:
                    stored = read_cert_authority(value.value, value.mod_revision, self.cluster_name, name)
                    if stored.cert_authority is not None:
                        self.cert_authorities[name] = stored.cert_authority
                    else:
                        self.invalid_cas[name] = stored
                        log.error("%s", stored.error())
                    self.stored_cas[name] = value
            elif kind == "ca_overrides":
                self.stored_overrides.pop(name, None)
                if value is not None:
                    self.stored_overrides[name] = value
            elif kind == "ca_crls":
                self.stored_crls.pop(name, None)
                if value is not None:
                    self.stored_crls[name] = value
            elif kind == "nodes":
                self.node_names.pop(name, None)
                found = node_name(value.value) if value is not None else None
                if found is not None:
                    self.node_names[name] = found
            elif kind == "csr_requests":
                if value is not None:
                    self.csr_requests.put_nowait((name, value.value))
            elif kind == "targets":
                self.targets.pop(name, None)
                if value is not None:
                    self.targets[name] = target_address(value.value)
        except (ValueError, KeyError, TypeError) as e:
            log.error("ignoring unreadable value at %s: %s", key, e)


def _resolve(future: asyncio.Future[bool], result: bool) -> None:
    if not future.done():
        future.set_result(result)
