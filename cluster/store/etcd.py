"""The etcd store: reads, one compare-and-swap Txn primitive, and a bounded retry loop built on it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aetcd
import aetcd.exceptions
import aetcd.watcher
import grpc
from aetcd import rpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from authsim.cluster.errors import (
    AlreadyExistsError,
    AuthSimError,
    ClusterError,
    ConflictError,
    NotFoundError,
    OutcomeUnknownError,
    StoreAccessError,
    StoreUnavailableError,
)

# gRPC status codes that mean "etcd cannot serve us now", with the words the one-line error uses.
_UNAVAILABLE: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "unreachable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "did not answer in time",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "refused the request",
}
# gRPC status codes with which etcd's RBAC refuses a client identity (its certificate's CN).
_REFUSED = (grpc.StatusCode.PERMISSION_DENIED,)
# aetcd errors raised without a gRPC cause, by the status code they stand for.
_AETCD_CODES: dict[type[Exception], grpc.StatusCode] = {
    aetcd.exceptions.ConnectionFailedError: grpc.StatusCode.UNAVAILABLE,
    aetcd.exceptions.ConnectionTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    aetcd.exceptions.WatchTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}

_CHANNEL_OPTIONS: dict[str, int | str] = {
    # Reconnect within a second once etcd is back (gRPC's default backoff grows to 120 s). Not
    # "grpc.min_reconnect_backoff_ms": gRPC takes it as the time one connection attempt (TCP, TLS,
    # HTTP/2) may take, and at 100 ms a busy machine failed 3-8% of first calls ("Handshake write failed").
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Notice a peer that vanished without closing the connection, e.g. under a long watch.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    # Prefix reads (events) may outgrow gRPC's 4 MiB default.
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}

_BACKOFF_BASE = 0.0005
_BACKOFF_CAP = 0.002
DELETE = b"\0authsim: delete this key\0"  # what an `update` fn returns to remove the key; never stored
_UNAVAILABLE_PAUSE = 0.1  # seconds before reading again after etcd did not answer
_TRIM_PROBE = 64  # keys `trim_prefix` reads with its count: the cutoff of a small excess needs no 2nd read


@dataclass(frozen=True)
class EtcdTLS:
    """TLS to etcd: the CA certificate to trust, and a certificate and key to present (PEM files).

    A client (EtcdStore, a node) presents its client certificate; an etcd member (EtcdServer) its
    member certificate, the same one for clients, peers and its own health check.
    """

    cacert: Path
    cert: Path
    key: Path

    def checked(self) -> EtcdTLS:
        """The same files as absolute paths; ClusterError naming every one that is not a file."""
        missing = [
            f"etcd TLS {what} {path} does not exist"
            for what, path in (("CA certificate", self.cacert), ("certificate", self.cert), ("key", self.key))
            if not path.is_file()
        ]
        if missing:
            raise ClusterError("; ".join(missing))
        return EtcdTLS(self.cacert.absolute(), self.cert.absolute(), self.key.absolute())

    def to_dict(self) -> dict[str, str]:
        return {"cacert": str(self.cacert), "cert": str(self.cert), "key": str(self.key)}

    @classmethod
    def from_dict(cls, data: dict[str, str] | None) -> EtcdTLS | None:
        """The inverse of `to_dict`; None (a file written without TLS) stays None."""
        return None if data is None else cls(Path(data["cacert"]), Path(data["cert"]), Path(data["key"]))

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.cacert.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client-side context for etcd's HTTPS endpoints (/health)."""
        context = ssl.create_default_context(cafile=str(self.cacert))
        context.load_cert_chain(self.cert, self.key)
        return context


Guard = tuple[str, int]  # a key that must still be at this mod_revision (0: absent) for a write to land
CompanionWrite = tuple[str, int, bytes]  # a companion key, the mod_revision it must be at, its new value


@dataclass(frozen=True)
class Versioned:
    """A stored value with the revisions etcd gave it."""

    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Page:
    """One page of a prefix read: (key, value) in key order, whether more keys follow, the revision read."""

    items: list[tuple[str, Versioned]]
    more: bool
    revision: int


@dataclass(frozen=True)
class Vacancy:
    """The outcome of `create_if_empty`: whether it created the key; if not, the key's value then
    (None when absent) and how many keys the prefixes held."""

    created: bool
    current: Versioned | None
    keys: int


@dataclass(frozen=True)
class Trim:
    """What one `trim_prefix` did: the keys it deleted, and the keys under the prefix it left, counted at
    `revision` (the count's; later writes may have added more)."""

    deleted: int
    kept: int
    revision: int


@dataclass(frozen=True)
class CasResult:
    """The outcome of one compare-and-swap (or conditional delete) Txn.

    `revision` is the store revision of the write when it succeeded (the store's revision at the time
    of the Txn when it failed). On failure `current` is the value read by the Txn's failure branch,
    None when the key is absent, and `guard` the guard key's value read by the same branch.
    """

    succeeded: bool
    revision: int
    current: Versioned | None = None
    guard: Versioned | None = None
    tickets: tuple[tuple[str, Versioned], ...] = ()  # a queued swap that failed: the queue then, keys only
    companion: Versioned | None = None  # a swap with a companion that failed: the companion key's value


@dataclass(frozen=True)
class Companion:
    """A second key an update writes in the same Txn as its key, when `fn` says so: `fn(value)` gives
    the companion's new value from its current one, or None to leave it out of that attempt. Written, it
    is compared too (at the revision `fn` saw), so it never overwrites a change `fn` did not see.
    `latest()` is the freshest value the caller holds (a watch's copy): each attempt starts from it or
    from the last failure branch's read, whichever is newer."""

    key: str
    fn: Callable[[Versioned | None], bytes | None]
    latest: Callable[[], Versioned | None]


class Queue(Protocol):
    """Where a writer whose compare-and-swap failed waits its turn (`cluster.store.queue.WriteQueue`).

    Its Txn carries the queue: success also deletes the writer's ticket; failure also puts the ticket
    (under the session lease; a re-put keeps its create_revision, so its place) and lists the tickets.
    Tickets only decide when to try again: correctness still comes from the compare-and-swap alone.
    """

    ticket: str  # this writer's ticket key
    tickets: str  # the prefix of the tickets of the key written
    placed: bool  # whether the ticket may be in the queue (set by the Txns)

    def usable(self) -> bool:
        """Whether queueing can work now: the watch that shows the key's updates is current and there
        is a session lease."""
        ...

    def lease(self) -> int:
        """The session lease tickets are put under (0: none now)."""
        ...

    def lease_ended(self, lease: int) -> None:
        """etcd no longer knows `lease`: grant a new one next time."""
        ...

    async def wait_turn(
        self, key: str, guard_key: str | None, failed: CasResult
    ) -> tuple[Versioned | None, Versioned | None] | None:
        """Return once the writers ahead have written `key`: the values to try next (of the key and
        the guard key, from the watch), or None to try with those `failed` read."""
        ...


@dataclass(frozen=True)
class UpdateResult:
    """The outcome of `update()`: the revision now stored, the attempts taken, whether it wrote (and
    the companion's value it wrote along, if any)."""

    revision: int
    attempts: int
    changed: bool
    companion: bytes | None = None


class EtcdStore:
    """An asyncio client of one etcd cluster; every call is bounded by `timeout` seconds.

    `endpoints` are "host:port" strings. Several become one gRPC channel with target
    "ipv4:ip1:port1,ip2:port2,..." (names resolved at connect), so gRPC's pick_first policy fails over
    to the next member. aetcd builds its channel from f"{host}:{port}"; we hand it the target split at
    its last colon, which rebuilds the same string. Connection failures surface as
    StoreUnavailableError; the channel reconnects by itself when etcd comes back.

    With `tls` the channel is TLS with our client certificate. One channel has one name to verify:
    every member's certificate is checked against the host of the first endpoint (so member
    certificates must all name it, e.g. all carry 127.0.0.1 on loopback). A handshake etcd refuses
    (no client certificate, one from another CA) surfaces as StoreUnavailableError too.
    """

    def __init__(self, endpoints: list[str], timeout: float = 5.0, tls: EtcdTLS | None = None) -> None:
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        for endpoint in endpoints:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.tls = tls
        self._client: Any = None

    async def connect(self) -> None:
        """Open the gRPC channel (no round trip: the first call connects)."""
        if self._client is not None:
            return
        host, _, port = (await self._grpc_target()).rpartition(":")
        if self.tls is None:
            client = aetcd.Client(host=host, port=int(port), timeout=self.timeout, options=_CHANNEL_OPTIONS)
        else:
            # The name TLS verifies: the first endpoint as given, not the "ipv4:..." target's list.
            options = {**_CHANNEL_OPTIONS, "grpc.default_authority": self.endpoints[0]}
            client = _TLSClient(
                self.tls.channel_credentials(),
                host=host,
                port=int(port),
                timeout=self.timeout,
                options=options,
            )
        with self._map_errors():
            await client.connect()
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> EtcdStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get(self, key: str) -> Versioned | None:
        response = await self._call("Range", rpc.RangeRequest(key=key.encode()))
        return _versioned(response.kvs[0]) if response.kvs else None

    async def get_both(self, key: str, other: str) -> tuple[Versioned | None, Versioned | None]:
        """Two keys as they stood at one revision (one Txn of two reads)."""
        reads = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode())) for k in (key, other)]
        response = await self._call("Txn", rpc.TxnRequest(success=reads), read=True)
        first, second = (r.response_range.kvs for r in response.responses)
        return (_versioned(first[0]) if first else None, _versioned(second[0]) if second else None)

    async def get_prefix(self, prefix: str) -> list[tuple[str, Versioned]]:
        """Every key starting with `prefix` ("" = all keys), sorted by key."""
        key, range_end = _prefix_range(prefix)
        response = await self._call("Range", rpc.RangeRequest(key=key, range_end=range_end))
        return sorted((kv.key.decode(), _versioned(kv)) for kv in response.kvs)

    async def get_page(self, prefix: str, start: str = "", limit: int = 0, revision: int = 0) -> Page:
        """Keys under `prefix` from the full key `start` on (inclusive; "" = the first), in key order, at
        most `limit` of them (0: all), read at `revision` (0: the current one, which the page names)."""
        key, range_end = _prefix_range(prefix)
        request = rpc.RangeRequest(
            key=max(key, start.encode()), range_end=range_end, limit=limit, revision=revision
        )
        response = await self._call("Range", request)
        items = [(kv.key.decode(), _versioned(kv)) for kv in response.kvs]
        # etcd's header names the current revision, also for a read at an older one
        return Page(items, bool(response.more), revision or int(response.header.revision))

    async def last_keys(self, prefix: str, count: int, start: str = "", revision: int = 0) -> list[str]:
        """The last `count` keys under `prefix` from `start` on (inclusive), newest first; keys only."""
        key, range_end = _prefix_range(prefix)
        request = rpc.RangeRequest(
            key=max(key, start.encode()),
            range_end=range_end,
            limit=count,
            revision=revision,
            keys_only=True,
            sort_order=rpc.RangeRequest.DESCEND,
            sort_target=rpc.RangeRequest.KEY,
        )
        response = await self._call("Range", request)
        return [kv.key.decode() for kv in response.kvs]

    async def trim_prefix(self, prefix: str, keep: int) -> Trim:
        """Delete the first keys under `prefix` (key order) so that `keep` remain.

        Cheap when nothing is over: one Range of the first `_TRIM_PROBE` keys (keys only) that also
        counts them all; when over, the cutoff key is found at that Range's revision and everything up
        to it goes in one DeleteRange. Safe with several trimmers at once: each deletes only keys that
        had `keep` keys after them at the revision it counted, so together they never leave fewer than
        `keep`, and the trim after the last write leaves exactly `keep`.
        """
        if keep < 0:
            raise ValueError(f"trim_prefix keeps >= 0 keys, not {keep}")
        key, range_end = _prefix_range(prefix)
        probe = rpc.RangeRequest(key=key, range_end=range_end, limit=_TRIM_PROBE, keys_only=True)
        response = await self._call("Range", probe)
        counted, revision = int(response.count), int(response.header.revision)
        excess = counted - keep
        if excess <= 0:
            return Trim(0, counted, revision)
        if excess <= len(response.kvs):
            cutoff = bytes(response.kvs[excess - 1].key)
        else:
            oldest = rpc.RangeRequest(
                key=key, range_end=range_end, limit=excess, keys_only=True, revision=revision
            )
            cutoff = bytes((await self._call("Range", oldest)).kvs[-1].key)
        deleted = await self._call("DeleteRange", rpc.DeleteRangeRequest(key=key, range_end=cutoff + b"\0"))
        return Trim(int(deleted.deleted), keep, revision)

    async def compare_and_swap(
        self, key: str, expected_revision: int, value: bytes, guard: Guard | None = None
    ) -> CasResult:
        """Put `value` if the key's mod_revision is `expected_revision` (0: the key must be absent)
        and, with a `guard` (key, revision), that key is unchanged too.

        One Txn: compare, success = Put, failure = Get, so a conflict costs no extra round trip.
        A StoreUnavailableError (e.g. a deadline) leaves the outcome unknown: read again.
        """
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))
        return await self._guarded(key, expected_revision, put, guard)

    async def create(self, key: str, value: bytes) -> int:
        """Create `key` if absent and return the write's revision; AlreadyExistsError otherwise."""
        result = await self.compare_and_swap(key, 0, value)
        if not result.succeeded:
            revision = result.current.mod_revision if result.current else result.revision
            raise AlreadyExistsError(f"{key} already exists (revision {revision})")
        return result.revision

    async def grant_lease(self, ttl: int) -> int:
        """A lease of `ttl` seconds (keys put under it vanish when it ends or is revoked); its id."""
        client = self._connected()
        with self._map_errors():
            reply = await client.leasestub.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl), timeout=self.timeout, metadata=client.metadata
            )
        return int(reply.ID)

    async def revoke_lease(self, lease: int) -> None:
        """End lease `lease` now, deleting its keys; one already ended is no error."""
        client = self._connected()
        try:
            with self._map_errors():
                await client.leasestub.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease), timeout=self.timeout, metadata=client.metadata
                )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def refresh_lease(self, lease: int) -> int:
        """Renew `lease` for its full TTL; the seconds it now has left, 0 when it has ended."""
        client = self._connected()
        with self._map_errors():
            replies = client.leasestub.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=self.timeout, metadata=client.metadata
            )
            async for reply in replies:
                return max(int(reply.TTL), 0)
        return 0

    async def put_leased(self, key: str, value: bytes, lease: int) -> int:
        """Put `key` = `value` under `lease` (unconditionally); the write's revision. NotFoundError
        when the lease has ended."""
        try:
            response = await self._call("Put", rpc.PutRequest(key=key.encode(), value=value, lease=lease))
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            raise NotFoundError(f"lease {lease:x} of {key} has ended") from None
        return int(response.header.revision)

    async def delete(self, key: str, expected_revision: int, guard: Guard | None = None) -> CasResult:
        """Delete `key` if its mod_revision is `expected_revision`; same guard and failure branch as CAS."""
        if expected_revision < 1:
            raise ValueError(f"delete of {key} needs the revision it read (> 0), not {expected_revision}")
        op = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key.encode()))
        return await self._guarded(key, expected_revision, op, guard)

    async def delete_prefix(self, prefix: str) -> int:
        """Unconditionally delete every key under a non-empty `prefix` (tests, purges); the count."""
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        key, range_end = _prefix_range(prefix)
        response = await self._call("DeleteRange", rpc.DeleteRangeRequest(key=key, range_end=range_end))
        return int(response.deleted)

    async def create_if_empty(self, key: str, value: bytes, prefixes: list[str]) -> Vacancy:
        """Create `key` = `value` if no key starts with any of the non-empty `prefixes`; one Txn, whose
        failure branch reads `key` and counts the keys under the prefixes."""
        if not prefixes or not all(prefixes):
            raise ValueError("create_if_empty needs non-empty prefixes")
        ranges = [_prefix_range(prefix) for prefix in prefixes]
        empty = [
            rpc.Compare(
                key=k, range_end=end, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
            )
            for k, end in ranges
        ]
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))
        reads = [rpc.RequestOp(request_range=rpc.RangeRequest(key=key.encode()))]
        reads += [
            rpc.RequestOp(request_range=rpc.RangeRequest(key=k, range_end=end, count_only=True))
            for k, end in ranges
        ]
        response = await self._call("Txn", rpc.TxnRequest(compare=empty, success=[put], failure=reads))
        if response.succeeded:
            return Vacancy(True, None, 0)
        found, *counts = (r.response_range for r in response.responses)
        return Vacancy(
            False, _versioned(found.kvs[0]) if found.kvs else None, sum(int(c.count) for c in counts)
        )

    async def count_prefix(self, prefix: str) -> int:
        """How many keys start with a non-empty `prefix` (a count, no values read)."""
        if not prefix:
            raise ValueError("count_prefix needs a non-empty prefix")
        key, range_end = _prefix_range(prefix)
        response = await self._call("Range", rpc.RangeRequest(key=key, range_end=range_end, count_only=True))
        return int(response.count)

    async def delete_prefixes(self, prefixes: list[str], guard: Guard) -> int:
        """Delete every key under each non-empty prefix in one Txn, only if the guard key is still at
        its revision (0: absent); the count deleted. ConflictError, with nothing deleted, otherwise."""
        if not all(prefixes):
            raise ValueError("delete_prefixes needs non-empty prefixes")
        guard_key, expected = guard
        deletes = [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end))
            for key, range_end in map(_prefix_range, prefixes)
        ]
        response = await self._call(
            "Txn", rpc.TxnRequest(compare=[_compare(guard_key, expected)], success=deletes)
        )
        if not response.succeeded:
            raise ConflictError(
                f"{guard_key} changed since it was read (revision {expected}): nothing deleted"
            )
        return sum(int(r.response_delete_range.deleted) for r in response.responses)

    async def update(
        self,
        key: str,
        fn: Callable[[Versioned | None], bytes | None],  # or DELETE
        *,
        max_attempts: int = 128,
        deadline: float = 10.0,
        known: tuple[Versioned | None] | None = None,
        mine: Callable[[Versioned], bool] | None = None,
        queue: Queue | None = None,
        companion: Companion | None = None,
    ) -> UpdateResult:
        """Read, `fn(current)`, compare-and-swap; on conflict retry `fn` on the value the Txn returned.

        `fn` returns the new value, DELETE to remove the key (it must exist), or None when nothing needs
        writing (then nothing is written). An exception from `fn` propagates with nothing written.
        Retries back off with full jitter (0.5 ms doubling to 2 ms: a conflict means another writer
        landed, so long waits buy nothing) and stop after `max_attempts` or `deadline` seconds:
        ConflictError. `known=(value,)` starts from a value the caller already holds (a cache kept by a
        watch) instead of reading: when it is stale, the first compare fails and its failure branch
        brings the current value, so an uncontended update costs one round trip. An error or a
        "nothing to do" from `fn` on a cached value is not trusted: the key is read and `fn` asked again.
        `fn` must return None when its change is already there: when etcd does not answer (a member
        down, a leader change), the loop reads again and calls `fn` on what it finds, until the
        deadline; only then does StoreUnavailableError reach the caller, saying nothing was written.

        A write whose answer is lost (etcd did not answer its Txn) may or may not have landed. The read
        after it first asks `mine(value)`, when given: is the stored value that write (it carries the
        caller's request id)? Then the update succeeded. Else etcd's history says whether it landed and
        was changed since (the first change after the revision it compared is it: success) or did not
        land (then the loop goes on as after a conflict). Else `fn` judges the value as usual; but an
        AuthSimError from it (a refusal that may be about our own write, overwritten since) becomes
        OutcomeUnknownError, and so does reaching the deadline or `max_attempts` with the write unsettled.
        With a `queue`, writers take turns instead of backing off; with a `companion`, a second key
        is written along (see `update_guarded`).
        """
        return await self.update_guarded(
            key,
            None,
            lambda current, _: fn(current),
            max_attempts=max_attempts,
            deadline=deadline,
            known=None if known is None else (known[0], None),
            mine=mine,
            queue=queue,
            companion=companion,
        )

    async def update_guarded(
        self,
        key: str,
        guard_key: str | None,
        fn: Callable[[Versioned | None, Versioned | None], bytes | None],  # or DELETE
        *,
        max_attempts: int = 128,
        deadline: float = 10.0,
        known: tuple[Versioned | None, Versioned | None] | None = None,
        mine: Callable[[Versioned], bool] | None = None,
        queue: Queue | None = None,
        companion: Companion | None = None,
    ) -> UpdateResult:
        """`update`, where `fn(current, guard)` also sees the value of `guard_key` and the write lands
        only if that key is still as `fn` saw it (both compared in the one Txn; both re-read by its
        failure branch): a write checked against another key cannot slip past a change to it.
        `known=(value, guard value)` and `mine` as for `update`.

        With a `queue` (while it is usable), a writer whose compare-and-swap failed does not back off at
        random: its failed Txn enqueued it, and it waits until the writers ahead of it have written the
        key (`Queue.wait_turn`), then tries at once with the value its watch shows; its ticket leaves
        the queue with its successful Txn, or when the update ends otherwise.

        With a `companion`, each attempt that puts the key may also put the companion key (`Companion`).
        """
        limits = (max_attempts, deadline)
        if queue is None:
            return await self._attempts(key, guard_key, fn, limits, known, mine, None, companion)
        try:
            return await self._attempts(key, guard_key, fn, limits, known, mine, queue, companion)
        finally:
            if queue.placed:
                await self._leave(queue)

    async def _attempts(
        self,
        key: str,
        guard_key: str | None,
        fn: Callable[[Versioned | None, Versioned | None], bytes | None],
        limits: tuple[int, float],
        known: tuple[Versioned | None, Versioned | None] | None,
        mine: Callable[[Versioned], bool] | None,
        queue: Queue | None,
        companion: Companion | None,
    ) -> UpdateResult:
        """The loop of `update_guarded`, within `limits` (max_attempts, deadline)."""
        max_attempts, deadline = limits
        loop = asyncio.get_running_loop()
        started = loop.time()
        current, guard = known if known else (None, None)
        fresh = known is not None  # whether the values are worth a compare (false after an unknown outcome)
        confirmed = False  # whether they came from etcd itself, not from the caller's cache
        lost: StoreUnavailableError | None = None  # why the answer to a write we sent never came
        lost_since = 0  # the revision that write compared the key against (0: absent, or a delete)
        unsure = False  # whether history could not settle a lost write (it stays in doubt)
        unanswered: StoreUnavailableError | None = None  # the last call etcd did not answer
        along: tuple[Versioned | None, int] | None = None  # a failure branch's companion value, and revision
        attempt = expected = 0
        while True:
            writing = waited = False
            try:
                if not fresh:
                    if guard_key:
                        current, guard = await self.get_both(key, guard_key)
                    else:
                        current = await self.get(key)
                    fresh = confirmed = True
                if lost is not None and mine is not None:
                    if current is not None and mine(current):
                        return UpdateResult(current.mod_revision, attempt, True)  # the lost answer's write
                    landed = await self._landed(key, lost_since, current, mine) if lost_since else None
                    if landed:
                        return UpdateResult(landed, attempt, True)  # it landed; changed since
                    if landed == 0 and not unsure:
                        lost = None  # another change came first, or none: ours did not land
                    unsure = unsure or landed is None  # an earlier lost write stays in doubt
                try:
                    new_value = fn(current, guard)
                except Exception as e:
                    if not confirmed:
                        fresh = False  # judged on a cached value: judge again on what etcd holds
                        continue
                    if lost is not None and isinstance(e, AuthSimError):
                        raise _refused_in_doubt(key, lost, current) from e
                    raise
                if new_value is None and not confirmed:  # "nothing to do" from a cache may be stale
                    fresh = False
                    continue
                attempt += 1
                expected = current.mod_revision if current else 0
                if new_value is None:
                    return UpdateResult(expected, attempt, False)
                guarded = (guard_key, guard.mod_revision if guard else 0) if guard_key else None
                queued = queue if queue is not None and queue.usable() else None
                extra = _companion_write(companion, along) if new_value is not DELETE else None
                writing = True
                lost_since = expected if new_value is not DELETE else 0
                result = await self._swap(key, expected, new_value, guarded, queued, extra)
                writing = False
                if result.succeeded:
                    return UpdateResult(result.revision, attempt, True, extra[2] if extra else None)
                current, guard, confirmed = result.current, result.guard, True
                along = (result.companion, result.revision) if extra else along
                if queued is not None and result.tickets:  # enqueued (its own ticket is listed)
                    turn = await queued.wait_turn(key, guard_key, result)
                    if turn is not None:  # the watch's values, newer than the failure branch's
                        (current, guard), confirmed = turn, False
                    waited = True  # try again at once: the writers ahead have written
            except StoreUnavailableError as e:
                # etcd down, leader changed: read again and let `mine`, then `fn`, decide.
                fresh = False
                unanswered = e
                if writing:
                    lost = e
            delay = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** max(attempt - 1, 0)))
            if waited:
                delay = 0.0
            if not fresh:
                delay = max(delay, _UNAVAILABLE_PAUSE)
            elapsed = loop.time() - started
            if attempt >= max_attempts or elapsed + delay > deadline:
                if lost is not None:
                    why = "etcd still did not answer" if not fresh else "other writers kept changing it"
                    raise OutcomeUnknownError(
                        f"outcome unknown: etcd's answer to a write of {key} was lost ({lost}), then {why} "
                        f"until the limit ({attempt} attempts in {elapsed:.2f}s): the write may or may not "
                        "have landed"
                    ) from unanswered
                if not fresh and unanswered is not None:
                    raise StoreUnavailableError(f"{unanswered}; nothing was written") from unanswered
                raise ConflictError(
                    f"gave up updating {key} after {attempt} attempts in {elapsed:.2f}s "
                    f"(limits: {max_attempts} attempts, {deadline:g}s): other writers kept changing it",
                    expected_revision=expected,
                    actual_revision=current.mod_revision if current else 0,
                )
            if delay:
                await asyncio.sleep(delay)

    async def _landed(
        self, key: str, since: int, current: Versioned | None, mine: Callable[[Versioned], bool]
    ) -> int | None:
        """Where a write compared against revision `since` of `key`, whose answer was lost, landed: its
        revision, read from etcd's history (it can only have been the first change after `since`); 0
        when it did not land; None when history cannot say (etcd did not answer, or compacted it).
        `current` is the key's value now."""
        if current is not None and current.mod_revision == since:
            return 0  # no change since `since`: nothing landed
        try:
            with self._map_errors():
                watch = await self._connected().watch(key.encode(), start_revision=since + 1)
                try:
                    event = await asyncio.wait_for(anext(aiter(watch)), self.timeout)
                finally:
                    await watch.cancel()
        except (StoreUnavailableError, aetcd.exceptions.ClientError, StopAsyncIteration):
            return None
        first = None if event.kind == aetcd.rtypes.EventKind.DELETE else _versioned(event.kv)
        return first.mod_revision if first is not None and mine(first) else 0

    async def watch_prefix(
        self, prefix: str, start_revision: int | None = None
    ) -> AsyncGenerator[tuple[str, Versioned | None, int], None]:
        """Yield (key, value, revision) for each change under `prefix`; value None for a delete.

        Raises StoreUnavailableError when the stream breaks: watch again from the last revision seen
        + 1 to miss nothing; ClusterError when etcd compacted the revisions it would start from. Wrap in
        `contextlib.aclosing` to cancel the watch when leaving the loop early.

        One Watch stream of its own, read here without aetcd's watcher and its locks, callbacks and
        queue: every node sees every change, and a bare watcher process spent 575 µs of CPU per change
        through it against 400 µs this way.
        """
        client = self._connected()
        start, end = _prefix_range(prefix)
        create = rpc.WatchCreateRequest(key=start, range_end=end, start_revision=start_revision or 0)
        call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        try:
            with self._map_errors():
                await call.write(rpc.WatchRequest(create_request=create))
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        raise StoreUnavailableError(f"etcd at {','.join(self.endpoints)} ended the watch")
                    if response.compact_revision:
                        raise ClusterError(
                            f"etcd compacted the revisions up to {response.compact_revision}: "
                            f"the watch of {prefix} cannot start at {start_revision}"
                        )
                    if response.canceled:
                        raise StoreUnavailableError(f"etcd canceled the watch: {response.cancel_reason}")
                    for event in response.events:
                        deleted = event.type == rpc.Event.DELETE
                        value = None if deleted else _versioned(event.kv)
                        yield event.kv.key.decode(), value, int(event.kv.mod_revision)
        finally:
            call.cancel()

    async def ping(self, key: str = "\0") -> int:
        """One linearizable read (needs a leader and quorum); returns the store revision.

        It counts `key`: under etcd RBAC, pass a key this client may read (e.g. its cluster prefix).
        """
        response = await self._call("Range", rpc.RangeRequest(key=key.encode(), count_only=True), wait=False)
        return int(response.header.revision)

    async def auth(self, method: str, request: Any) -> Any:
        """One call of etcd's Auth service (`UserAdd`, `RoleGrantPermission`, `AuthEnable`, ...),
        within the timeout, errors mapped; for `cluster.store.rbac`."""
        client = self._connected()
        stub = rpc.AuthStub(client.channel)
        with self._map_errors():
            return await getattr(stub, method)(request, timeout=self.timeout, metadata=client.metadata)

    async def _guarded(
        self,
        key: str,
        expected_revision: int,
        op: Any,
        guard: Guard | None = None,
        queue: tuple[Queue, int] | None = None,
        extra: CompanionWrite | None = None,
    ) -> CasResult:
        """Txn: if `key` (and the guard key, and the `extra` key) are at the expected revisions then
        `op` (and put `extra`'s value) else Get them all. With a `queue` (and its lease): success also
        deletes the writer's ticket; failure also puts it under the lease and lists the queue's tickets
        (keys only)."""
        compares, reads = [], []
        checked = [(key, expected_revision), *([guard] if guard else []), *([extra[:2]] if extra else [])]
        for k, expected in checked:
            if expected < 0:
                raise ValueError(f"expected revision of {k} must be >= 0, not {expected}")
            compares.append(_compare(k, expected))
            reads.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode())))
        success, failure = [op], list(reads)
        if extra is not None:
            put = rpc.PutRequest(key=extra[0].encode(), value=extra[2])
            success.append(rpc.RequestOp(request_put=put))
        if queue is not None:
            (waiting, lease), ticket = queue, queue[0].ticket.encode()
            start, end = _prefix_range(waiting.tickets)
            success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=ticket)))
            failure.append(rpc.RequestOp(request_put=rpc.PutRequest(key=ticket, lease=lease)))
            failure.append(
                rpc.RequestOp(request_range=rpc.RangeRequest(key=start, range_end=end, keys_only=True))
            )
        response = await self._call("Txn", rpc.TxnRequest(compare=compares, success=success, failure=failure))
        revision = int(response.header.revision)
        if response.succeeded:
            return CasResult(True, revision)
        found = [kvs[0] if (kvs := r.response_range.kvs) else None for r in response.responses[: len(reads)]]
        values = [None if kv is None else _versioned(kv) for kv in found]
        tickets: tuple[tuple[str, Versioned], ...] = ()
        if queue is not None:
            tickets = tuple(
                (kv.key.decode(), _versioned(kv)) for kv in response.responses[-1].response_range.kvs
            )
        along = values[-1] if extra is not None else None
        return CasResult(False, revision, values[0], values[1] if guard else None, tickets, along)

    async def _swap(
        self,
        key: str,
        expected: int,
        value: bytes,
        guard: Guard | None,
        queue: Queue | None,
        extra: CompanionWrite | None = None,
    ) -> CasResult:
        """One attempt's Txn: a compare-and-swap of `value` (and `extra`), or a conditional delete for
        DELETE; with `queue`, queued (see `Queue`). A ticket put under a lease etcd no longer knows
        fails the whole Txn ("lease not found"), applying nothing: it goes again unqueued (the session
        grants anew)."""
        if queue is None:
            if value is DELETE:
                return await self.delete(key, expected, guard)
            put = rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))
            return await self._guarded(key, expected, put, guard, extra=extra)
        if value is DELETE:
            if expected < 1:
                raise ValueError(f"delete of {key} needs the revision it read (> 0), not {expected}")
            op = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key.encode()))
        else:
            op = rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))
        lease = queue.lease()
        queue.placed = True  # until a success branch deletes it
        try:
            result = await self._guarded(key, expected, op, guard, (queue, lease), extra)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            queue.lease_ended(lease)
            return await self._guarded(key, expected, op, guard, extra=extra)
        queue.placed = not result.succeeded
        return result

    async def _leave(self, queue: Queue) -> None:
        """Take this writer's ticket out of the queue; when etcd does not answer, its lease ending or
        the next writer's stall check takes it out."""
        with contextlib.suppress(StoreUnavailableError):
            await self._call("DeleteRange", rpc.DeleteRangeRequest(key=queue.ticket.encode()))

    async def _call(self, method: str, request: Any, wait: bool = True, read: bool = False) -> Any:
        """One unary KV call (Range, Txn, DeleteRange) within the timeout, errors mapped.

        With `wait`, the call waits for a connection (a member restarting, a failover to another
        endpoint) instead of failing at once; a read (a Range, or a Txn marked `read`) that loses its
        connection is sent again while time remains. A write is sent once: its outcome is then
        unknown, and `update` reads again.
        """
        client = self._connected()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                with self._map_errors():
                    return await getattr(client.kvstub, method)(
                        request,
                        timeout=max(deadline - loop.time(), 0.01),
                        metadata=client.metadata,
                        wait_for_ready=wait,
                    )
            except StoreUnavailableError:
                if (
                    not (read or method == "Range")
                    or not wait
                    or loop.time() + _UNAVAILABLE_PAUSE >= deadline
                ):
                    raise
                await asyncio.sleep(_UNAVAILABLE_PAUSE)

    def _connected(self) -> Any:
        if self._client is None:
            raise RuntimeError("EtcdStore used before connect() or after close()")
        return self._client

    async def _grpc_target(self) -> str:
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        loop = asyncio.get_running_loop()
        addresses = []
        for endpoint in self.endpoints:
            host, _, port = endpoint.rpartition(":")
            with self._map_errors():
                infos = await loop.getaddrinfo(
                    host, int(port), family=socket.AF_INET, type=socket.SOCK_STREAM
                )
            addresses.append(f"{infos[0][4][0]}:{port}")
        return "ipv4:" + ",".join(addresses)

    @contextlib.contextmanager
    def _map_errors(self) -> Iterator[None]:
        """Turn every "etcd cannot serve us" failure into a one-line StoreUnavailableError."""
        try:
            yield
        except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError, TimeoutError, OSError) as exc:
            status = _status(exc)
            if status is None or (status[0] not in _UNAVAILABLE and status[0] not in _REFUSED):
                raise
            code, details = status
            where, details = ",".join(self.endpoints), " ".join(details.split())
            where += " (TLS)" if self.tls else ""
            if code in _REFUSED:
                raise StoreAccessError(
                    f"etcd at {where} refused this client ({self._identity()}): {details}"
                ) from exc
            raise StoreUnavailableError(
                f"etcd at {where} {_UNAVAILABLE[code]} (timeout {self.timeout:g}s): {details}"
            ) from exc

    def _identity(self) -> str:
        """The client certificate's CN (etcd's user name for it), for error messages."""
        if self.tls is None:
            return "no client certificate"
        try:
            cert = x509.load_pem_x509_certificate(self.tls.cert.read_bytes())
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        except (OSError, ValueError):
            return f"certificate {self.tls.cert}"
        return f"user {names[0].value!s}" if names else f"certificate {self.tls.cert}"


class _TLSClient(aetcd.Client):  # type: ignore[misc]
    """An aetcd.Client over a TLS channel.

    aetcd 1.0's `Client.connect()` only builds `insecure_channel`; this `connect()` mirrors it with
    `grpc.aio.secure_channel` and builds the same stubs and watcher. It leaves out aetcd's
    username/password login, which authsim does not use (etcd authenticates us by the certificate).
    No await runs before `_connected` is set, so aetcd's guard for concurrent connects is not needed.
    """

    def __init__(self, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        self.channel = grpc.aio.secure_channel(target, self._credentials, options=list(self._options.items()))
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status behind a gRPC, aetcd, timeout or resolver error, if there is one."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code(), exc.details() or ""
    if isinstance(exc, aetcd.exceptions.ClientError):
        if exc.__cause__ is not None:
            return _status(exc.__cause__)
        code = _AETCD_CODES.get(type(exc))
        return (code, str(exc) or type(exc).__name__) if code else None
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "timed out"
    if isinstance(exc, OSError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    return None


def _companion_write(
    companion: Companion | None, read: tuple[Versioned | None, int] | None
) -> CompanionWrite | None:
    """What one attempt writes of `companion`, from the newer of its caller's copy and `read` (the
    value a failure branch read, and that Txn's revision); None when nothing."""
    if companion is None:
        return None
    seen = held = companion.latest()
    if read is not None:
        value, revision = read
        if held is None or held.mod_revision < (value.mod_revision if value else revision):
            seen = value
    new = companion.fn(seen)
    return None if new is None else (companion.key, seen.mod_revision if seen else 0, new)


def _compare(key: str, expected_revision: int) -> Any:
    """The Txn compare "`key` is at `expected_revision`" (0: the key is absent)."""
    if expected_revision == 0:
        return rpc.Compare(
            key=key.encode(), target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
        )
    return rpc.Compare(
        key=key.encode(), target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=expected_revision
    )


def _refused_in_doubt(
    key: str, lost: StoreUnavailableError, current: Versioned | None
) -> OutcomeUnknownError:
    """A write's answer was lost and the change is refused on the value now stored: maybe because of
    that very write (overwritten since, or a delete), maybe not."""
    now = "absent" if current is None else f"at revision {current.mod_revision}"
    return OutcomeUnknownError(
        f"outcome unknown: etcd's answer to a write of {key} was lost ({lost}) and the key is now {now}: "
        "the write may or may not have landed"
    )


def _versioned(kv: Any) -> Versioned:
    return Versioned(
        value=bytes(kv.value), mod_revision=int(kv.mod_revision), create_revision=int(kv.create_revision)
    )


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """The [key, range_end) of every key starting with `prefix`; "" means every key."""
    if not prefix:
        return b"\0", b"\0"
    return prefix.encode(), aetcd.utils.prefix_range_end(prefix.encode())
