"""A node's signing worker (hsm/signing_worker.py) against a real SoftHSM token: what it signs, with
which keys, what it is told (never the PIN in argv or environment), a hang, a crash, and its end with
the node. Issuance through it is covered by every test that issues credentials."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import local_cluster
from authsim.cluster.errors import HsmUnavailableError, NotFoundError
from authsim.cluster.resources.key_ref import KeyRef
from authsim.hsm.signing_process import SigningProcess
from tests.test_hsm import Node, provision_node, run_worker

DEADLINE = 1.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    return provision_node(tmp_path_factory.mktemp("worker"), "node1")


@pytest.fixture(scope="module")
def key(node: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyRef, rsa.RSAPublicKey]:
    """A key of node1 in its token, and its public half (from a CA certificate made with it)."""
    ref = KeyRef.from_dict(run_worker(node, "generate")["ref"])
    out = tmp_path_factory.mktemp("ca")
    run_worker(node, "ca", ref=ref.to_dict(), out_dir=str(out), cluster_name="c1")
    public = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes()).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    return ref, public


@pytest.fixture
def worker(node: Node, monkeypatch: pytest.MonkeyPatch) -> Iterator[SigningProcess]:
    """A signing worker of node1's token (its environment names the token, as the node's does)."""
    monkeypatch.setenv("SOFTHSM2_CONF", str(node.config.softhsm_conf))
    yield SigningProcess(
        node.config.module_path, node.config.label, node.config.pin(), node.host_id, node.name, DEADLINE
    )


def _sign(worker: SigningProcess, items: list[tuple[bytes, bytes]]) -> list[bytes | Exception]:
    async def run() -> list[bytes | Exception]:
        try:
            return await worker.sign(items)
        finally:
            await worker.stop()

    return asyncio.run(run())


def test_it_signs_with_the_nodes_keys_and_no_other_hosts(
    node: Node, key: tuple[KeyRef, rsa.RSAPublicKey], worker: SigningProcess, tmp_path: Path
) -> None:
    """Each item signed with SHA256-RSA-PKCS#1 v1.5 in the token (openssl verifies it); a key of another
    host in the same token, or no key, is refused for that item alone."""
    ref, public = key
    other = KeyRef.from_dict(run_worker(replace(node, host_id=str(uuid.uuid4())), "generate")["ref"])
    data = [b"first to-be-signed", b"second"]
    signed = _sign(
        worker,
        [
            (bytes.fromhex(ref.key_id), data[0]),
            (bytes.fromhex(other.key_id), b"not mine"),
            (bytes(16), b"nobody's"),
            (bytes.fromhex(ref.key_id), data[1]),
        ],
    )
    assert isinstance(signed[1], NotFoundError) and other.key_id in str(signed[1])
    assert isinstance(signed[2], NotFoundError)
    pem = tmp_path / "public.pem"
    pem.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    for message, signature in zip(data, (signed[0], signed[3]), strict=True):
        assert isinstance(signature, bytes)
        public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        (tmp_path / "data").write_bytes(message)
        (tmp_path / "sig").write_bytes(signature)
        checked = subprocess.run(
            [
                "openssl",
                "dgst",
                "-sha256",
                "-verify",
                str(pem),
                "-signature",
                str(tmp_path / "sig"),
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
        )
        assert checked.stdout.strip() == "Verified OK", checked.stderr


def test_the_pin_is_in_neither_its_argv_nor_its_environment(
    node: Node, key: tuple[KeyRef, rsa.RSAPublicKey], worker: SigningProcess
) -> None:
    """What another process of the node's user could read of the worker (/proc/PID/cmdline, environ)
    holds no PIN: it comes over the worker's socket."""
    pin = node.config.pin().encode()

    async def run() -> tuple[bytes, bytes]:
        try:
            await worker.sign([(bytes.fromhex(key[0].key_id), b"x")])
            assert worker.pid is not None
            proc = Path(f"/proc/{worker.pid}")
            return (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()
        finally:
            await worker.stop()

    cmdline, environ = asyncio.run(run())
    assert b"authsim.hsm.signing_worker" in cmdline
    assert pin not in cmdline and pin not in environ


def test_a_hung_worker_misses_the_deadline_and_is_killed_and_a_dead_one_is_started_again(
    key: tuple[KeyRef, rsa.RSAPublicKey], worker: SigningProcess
) -> None:
    """A worker that stops answering (SIGSTOP, as a hung token call) fails its batch within the deadline
    and is killed; one that died between batches is replaced by the next batch."""
    item = [(bytes.fromhex(key[0].key_id), b"x")]

    async def run() -> None:
        try:
            assert isinstance((await worker.sign(item))[0], bytes)
            first = worker.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await asyncio.sleep(0.2)
            assert isinstance((await worker.sign(item))[0], bytes)  # a new worker
            second = worker.pid
            assert second not in (None, first)
            assert second is not None
            os.kill(second, signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(HsmUnavailableError, match=f"did not answer within {DEADLINE:g} s"):
                await worker.sign(item)
            assert time.monotonic() - started < DEADLINE + 0.5
            assert worker.pid is None and not Path(f"/proc/{second}").exists()  # killed and reaped
        finally:
            await worker.stop()

    asyncio.run(run())


def test_the_worker_ends_with_its_node(node: Node, key: tuple[KeyRef, rsa.RSAPublicKey]) -> None:
    """A node killed at once (SIGKILL, no clean-up) leaves no worker behind."""
    script = (
        "import asyncio, sys\n"
        "from authsim.hsm.signing_process import SigningProcess\n"
        "async def main():\n"
        "    pin = sys.stdin.readline().strip()\n"
        f"    w = SigningProcess({node.config.module_path!r}, {node.config.label!r}, pin,"
        f" {node.host_id!r}, 'node1', 5.0)\n"
        f"    await w.sign([(bytes.fromhex({key[0].key_id!r}), b'x')])\n"
        "    print(w.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(node.config.softhsm_conf)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.write(node.config.pin() + "\n")
        parent.stdin.flush()
        worker_pid = int(parent.stdout.readline())
        assert Path(f"/proc/{worker_pid}").exists()
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while _alive(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived its node"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_nodes_credentials_are_signed_by_its_worker_which_stops_with_it(tmp_path: Path) -> None:
    """A node's Sign goes through a signing worker of its own: a child process of the node, as the
    node's user; the credential chains to the node's CA (openssl); `down` leaves no worker behind."""
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    with local_cluster(tmp_path / "c", nodes=1) as cluster:
        pid = cluster.state.node("node1").pid
        assert pid is not None
        with cluster.client("node1") as client:
            signed = client.call("Sign", pb.SignRequest(type="windows", user="alice", public_key=der))
            ca = client.get_cert_authority("windows")
        workers = [p for p in _children(pid) if b"authsim.hsm.signing_worker" in _cmdline(p)]
        assert len(workers) == 1
        assert Path(f"/proc/{workers[0]}").stat().st_uid == Path(f"/proc/{pid}").stat().st_uid
        (tmp_path / "leaf.pem").write_text(signed.certificate)
        (tmp_path / "ca.pem").write_text("".join(k.cert for k in ca.active_keys))
        checked = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not _alive(workers[0])


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()
