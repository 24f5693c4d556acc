"""Tests of cluster.store and cluster.etcd_server against a real etcd on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from authsim.cluster.errors import (
    AlreadyExistsError,
    ClusterError,
    ConflictError,
    StoreUnavailableError,
    ValidationError,
)
from authsim.cluster.local.etcd_server import EtcdServer, find_etcd_binary
from authsim.cluster.store import DELETE, Companion, EtcdStore, EtcdTLS, UpdateResult, Versioned
from tests.etcd_pki import EtcdPKI, etcd_pki

ROOT = Path(__file__).resolve().parent.parent


def appender(item: str) -> Callable[[Versioned | None], bytes | None]:
    """An update() function adding `item` to a JSON list; None (no write) when already there."""

    def add(current: Versioned | None) -> bytes | None:
        items: list[str] = json.loads(current.value) if current else []
        return None if item in items else json.dumps([*items, item]).encode()

    return add


async def test_create_if_absent_succeeds_once(store: EtcdStore, key_prefix: str) -> None:
    key = key_prefix + "ca"
    revision = await store.create(key, b"first")
    with pytest.raises(AlreadyExistsError, match=f"{key} already exists \\(revision {revision}\\)"):
        await store.create(key, b"second")
    assert await store.get(key) == Versioned(b"first", revision, revision)


async def test_cas_with_stale_revision_returns_current_value(store: EtcdStore, key_prefix: str) -> None:
    key = key_prefix + "override"
    first = await store.create(key, b"v1")
    second = await store.compare_and_swap(key, first, b"v2")
    assert second.succeeded and second.revision > first

    stale = await store.compare_and_swap(key, first, b"v3")
    assert not stale.succeeded
    assert stale.current == await store.get(key) == Versioned(b"v2", second.revision, first)

    assert (await store.compare_and_swap(key, 0, b"v4")).current == stale.current
    absent = await store.compare_and_swap(key_prefix + "absent", 7, b"x")
    assert not absent.succeeded and absent.current is None
    assert await store.get(key_prefix + "absent") is None


async def test_delete_with_stale_revision_refused(store: EtcdStore, key_prefix: str) -> None:
    key = key_prefix + "override"
    first = await store.create(key, b"v1")
    second = (await store.compare_and_swap(key, first, b"v2")).revision

    refused = await store.delete(key, first)
    assert not refused.succeeded and refused.current == Versioned(b"v2", second, first)
    assert await store.get(key) == refused.current

    deleted = await store.delete(key, second)
    assert deleted.succeeded and deleted.revision > second
    assert await store.get(key) is None


async def test_get_prefix_sorted_by_key(store: EtcdStore, key_prefix: str) -> None:
    for name in ("b", "a", "c/d"):
        await store.create(key_prefix + name, name.encode())
    await store.create(key_prefix.rstrip("/") + "-sibling", b"not under the prefix")
    found = await store.get_prefix(key_prefix)
    assert [(key, v.value) for key, v in found] == [
        (key_prefix + "a", b"a"),
        (key_prefix + "b", b"b"),
        (key_prefix + "c/d", b"c/d"),
    ]
    await store.delete_prefix(key_prefix.rstrip("/") + "-sibling")


async def test_update_concurrent_writers_lose_nothing(store: EtcdStore, key_prefix: str) -> None:
    key = key_prefix + "list"

    async def writer(name: str) -> list[UpdateResult]:
        return [await store.update(key, appender(f"{name}-{i}")) for i in range(25)]

    results = await asyncio.gather(*(writer(f"w{n}") for n in range(8)))
    current = await store.get(key)
    assert current is not None
    final = json.loads(current.value)
    assert len(final) == 8 * 25 and Counter(final).most_common(1)[0][1] == 1
    flat = [result for per_writer in results for result in per_writer]
    assert all(result.changed for result in flat)
    assert max(result.attempts for result in flat) > 1
    assert max(result.revision for result in flat) == current.mod_revision


async def test_update_of_present_item_writes_nothing(store: EtcdStore, key_prefix: str) -> None:
    key = key_prefix + "list"
    written = await store.update(key, appender("a"))
    again = await store.update(key, appender("a"))
    assert (again.changed, again.attempts, again.revision) == (False, 1, written.revision)
    stored = await store.get(key)
    assert stored is not None and stored.value == b'["a"]'
    assert written.changed and written.attempts == 1


async def test_update_where_fn_raises_writes_nothing(store: EtcdStore, key_prefix: str) -> None:
    key = key_prefix + "override"
    await store.create(key, b"valid")
    before = await store.get(key)

    def invalid(current: Versioned | None) -> bytes | None:
        raise ValidationError(["spec.certificate_overrides[0].certificate: missing KeyUsage cRLSign"])

    with pytest.raises(ValidationError, match="cRLSign"):
        await store.update(key, invalid)
    assert await store.get(key) == before


async def test_update_gives_up_when_every_attempt_conflicts(
    store: EtcdStore, key_prefix: str, etcd_server: EtcdServer, etcd_tls: EtcdTLS
) -> None:
    key = key_prefix + "busy"
    await store.create(key, b"0")

    async def other_writer_put() -> None:
        async with EtcdStore([etcd_server.endpoint], tls=etcd_tls) as other:
            await other.update(key, lambda current: str(int(current.value) + 1).encode() if current else b"1")

    def change_behind_our_back(current: Versioned | None) -> bytes:
        # Another client writes between our read and our CAS, so every CAS fails.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, other_writer_put()).result()
        return b"ours"

    with pytest.raises(ConflictError, match=f"gave up updating {key} after 3 attempts") as raised:
        await store.update(key, change_behind_our_back, max_attempts=3)
    assert raised.value.actual_revision > raised.value.expected_revision > 0
    current = await store.get(key)
    assert current is not None and current.value == b"3"


async def test_watch_prefix_yields_puts_and_deletes(store: EtcdStore, key_prefix: str) -> None:
    start = await store.ping() + 1
    revision = await store.create(key_prefix + "a", b"1")
    deleted = await store.delete(key_prefix + "a", revision)
    events = []
    async with contextlib.aclosing(store.watch_prefix(key_prefix, start_revision=start)) as watch:
        async for event in watch:
            events.append(event)
            if len(events) == 2:
                break
    assert events == [
        (key_prefix + "a", Versioned(b"1", revision, revision), revision),
        (key_prefix + "a", None, deleted.revision),
    ]


def test_update_from_separate_processes_loses_nothing(
    etcd_server: EtcdServer, etcd_tls: EtcdTLS, key_prefix: str
) -> None:
    key, writers, count = key_prefix + "list", 4, 50
    procs = [
        subprocess.Popen(
            [*WORKER, etcd_server.endpoint, *_tls_args(etcd_tls), key, f"p{n}", str(count)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    try:
        for proc in procs:  # every writer connected before any starts: they really overlap
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert all(proc.returncode == 0 for proc in procs)

    acked = [item for report in reports for item in report["acked"]]
    final = asyncio.run(_read_list(etcd_server.endpoint, etcd_tls, key))
    assert sorted(final) == sorted(acked)
    assert len(acked) == writers * count
    assert max(attempts for report in reports for attempts in report["attempts"]) > 1


WORKER = [sys.executable, "-m", "tests.test_store"]


def _tls_args(tls: EtcdTLS) -> list[str]:
    return [str(tls.cacert), str(tls.cert), str(tls.key)]


async def _read_list(endpoint: str, tls: EtcdTLS, key: str) -> list[str]:
    async with EtcdStore([endpoint], tls=tls) as store:
        current = await store.get(key)
        await store.delete_prefix(key)
    assert current is not None
    items: list[str] = json.loads(current.value)
    return items


async def _append_worker(endpoint: str, tls: EtcdTLS, key: str, writer: str, count: int) -> None:
    """One writer process: connect, say ready, wait for go, append `count` items, report as JSON."""
    acked, attempts = [], []
    async with EtcdStore([endpoint], tls=tls) as store:
        await store.ping()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for i in range(count):
            try:
                result = await store.update(key, appender(f"{writer}-{i}"))
            except ConflictError:
                continue  # not acknowledged: the final list must not contain it either
            acked.append(f"{writer}-{i}")
            attempts.append(result.attempts)
    print(json.dumps({"acked": acked, "attempts": attempts}), flush=True)


def test_store_unavailable_while_etcd_down_then_recovers(tmp_path: Path) -> None:
    pki = etcd_pki(tmp_path / "etcd-pki")
    server = EtcdServer.start(tmp_path / "etcd" / "data", tls=pki.member)
    try:
        asyncio.run(_down_and_up(server, pki))
    finally:
        server.stop()


async def _down_and_up(server: EtcdServer, pki: EtcdPKI) -> None:
    timeout = 2.0
    async with EtcdStore([server.endpoint], timeout=timeout, tls=pki.client) as store:
        revision = await store.create("/kept", b"survives a restart")
        server.stop()
        # The health probe fails at once; reads and writes wait for etcd, at most the timeout.
        calls = [
            (store.ping(), 0.5),
            (store.get("/kept"), timeout + 0.5),
            (store.compare_and_swap("/kept", revision, b"x"), timeout + 0.5),
        ]
        for call, limit in calls:
            started = time.monotonic()
            with pytest.raises(
                StoreUnavailableError,
                match=rf"etcd at {server.endpoint} \(TLS\) (unreachable|did not answer in time)",
            ) as raised:
                await call
            assert time.monotonic() - started < limit
            assert "\n" not in str(raised.value)

        restarted = EtcdServer.start(server.data_dir, server.client_port, server.peer_port, tls=pki.member)
        try:
            assert await store.get("/kept") == Versioned(b"survives a restart", revision, revision)
            assert (await store.compare_and_swap("/kept", revision, b"after")).succeeded
        finally:
            restarted.stop()


async def test_a_first_call_gets_through_a_connection_slow_to_set_up(
    etcd_server: EtcdServer, etcd_tls: EtcdTLS
) -> None:
    """On a busy machine setting up a connection (TCP, TLS, HTTP/2) can take much longer than 100 ms:
    a call that does not wait for a connection (ping) still succeeds when the first one takes 0.5 s."""
    host, port = etcd_server.endpoint.rsplit(":", 1)

    async def slow_relay(client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        from_etcd, to_etcd = await asyncio.open_connection(host, int(port))
        await asyncio.gather(_pipe(client, to_etcd), _pipe(from_etcd, to_client))

    relay = await asyncio.start_server(slow_relay, "127.0.0.1", 0)
    try:
        endpoint = f"127.0.0.1:{relay.sockets[0].getsockname()[1]}"
        async with EtcdStore([endpoint], tls=etcd_tls) as store:
            assert await store.ping() > 0
    finally:
        relay.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def test_find_etcd_binary_missing_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match="sudo apt-get install etcd-server"):
        find_etcd_binary()
    with pytest.raises(ClusterError, match="--etcd host:port"):
        EtcdServer.start(tmp_path / "etcd" / "data")


def test_start_on_a_busy_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port 127.0.0.1:{port} is already in use"):
            EtcdServer.start(tmp_path / "etcd" / "data", client_port=port)


if __name__ == "__main__":
    endpoint, cacert, cert, key_file, key, writer, count = sys.argv[1:]
    tls = EtcdTLS(Path(cacert), Path(cert), Path(key_file))
    asyncio.run(_append_worker(endpoint, tls, key, writer, int(count)))


async def test_update_can_delete_with_the_same_conflict_handling(store: EtcdStore, key_prefix: str) -> None:
    key = key_prefix + "gone"
    await store.create(key, b"v1")
    stale = await store.get(key)
    await store.compare_and_swap(key, stale.mod_revision if stale else 0, b"v2")  # changed behind our back
    seen: list[bytes | None] = []

    def remove(current: Versioned | None) -> bytes | None:
        seen.append(current.value if current else None)
        return DELETE if current is not None else None

    result = await store.update(key, remove, known=(stale,))
    assert result.changed and result.attempts == 2 and seen == [b"v1", b"v2"]
    assert await store.get(key) is None
    assert (await store.update(key, remove)).changed is False  # already gone: nothing to do


async def test_update_guarded_goes_round_again_when_the_guard_key_changed(
    store: EtcdStore, key_prefix: str
) -> None:
    """A write checked against another key (the CA) lands only if that key is still as checked: when it
    changed, the Txn's failure branch brings its new value and the check runs again on it."""
    key, guard_key = key_prefix + "override", key_prefix + "ca"
    await store.create(guard_key, b"limit 1")
    stale_guard = await store.get(guard_key)
    assert stale_guard is not None
    await store.compare_and_swap(guard_key, stale_guard.mod_revision, b"limit 0")  # e.g. a rotation
    seen: list[bytes] = []

    def within_limit(current: Versioned | None, guard: Versioned | None) -> bytes | None:
        assert guard is not None
        seen.append(guard.value)
        if guard.value == b"limit 0":
            raise ValidationError(["spec.certificate_overrides[0]: not allowed by the CA any more"])
        return b"entry"

    with pytest.raises(ValidationError, match="not allowed by the CA any more"):
        await store.update_guarded(key, guard_key, within_limit, known=(None, stale_guard))
    assert seen == [b"limit 1", b"limit 0"]  # the stale check's write was refused by the Txn
    assert await store.get(key) is None

    # Without the guard key changing, the same write lands in one Txn.
    current_guard = await store.get(guard_key)
    result = await store.update_guarded(
        key, guard_key, lambda current, guard: b"entry", known=(None, current_guard)
    )
    assert (result.changed, result.attempts) == (True, 1)


async def test_a_companion_lands_in_the_same_txn_and_only_as_its_fn_saw_it(
    store: EtcdStore, key_prefix: str
) -> None:
    """An update's companion key (an entry's CRL) is written in the key's own Txn, at one revision, and
    compared too: written meanwhile by someone else (a stale cached copy), the whole Txn fails and the
    next attempt gives `fn` the value its failure branch read. `fn` returning None leaves it out."""
    key, crls = key_prefix + "override", key_prefix + "crls"
    await store.create(crls, b"crl 1")
    cached = await store.get(crls)
    assert cached is not None
    await store.compare_and_swap(crls, cached.mod_revision, b"crl 2")  # e.g. the keeper signed again
    seen: list[bytes | None] = []

    def along(current: Versioned | None) -> bytes | None:
        seen.append(current.value if current else None)
        return (current.value if current else b"") + b" + entry"

    companion = Companion(crls, along, lambda: cached)
    result = await store.update(key, lambda _: b"entry", known=(None,), companion=companion)
    assert seen == [b"crl 1", b"crl 2"]  # the first Txn compared the stale copy: nothing of it landed
    assert (result.attempts, result.companion) == (2, b"crl 2 + entry")
    stored, stored_crls = await store.get_both(key, crls)
    assert stored is not None and stored_crls is not None
    assert (stored.value, stored_crls.value) == (b"entry", b"crl 2 + entry")
    assert stored.mod_revision == stored_crls.mod_revision == result.revision

    left_out = Companion(crls, lambda _: None, lambda: stored_crls)
    result = await store.update(key, lambda _: b"entry 2", companion=left_out)
    assert (result.changed, result.companion) == (True, None)
    assert await store.get(crls) == stored_crls


async def test_update_does_not_trust_a_cached_value_for_errors_or_no_ops(
    store: EtcdStore, key_prefix: str
) -> None:
    """A cache (`known`) saying "already there" or "invalid" is checked against etcd before it is
    believed: a stale cache neither reports an unwritten value as written nor refuses a valid write."""
    key = key_prefix + "list"
    await store.create(key, b'["a"]')
    stale = await store.get(key)
    assert stale is not None
    await store.compare_and_swap(key, stale.mod_revision, b"[]")  # "a" removed by another writer

    result = await store.update(key, appender("a"), known=(stale,))  # the stale cache holds "a"
    assert result.changed and result.attempts == 1
    stored = await store.get(key)
    assert stored is not None and stored.value == b'["a"]'

    def refuse_if_a_present(current: Versioned | None) -> bytes | None:
        if current is not None and b'"a"' in current.value:
            raise ValidationError(["list: holds a"])
        return b'["b"]'

    await store.compare_and_swap(key, stored.mod_revision, b"[]")
    written = await store.update(key, refuse_if_a_present, known=(stored,))
    assert written.changed
    assert (await store.get(key) or stale).value == b'["b"]'


async def test_get_both_reads_two_keys_at_one_revision(store: EtcdStore, key_prefix: str) -> None:
    first, second = key_prefix + "override", key_prefix + "ca"
    await store.create(first, b"o1")
    assert await store.get_both(first, second) == (await store.get(first), None)
    await store.create(second, b"c1")
    both = await store.get_both(first, second)
    assert both == (await store.get(first), await store.get(second))
