"""HSM outages on a real 3-node cluster whose tokens are served by HSM processes (`hsm="process"`):
each outage (the HSM hangs: SIGSTOP; the HSM is gone: its process group killed) during signing and
during override writes. Checked: the error names the node's HSM, no call waits past the token
deadline, health turns NOT_SERVING and back to SERVING without a node restart (the time printed),
other nodes keep signing, and nothing is lost or written twice."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import AuthSimError, UnavailableError
from authsim.cluster.local import processes
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.local.hsm_process import hsm_marker
from authsim.cluster.resources.crl import fingerprint
from tests.attacker import passable_dir

DEADLINE = 1.5  # the cluster's --hsm-timeout
SLACK = 1.0  # what a call may take beyond the deadline: the RPC, the CLI, a loaded machine
RECOVERY_LIMIT = 10.0  # seconds from resume/start to SERVING again


@dataclass
class World:
    cluster: LocalCluster
    ca: ExternalCA
    tmp: Path
    active: str  # the node holding the active windows key: the one that signs credentials
    others: list[str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("outages")
    ca = init(tmp / "extca")
    with (
        passable_dir() as reachable,  # as root, the nodes run as their own users (test_hsm_isolation.py)
        local_cluster(reachable / "c", nodes=3, hsm="process", hsm_timeout=DEADLINE) as cluster,
    ):
        ca_doc = json.loads(cluster.authctl("get", "cas/windows", "--format", "json").stdout)
        active_host = ca_doc["spec"]["active_keys"]["tls"][0]["key"]["host_id"]
        active = next(n for n in cluster.node_names if cluster.host_id(n) == active_host)
        yield World(cluster, ca, tmp, active, [n for n in cluster.node_names if n != active])


@pytest.fixture(autouse=True)
def hsms_answer(world: World) -> Iterator[None]:
    """Every test starts and ends with every HSM running and every node SERVING."""
    yield
    for node in world.cluster.node_names:
        hsm = world.cluster.hsm(node)
        if hsm.state == "STOPPED":
            hsm.start()
        elif hsm.state == "PAUSED":
            hsm.resume()
        world.cluster.wait_health(node, "SERVING", RECOVERY_LIMIT)


def _sign_request() -> pb.SignRequest:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return pb.SignRequest(type="windows", user="alice", public_key=der)


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds taken, the result or the AuthSimError raised)."""
    started = time.monotonic()
    try:
        outcome: Any = call()
    except AuthSimError as e:
        outcome = e
    return time.monotonic() - started, outcome


def _sign(world: World, node: str) -> tuple[float, Any]:
    with world.cluster.client(node) as client:
        return _timed(lambda: client.call("Sign", _sign_request()))


def _csr(world: World, node: str, out: Path, *extra: str) -> tuple[float, Any]:
    args = ("auth", "create-override-csr", "--type=windows", "--local-only", "--out", f"{out}/", *extra)
    return _timed(lambda: _cli(world.cluster.authctl(*args, node=node)))


def _cli(result: Any) -> Any:
    if result.exit_code != 0:
        raise AuthSimError(result.stderr.strip())
    return result


def _recovered(world: World, node: str, kind: str) -> float:
    seconds = world.cluster.wait_health(node, "SERVING", RECOVERY_LIMIT)
    print(f"\n{kind}: {node} SERVING again {seconds:.2f} s after its HSM answered")
    return seconds


def test_hsm_hang_during_signing(world: World) -> None:
    """Callers signing when the active node's HSM hangs: every call returns within the deadline, with
    the node's HSM named; the node turns NOT_SERVING, the others keep signing (CSRs in their tokens);
    after resume it signs again, and every certificate issued has its own serial."""
    cluster, node = world.cluster, world.active
    elapsed, first = _sign(world, node)
    assert not isinstance(first, Exception), first
    hsm = cluster.hsm(node)
    with ThreadPoolExecutor(max_workers=4) as pool:
        hsm.pause()
        try:
            outcomes = list(pool.map(lambda _: _sign(world, node), range(8)))
            assert cluster.wait_health(node, "NOT_SERVING", DEADLINE + SLACK) >= 0
            for other in world.others:
                assert cluster.health(other) == "SERVING"
                took, csr = _csr(world, other, world.tmp / "hang-csr" / other)
                assert not isinstance(csr, Exception), csr
            took_while_down, refused = _sign(world, node)
        finally:
            hsm.resume()
    _recovered(world, node, "pause/resume during signing")
    after = [_sign(world, node) for _ in range(3)]

    for took, _ in [*outcomes, (took_while_down, refused)]:
        assert took < DEADLINE + SLACK, f"a Sign call waited {took:.2f} s, past the {DEADLINE} s deadline"
    failures = [o for _, o in outcomes if isinstance(o, Exception)]
    assert failures, "no call failed while the HSM hung"
    assert all(isinstance(f, UnavailableError) for f in failures), failures
    assert any(f"{node}'s HSM did not answer within {DEADLINE:g} s" in str(f) for f in failures), failures
    assert isinstance(refused, UnavailableError) and f"{node}'s HSM is unavailable" in str(refused)
    assert took_while_down < SLACK  # refused at once while the HSM counts as unavailable
    issued = [o for _, o in [(elapsed, first), *outcomes, *after] if not isinstance(o, Exception)]
    assert all(not isinstance(o, Exception) for _, o in after), after
    serials = [r.serial for r in issued]
    assert len(serials) == len(set(serials))


def test_hsm_stop_during_signing(world: World) -> None:
    """The active node's HSM process killed: Sign fails at once naming the HSM, NOT_SERVING; started
    again on the same socket, the node reconnects by itself (same PID) and signs."""
    cluster, node = world.cluster, world.active
    pid = cluster.state.node(node).pid
    hsm = cluster.hsm(node)
    hsm.stop()
    assert hsm.state == "STOPPED"
    try:
        took, failed = _sign(world, node)
        cluster.wait_health(node, "NOT_SERVING", DEADLINE + SLACK)
        took_again, refused = _sign(world, node)
    finally:
        hsm.start()
    _recovered(world, node, "stop/start during signing")
    _, signed = _sign(world, node)

    assert isinstance(failed, UnavailableError) and f"{node}'s HSM" in str(failed), failed
    assert took < DEADLINE + SLACK and took_again < DEADLINE + SLACK
    assert isinstance(refused, UnavailableError)
    assert not isinstance(signed, Exception), signed
    assert cluster.state.node(node).pid == pid  # recovered without a node restart


@pytest.mark.parametrize("kind", ["pause", "stop"])
def test_hsm_outage_during_override_writes(world: World, kind: str) -> None:
    """A node's HSM hangs or is gone during the override flow on that node: its CSR fails within the
    deadline naming its HSM; the override append through it lands exactly once, within the deadline.
    With the certificate its CSR asks for by default (pause), the entry lands with its CRL, signed
    ahead by the keeper; with another subject (stop), it lands without (the token call for it fails at
    once), and once the HSM answers its keeper signs it. Its CSR works again after."""
    cluster = world.cluster
    node = world.others[0] if kind == "pause" else world.others[1]
    subject = ("--subject", "CN=outage test CA") if kind == "stop" else ()
    _, csr = _csr(world, node, world.tmp / f"{kind}-csr-before" / node, *subject)
    assert not isinstance(csr, Exception), csr
    (csr_path,) = (world.tmp / f"{kind}-csr-before" / node).glob("*.pem")
    cert = world.tmp / f"{kind}-{node}.pem"
    cert.write_bytes(world.ca.sign_csr(csr_path.read_bytes()).public_bytes(Encoding.PEM))
    before = _overrides(world)
    hsm = cluster.hsm(node)
    getattr(hsm, kind)()
    try:
        took_csr, failed_csr = _csr(world, node, world.tmp / f"{kind}-csr-during" / node)
        args = ("auth", "create-override", "--type=windows", str(cert), str(world.ca.chain_path))
        took_write, written = _timed(lambda: _cli(cluster.authctl(*args, node=node)))
        entry_cert = x509.load_pem_x509_certificate(cert.read_bytes())
        pem = cert.read_text().strip()
        entries = _overrides(world)["spec"]["certificate_overrides"]
        landed = [e["public_key"] for e in entries if e["certificate"].strip() == pem]
        with_crl = bool(landed) and fingerprint(entry_cert) in _override_crls(world, landed[0])
        cluster.wait_health(node, "NOT_SERVING", DEADLINE + SLACK)
    finally:
        hsm.resume() if kind == "pause" else hsm.start()
    _recovered(world, node, f"{kind} during override writes")
    _, csr_after = _csr(world, node, world.tmp / f"{kind}-csr-after" / node)
    after = _overrides(world)

    assert isinstance(failed_csr, AuthSimError) and f"{node}'s HSM" in str(failed_csr), failed_csr
    assert took_csr < DEADLINE + SLACK and took_write < DEADLINE + SLACK
    assert not isinstance(written, Exception), written
    assert not isinstance(csr_after, Exception), csr_after
    added = [e for e in after["spec"]["certificate_overrides"] if e["certificate"].strip() == pem]
    assert len(added) == 1  # landed once
    assert len(after["spec"]["certificate_overrides"]) == len(before["spec"]["certificate_overrides"]) + 1
    assert with_crl == (kind == "pause"), "the entry's CRL signed ahead is used only when it fits"
    deadline = time.monotonic() + RECOVERY_LIMIT
    while fingerprint(entry_cert) not in _override_crls(world, added[0]["public_key"]):
        assert time.monotonic() < deadline, "the keeper did not sign the entry's CRL once the HSM answered"
        time.sleep(0.2)


def test_hsm_processes_are_stopped_by_down() -> None:
    """`down` stops each node's HSM process group, and `status` showed each HSM's state."""
    with passable_dir() as reachable, local_cluster(reachable / "c", nodes=1, hsm="process") as cluster:
        entry = cluster.state.node("node1")
        marker = hsm_marker(cluster.directory, "node1")
        assert processes.is_running(entry.hsm_pid, marker)
        assert cluster.hsm("node1").state == "RUNNING"
        cluster.hsm("node1").pause()
        assert cluster.hsm("node1").state == "PAUSED"
        stopped = cluster.stop()
    assert "node1 HSM" in stopped
    assert not processes.is_running(entry.hsm_pid, marker)


def _override_crls(world: World, key_hash: str) -> list[str]:
    """The fingerprints of the override certificates whose CRLs key `key_hash` has now."""
    with world.cluster.client(world.active) as client:
        listing = client.call("ListCRLs", pb.ListCRLsRequest(type="windows"))
    return [o.fingerprint for k in listing.keys if k.public_key_hash == key_hash for o in k.overrides]


def _overrides(world: World) -> dict[str, Any]:
    result = world.cluster.authctl("get", "ca_overrides/windows", "--format", "json")
    if result.exit_code != 0:
        return {"spec": {"certificate_overrides": []}}
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_hsm_stopped_while_idle_signs_at_the_first_call_once_back(world: World) -> None:
    """The active node's HSM process killed while nobody signs, then started again: once the node is
    SERVING, the very first Sign works (its signing worker, whose session died with the HSM, is not
    used again)."""
    cluster, node = world.cluster, world.active
    _, before = _sign(world, node)  # the worker runs, with a session on the HSM
    assert not isinstance(before, Exception), before
    hsm = cluster.hsm(node)
    hsm.stop()
    try:
        cluster.wait_health(node, "NOT_SERVING", DEADLINE + SLACK)  # the health probe noticed
    finally:
        hsm.start()
    _recovered(world, node, "stop/start while idle")
    _, first = _sign(world, node)
    assert not isinstance(first, Exception), first
