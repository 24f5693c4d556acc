"""Honest write outcomes: etcd's answer to a write is lost (a proxy drops etcd's replies, then resets the
connections). A write that landed reports success, found by the request id stored in status.last_write;
one whose fate cannot be known says "outcome unknown" with what to check, never a refusal of itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.cli.common import OUTCOME_UNKNOWN_EXIT
from authsim.cluster.cli.runner import CliResult
from authsim.cluster.errors import NotFoundError, OutcomeUnknownError, StoreUnavailableError, ValidationError
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.resources.override import CertAuthorityOverride
from authsim.cluster.store import DELETE, EtcdStore, EtcdTLS, Versioned
from authsim.cluster.store.keys import override_key
from tests.etcd_pki import etcd_pki
from tests.fault_proxy import FaultProxy

AUTHCTL = Path(sys.executable).parent / "authctl"
KEY = override_key("mycluster", "windows")
EMPTY = (
    "kind: cert_authority_override\nsub_kind: windows\nversion: v1\nmetadata:\n  name: mycluster\nspec: {}\n"
)
WAIT = 20.0  # seconds a test waits for a write to show in etcd


@dataclass(frozen=True)
class Rig:
    """A one-node cluster whose etcd connection runs through `proxy`; `etcd` and `tls` reach etcd directly."""

    cluster: LocalCluster
    proxy: FaultProxy
    etcd: EtcdServer
    tls: EtcdTLS
    directory: Path

    def stored(self) -> Versioned | None:
        return asyncio.run(_get(self.etcd.endpoint, self.tls, KEY))

    def wait_stored(
        self, condition: Callable[[Versioned | None], bool], running: Authctl
    ) -> Versioned | None:
        """The value of KEY once `condition` holds, read from etcd itself (past the proxy)."""
        deadline = time.monotonic() + WAIT
        found = None
        while time.monotonic() < deadline:
            found = self.stored()
            if condition(found):
                return found
            assert running.process.poll() is None, f"authctl ended first: {running.result()}"
            time.sleep(0.05)
        raise AssertionError(f"{KEY} never met the condition; last value {found}")

    def write_directly(self, expected: Versioned, value: bytes) -> Versioned:
        """Another writer: `value` at KEY over `expected`, straight into etcd."""

        async def swap() -> None:
            async with EtcdStore([self.etcd.endpoint], tls=self.tls) as store:
                assert (await store.compare_and_swap(KEY, expected.mod_revision, value)).succeeded

        asyncio.run(swap())
        written = self.stored()
        assert written is not None
        return written

    def node_key(self) -> str:
        with self.cluster.client("node1") as client:
            key: str = next(k.public_key_hash for k in client.node_status().keys if k.ca_type == "windows")
        return key


async def _get(endpoint: str, tls: EtcdTLS, key: str) -> Versioned | None:
    async with EtcdStore([endpoint], tls=tls) as store:
        return await store.get(key)


class Authctl:
    """`authctl --dir D --node node1 ARGS` running as a process of its own (killed if left running)."""

    def __init__(self, rig: Rig, *args: str, editor: str = "") -> None:
        argv = [str(AUTHCTL), "--dir", str(rig.cluster.directory), "--node", "node1", *args]
        env = {**os.environ, **({"EDITOR": editor} if editor else {})}
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=rig.directory
        )

    def result(self) -> CliResult:
        stdout, stderr = self.process.communicate(timeout=60)
        return CliResult(self.process.returncode, stdout, stderr)

    def __enter__(self) -> Authctl:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    directory = tmp_path_factory.mktemp("outcomes")
    pki = etcd_pki(directory / "etcd-pki")
    etcd = EtcdServer.start(directory / "etcd" / "data", tls=pki.member)
    try:
        with (
            FaultProxy(etcd.endpoint) as proxy,
            local_cluster(
                directory / "c", nodes=1, etcd_endpoints=[proxy.endpoint], etcd_tls=pki.client
            ) as cluster,
        ):
            yield Rig(cluster, proxy, etcd, pki.client, directory)
    finally:
        etcd.stop()


@pytest.fixture
def fresh(rig: Rig) -> Iterator[Rig]:
    """The node serving, no ca_overrides/windows (removed through the node, so its view has it);
    forwarding whole again after the test."""
    with rig.cluster.client("node1") as client:
        deadline = time.monotonic() + WAIT
        while client.health() != "SERVING":  # a fault before it may have left the node NOT_SERVING
            assert time.monotonic() < deadline, "node1 not SERVING again"
            time.sleep(0.1)
    removed = rig.cluster.authctl("rm", "ca_overrides/windows", "--force", node="node1")
    assert rig.stored() is None, removed
    try:
        yield rig
    finally:
        rig.proxy.reset()


def create(rig: Rig, text: str) -> Versioned:
    """Store `text` as ca_overrides/windows through the node (which then holds it in its view)."""
    path = rig.directory / "resource.yaml"
    path.write_text(text)
    result = rig.cluster.authctl("create", "-f", str(path), node="node1")
    assert result.exit_code == 0, result.stderr
    stored = rig.stored()
    assert stored is not None
    return stored


def last_write(found: Versioned | None) -> dict[str, object]:
    assert found is not None
    status = json.loads(found.value).get("status") or {}
    record: dict[str, object] = status.get("last_write") or {}
    return record


def with_disabled_entry(key: str) -> str:
    return EMPTY.replace(
        "spec: {}", f"spec:\n  certificate_overrides:\n  - public_key: {key}\n    disabled: true"
    )


def test_create_whose_answer_is_lost_reports_created(fresh: Rig) -> None:
    path = fresh.directory / "create.yaml"
    path.write_text(EMPTY)
    fresh.proxy.drop_replies()
    with Authctl(fresh, "create", str(path)) as running:
        landed = fresh.wait_stored(lambda found: found is not None, running)
        fresh.proxy.reset()
        result = running.result()
    assert landed is not None
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"cert_authority_override windows created (revision {landed.mod_revision})\n"
    assert re.fullmatch(r"[0-9a-f]{32}", str(last_write(landed)["request_id"]))  # authctl's uuid4 hex
    assert fresh.stored() == landed


def test_delete_override_whose_answer_is_lost_reports_deleted(fresh: Rig) -> None:
    key = fresh.node_key()
    before = create(fresh, with_disabled_entry(key))
    fresh.proxy.drop_replies()
    with Authctl(fresh, "auth", "delete-override", "--type=windows", "--public-key", key) as running:
        landed = fresh.wait_stored(lambda found: found != before, running)
        fresh.proxy.reset()
        result = running.result()
    assert landed is not None
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"override {key[:16]} deleted: revision {landed.mod_revision}, 1 attempt\n"
    assert json.loads(landed.value)["spec"] == {}


def test_edit_whose_answer_is_lost_reports_updated(fresh: Rig) -> None:
    key = fresh.node_key()
    before = create(fresh, EMPTY)
    edited, go = fresh.directory / "edited", fresh.directory / "go"
    edited.unlink(missing_ok=True)
    go.unlink(missing_ok=True)
    editor = fresh.directory / "editor.py"
    editor.write_text(  # adds a staged entry, says so, and saves once the test has etcd's replies dropped
        "import pathlib, sys, time\n"
        "text = pathlib.Path(sys.argv[1]).read_text()\n"
        f"entry = 'spec:\\n  certificate_overrides:\\n  - public_key: {key}\\n    disabled: true\\n'\n"
        "pathlib.Path(sys.argv[1]).write_text(text.replace('spec: {}\\n', entry))\n"
        f"pathlib.Path({str(edited)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.02)\n"
    )
    with Authctl(fresh, "edit", "ca_overrides/windows", editor=f"{sys.executable} {editor}") as running:
        fresh.wait_stored(lambda _: edited.exists(), running)
        fresh.proxy.drop_replies()
        go.touch()
        landed = fresh.wait_stored(lambda found: found != before, running)
        fresh.proxy.reset()
        result = running.result()
    assert landed is not None
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"cert_authority_override windows updated (revision {landed.mod_revision})\n"
    [entry] = json.loads(landed.value)["spec"]["certificate_overrides"]
    assert entry["public_key"] == key and entry["disabled"] is True


def test_create_overwritten_before_the_lost_answer_is_noticed_reports_outcome_unknown(fresh: Rig) -> None:
    path = fresh.directory / "create.yaml"
    path.write_text(EMPTY)
    fresh.proxy.drop_replies()
    with Authctl(fresh, "create", str(path)) as running:
        landed = fresh.wait_stored(lambda found: found is not None, running)
        assert landed is not None
        ours = str(last_write(landed)["request_id"])
        other = CertAuthorityOverride(
            "mycluster", "windows", last_write={"node": "elsewhere", "request_id": "x1"}
        )
        overwritten = fresh.write_directly(landed, other.to_json())
        fresh.proxy.reset()
        result = running.result()
    assert result.exit_code == OUTCOME_UNKNOWN_EXIT, result
    assert result.stdout == ""
    message = result.stderr
    assert message.startswith("error: outcome unknown: ") and message.count("\n") == 1
    assert "may or may not have landed" in message
    assert f"check `authctl get ca_overrides/windows`: status.last_write.request_id {ours} there" in message
    assert "already exists" not in message
    assert fresh.stored() == overwritten  # nothing but the other writer changed it since


def test_a_write_records_the_request_id_it_was_sent_and_refuses_a_malformed_one(fresh: Rig) -> None:
    request = pb.WriteOverrideRequest(
        resource=CertAuthorityOverride("mycluster", "windows").to_proto(), mode=pb.UPSERT
    )
    with fresh.cluster.client("node1") as client:
        reply = client.call("WriteOverrideResource", request, request_id="retry-7_A")
        assert reply.request_id == "retry-7_A"
        assert last_write(fresh.stored())["request_id"] == "retry-7_A"
        before = fresh.stored()
        for malformed in ("has space", "x" * 65, "semi;colon"):
            with pytest.raises(ValidationError, match="request_id: must be 1 to 64 letters, digits"):
                client.call("WriteOverrideResource", request, request_id=malformed)
        assert fresh.stored() == before
        made = client.call("WriteOverrideResource", request).request_id
    assert last_write(fresh.stored())["request_id"] == made


# The store's loop on its own, through a proxy to the session etcd, with short limits.


@pytest.fixture
def proxy(etcd_server: EtcdServer) -> Iterator[FaultProxy]:
    with FaultProxy(etcd_server.endpoint) as running:
        yield running


async def test_lost_answer_then_etcd_gone_till_the_deadline_is_outcome_unknown(
    proxy: FaultProxy, store: EtcdStore, etcd_tls: EtcdTLS, key_prefix: str
) -> None:
    key = key_prefix + "k"
    async with EtcdStore([proxy.endpoint], timeout=1.0, tls=etcd_tls) as through:
        await through.ping()  # connected (TLS handshake done) before etcd's replies are dropped
        proxy.drop_replies()
        with pytest.raises(OutcomeUnknownError, match="may or may not have landed") as raised:
            await through.update(key, lambda _: b"mine", deadline=2.5, known=(None,))
    assert f"answer to a write of {key} was lost" in str(raised.value)
    assert "etcd still did not answer" in str(raised.value)
    assert (await store.get(key)) is not None  # it did land: "unknown" was the honest answer


async def test_etcd_gone_before_any_write_says_nothing_was_written(
    proxy: FaultProxy, store: EtcdStore, etcd_tls: EtcdTLS, key_prefix: str
) -> None:
    key = key_prefix + "k"
    async with EtcdStore([proxy.endpoint], timeout=1.0, tls=etcd_tls) as through:
        await through.ping()
        proxy.drop_replies()
        with pytest.raises(StoreUnavailableError, match=r"; nothing was written$"):
            await through.update(key, lambda _: b"mine", deadline=2.5)
    assert await store.get(key) is None


async def test_delete_whose_answer_is_lost_and_key_gone_is_outcome_unknown(
    proxy: FaultProxy, store: EtcdStore, etcd_tls: EtcdTLS, key_prefix: str
) -> None:
    key = key_prefix + "k"
    await store.create(key, b"to remove")
    present = await store.get(key)

    def remove(current: Versioned | None) -> bytes:
        if current is None:
            raise NotFoundError(f"{key} not found")
        return DELETE

    async with EtcdStore([proxy.endpoint], timeout=5.0, tls=etcd_tls) as through:
        await through.ping()
        proxy.drop_replies()
        removal = asyncio.ensure_future(through.update(key, remove, known=(present,)))
        while await store.get(key) is not None:
            await asyncio.sleep(0.02)
        proxy.reset()
        with pytest.raises(OutcomeUnknownError, match="the key is now absent: the write may or may not"):
            await removal
