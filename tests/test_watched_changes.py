"""What a node does with each change it watches (issue 17): every node sees every change, so a change
that alters nothing a node uses costs it little, and nothing it should notice is missed.

The override readings are pure functions over real certificates; the watch and the view run against
a real etcd of their own (the compaction test compacts it, which the session etcd must never be).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aetcd import rpc

from authsim.auth_node.cluster_view import SETTLE, SETTLE_MAX, ClusterView
from authsim.cluster.errors import ClusterError
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride
from authsim.cluster.resources.stored import read_override
from authsim.cluster.store import EtcdStore, Versioned
from authsim.cluster.store.keys import cluster_prefix, override_key
from tests.certs import external_ca, override_cert, rsa_key

CLUSTER = "mycluster"


@functools.cache
def _entries() -> tuple[CertificateOverride, ...]:
    """Two override entries with real certificates (made once: a certificate's serial is random)."""
    chain = external_ca()
    certificates = (override_cert(rsa_key(slot), chain[0]).pem for slot in (1, 2))
    return tuple(CertificateOverride(certificate=pem) for pem in certificates)


def _stored(status: dict[str, object], **entry_fields: object) -> bytes:
    """A stored windows override of the two entries, with `status`; `entry_fields` set on the first
    entry's stored mapping as given (types too)."""
    entries = tuple(replace(e, public_key=e.key_hash) for e in _entries())
    resource = CertAuthorityOverride(CLUSTER, "windows", certificate_overrides=entries)
    data = json.loads(resource.to_json())
    data["spec"]["certificate_overrides"][0].update(entry_fields)
    data["status"] = status
    return json.dumps(data).encode()


def test_a_status_only_change_is_the_last_reading_at_the_new_revision() -> None:
    first = read_override(_stored({"last_write": {"node": "auth1"}}), 10, CLUSTER, "windows")
    assert first.valid, first.problems
    again = read_override(_stored({"last_write": {"node": "auth2"}}), 11, CLUSTER, "windows", first)
    assert again.valid
    assert again.resource.revision == 11
    assert again.resource.last_write == {"node": "auth2"}
    # the entries are the very objects already read: nothing parsed or checked again
    assert again.resource.certificate_overrides is first.resource.certificate_overrides


@pytest.mark.parametrize(
    ("disabled", "problem"),
    [
        (1, "spec.certificate_overrides[0].disabled: must be true or false, got 1"),
        (False, ""),  # a real change of content: read again, and it passes
    ],
)
def test_a_content_change_equal_in_python_but_not_in_json_is_read_again(
    disabled: object, problem: str
) -> None:
    """`1 == True` in Python: the comparison with the last reading must not take one for the other."""
    first = read_override(_stored({}, disabled=True), 10, CLUSTER, "windows")
    assert first.valid, first.problems
    changed = read_override(_stored({}, disabled=disabled), 11, CLUSTER, "windows", first)
    assert list(changed.problems) == ([problem] if problem else [])


async def test_a_watch_from_a_compacted_revision_fails_naming_it(tmp_path: Path) -> None:
    etcd = EtcdServer.start(tmp_path / "etcd")
    try:
        async with EtcdStore([etcd.endpoint]) as store:
            first = await store.create("/w/a", b"1")
            await store.compare_and_swap("/w/a", first, b"2")
            latest = await store.ping()
            await store._call("Compact", rpc.CompactionRequest(revision=latest, physical=True))
            with pytest.raises(ClusterError, match=f"compacted the revisions up to {latest}"):
                async with contextlib.aclosing(store.watch_prefix("/w/", first)) as changes:
                    async for _ in changes:
                        pass
    finally:
        etcd.stop()


@contextlib.asynccontextmanager
async def _watching_view(
    directory: Path, settle: float = SETTLE, settle_max: float = SETTLE_MAX
) -> AsyncIterator[tuple[EtcdStore, ClusterView]]:
    """A store on an etcd of its own, and a ClusterView of it, current and watching; all stopped after."""
    etcd = EtcdServer.start(directory / "etcd")
    try:
        async with EtcdStore([etcd.endpoint]) as store:
            view = ClusterView(store, CLUSTER, settle=settle, settle_max=settle_max)
            watching = asyncio.create_task(view.run())
            try:
                await view.wait_ready(10)
                yield store, view
            finally:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
    finally:
        etcd.stop()


async def test_background_work_is_released_once_per_burst_of_changes(tmp_path: Path) -> None:
    settle = 0.5  # long, so that a burst falls within it on a busy machine too
    async with _watching_view(tmp_path, settle, settle_max=5.0) as (store, view):
        loop = asyncio.get_running_loop()
        unused = cluster_prefix(CLUSTER) + "expiry_alerts/test/"  # a kind the view keeps nothing of
        rounds, seen = 0, view.revision
        changed = loop.time()
        burst = await asyncio.gather(*(store.create(f"{unused}{i}", b"x") for i in range(40)))
        while await view.next_change(seen, 3 * settle):
            seen = view.revision
            rounds += 1
            if seen >= max(burst):
                break
        took = loop.time() - changed
        assert seen >= max(burst)
        # one release for the burst (two if it outlasted the period), each after the period
        assert rounds <= 1 + int(took / settle), f"{rounds} rounds in {took:.2f} s for 40 changes"
        assert took >= settle * 0.9, f"background work ran {took:.2f} s after the burst began"


async def _changes_spaced(store: EtcdStore, count: int, spacing: float) -> list[float]:
    """`count` changes of a key the view keeps nothing of, `spacing` seconds apart: the loop time of
    each once written."""
    loop = asyncio.get_running_loop()
    unused = cluster_prefix(CLUSTER) + "expiry_alerts/test/"
    written = []
    for i in range(count):
        await store.create(f"{unused}{i}", b"x")
        written.append(loop.time())
        await asyncio.sleep(spacing)
    return written


async def test_background_work_waits_until_changes_stop_coming(tmp_path: Path) -> None:
    """Changes closer together than the settle period are one burst, however long it lasts (up to
    settle_max): N appends some 20 ms apart are one round of background work, not N."""
    settle = 0.5
    async with _watching_view(tmp_path, settle, settle_max=10.0) as (store, view):
        loop = asyncio.get_running_loop()
        seen = view.revision
        writing = asyncio.create_task(_changes_spaced(store, 16, 0.05))  # 0.8 s, longer than settle
        assert await view.next_change(seen, 10)
        released = loop.time()
        written = await writing
        assert view.revision >= seen + 16, "released before the last change of the burst was seen"
        assert released >= written[-1] + settle * 0.9, f"released {released - written[-1]:.2f} s after it"


async def test_background_work_runs_within_settle_max_of_changes_that_never_stop(tmp_path: Path) -> None:
    """A stream of changes that never pauses does not starve background work: it runs settle_max
    after the first change, while changes still come."""
    settle, settle_max = 0.5, 1.0
    async with _watching_view(tmp_path, settle, settle_max) as (store, view):
        loop = asyncio.get_running_loop()
        seen = view.revision
        writing = asyncio.create_task(_changes_spaced(store, 60, 0.05))  # 3 s of changes
        try:
            assert await view.next_change(seen, 10)
            released = loop.time()
            assert not writing.done(), "released only once the changes stopped"
        finally:
            written = await writing
        took = released - written[0]
        assert settle_max * 0.9 <= took < settle_max + 1.0, f"released {took:.2f} s after the first change"


async def test_an_own_write_held_before_the_watch_shows_it_is_not_undone_by_older_changes(
    tmp_path: Path,
) -> None:
    """A node takes its own override write into its view at once (read-your-writes without waiting for
    its watch); changes of that key the watch shows afterwards but from before it are older: ignored."""
    async with _watching_view(tmp_path) as (store, view):
        key = override_key(CLUSTER, "windows")
        ours = await store.ping() + 3  # as if this node's write landed 3 revisions from now
        assert view.wrote("windows", Versioned(b"ours", ours, ours), ours)
        revision = await store.create(key, b"older 1")
        for i in range(2, 5):
            revision = (await store.compare_and_swap(key, revision, f"older {i}".encode())).revision
            if revision <= ours:
                assert await view.caught_up(revision, 5)
                assert view.stored_overrides["windows"].value == b"ours"
        assert revision > ours and await view.caught_up(revision, 5)
        assert view.stored_overrides["windows"] == Versioned(b"older 4", revision, ours - 2)
