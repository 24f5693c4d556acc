"""Shared fixtures: a real etcd on free loopback ports (TLS only, client certificates required), an
EtcdStore per test, async test functions."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.store import EtcdStore, EtcdTLS
from tests.etcd_pki import EtcdPKI, etcd_pki


@pytest.fixture(scope="session")
def session_etcd_pki(tmp_path_factory: pytest.TempPathFactory) -> EtcdPKI:
    return etcd_pki(tmp_path_factory.mktemp("etcd-pki"))


@pytest.fixture(scope="session")
def etcd_tls(session_etcd_pki: EtcdPKI) -> EtcdTLS:
    """A client identity the session etcd accepts (CN admin, from its etcd CA)."""
    return session_etcd_pki.client


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory, session_etcd_pki: EtcdPKI) -> Iterator[EtcdServer]:
    """One real etcd for the session, TLS only with client certificates (`etcd_tls`); a missing binary
    fails the tests (ClusterError), never skips."""
    server = EtcdServer.start(tmp_path_factory.mktemp("etcd") / "data", tls=session_etcd_pki.member)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_members(tmp_path: Path) -> Iterator[list[EtcdServer]]:
    """Three members, TLS only for clients and peers (certificates from `etcd_pki`'s etcd CA)."""
    servers = EtcdServer.start_cluster(tmp_path / "etcd", 3, tls=etcd_pki(tmp_path / "etcd-pki").member)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The loop that runs this test's async fixtures and its `async def` body."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test uses; the `store` fixture wipes it afterwards."""
    return f"/test/{uuid.uuid4().hex}/"


@pytest.fixture
def store(
    etcd_server: EtcdServer, etcd_tls: EtcdTLS, key_prefix: str, event_loop: asyncio.AbstractEventLoop
) -> Iterator[EtcdStore]:
    """A connected EtcdStore on the session etcd; everything under `key_prefix` is deleted after."""
    etcd_store = EtcdStore([etcd_server.endpoint], tls=etcd_tls)
    event_loop.run_until_complete(etcd_store.connect())
    yield etcd_store
    event_loop.run_until_complete(etcd_store.delete_prefix(key_prefix))
    event_loop.run_until_complete(etcd_store.close())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests on the `event_loop` fixture when they use it, else on a fresh loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = inspect.signature(pyfuncitem.obj).parameters
    coroutine = pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names})
    loop = pyfuncitem.funcargs.get("event_loop")
    if isinstance(loop, asyncio.AbstractEventLoop):
        loop.run_until_complete(coroutine)
    else:
        asyncio.run(coroutine)
    return True
