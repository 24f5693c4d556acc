"""Benchmark rows of issue 16: what an HSM process costs (signs through its socket vs SoftHSM loaded
in-process, in the same run; credentials per second from a node of a `hsm="process"` cluster) and how
soon a node signs again after its HSM comes back (`resume` after a pause, `start` after a stop)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import AuthSimError
from authsim.cluster.local import hsm_process, processes
from authsim.hsm import load_token_config, provision_token
from authsim.hsm.provision import HSM_PROCESS
from bench.issuance import issuance_rate, raw_sign_rate

SIGNER = "node2"  # the node holding the db_client key after `auth rotate` (as in the issuance rows)
GIVE_UP = 30.0  # seconds to wait for the first signature after the HSM is back


def socket_sign_rate(tmp: Path, seconds: float) -> float:
    """raw_sign_rate through an HSM process of our own (the launcher's user: the socket's cost only)."""
    node_dir = provision_token(tmp / f"rawtoken-{HSM_PROCESS}", "bench").node_dir
    token = load_token_config(node_dir, "bench", hsm_process=True)
    assert token.server_socket is not None
    log = tmp / "raw-hsm.log"
    process = hsm_process.start(token, log)
    try:
        hsm_process.wait_ready(process, token.server_socket, log)
        return raw_sign_rate(tmp, seconds, HSM_PROCESS)
    finally:
        processes.stop_group(process.pid, str(token.server_socket))


def process_issuance(cluster: LocalCluster, seconds: float, batch: int) -> dict[str, float]:
    """Credentials per second from SIGNER of a `hsm="process"` cluster, Sign calls and SignBatch."""
    return {
        "credentials_per_s": max(issuance_rate(cluster, SIGNER, seconds, n) for n in (4, 16, 64)),
        "batched_credentials_per_s": max(issuance_rate(cluster, SIGNER, seconds, n, batch) for n in (2, 4)),
    }


def back_to_signing(cluster: LocalCluster, rounds: int) -> dict[str, float]:
    """Median seconds from `resume` (after a 2 s pause) and from `start` (after a stop) to SIGNER's first
    successful Sign, calls made back to back (each fails at once while the HSM counts unavailable)."""
    hsm = cluster.hsm(SIGNER)
    resumed, started = [], []
    for _ in range(rounds):
        hsm.pause()
        _until_fails(cluster)
        time.sleep(0.5)
        hsm.resume()
        resumed.append(_first_signature(cluster, time.perf_counter()))
        hsm.stop()
        _until_fails(cluster)
        hsm.start()  # returns once the HSM process accepts
        started.append(_first_signature(cluster, time.perf_counter()))
    return {
        "resume_to_signature_s_median": statistics.median(resumed),
        "start_to_signature_s_median": statistics.median(started),
        "rounds": rounds,
    }


def _request() -> pb.SignRequest:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return pb.SignRequest(type="db_client", user="bench", public_key=spki)


def _until_fails(cluster: LocalCluster) -> None:
    """Sign until a call fails: the node has found its HSM out (a hang takes the call's deadline)."""
    with cluster.client(SIGNER) as client:
        deadline = time.perf_counter() + GIVE_UP
        while time.perf_counter() < deadline:
            try:
                client.call("Sign", _request())
            except AuthSimError:
                return
    raise RuntimeError(f"{SIGNER} kept signing with its HSM out for {GIVE_UP:g} s")


def _first_signature(cluster: LocalCluster, since: float) -> float:
    with cluster.client(SIGNER) as client:
        while time.perf_counter() - since < GIVE_UP:
            try:
                client.call("Sign", _request())
                return time.perf_counter() - since
            except AuthSimError:
                time.sleep(0.01)
    raise RuntimeError(f"{SIGNER} did not sign within {GIVE_UP:g} s of its HSM coming back")


def hsm_rows(tmp: Path, cluster_dir: Path, seconds: float, batch: int, rounds: int) -> dict[str, Any]:
    """Every row of issue 16, in one run: raw in-process and socket signing, issuance through a
    `hsm="process"` cluster in `cluster_dir`, and back-to-signing times."""
    result: dict[str, Any] = {
        "raw_inprocess_signs_per_s": raw_sign_rate(tmp, seconds),
        "raw_socket_signs_per_s": socket_sign_rate(tmp, seconds),
    }
    with local_cluster(cluster_dir, nodes=3, hsm=HSM_PROCESS) as cluster:
        assert cluster.authctl("auth", "rotate", "--type=db_client").exit_code == 0
        result |= process_issuance(cluster, seconds, batch)
        result |= back_to_signing(cluster, rounds)
    result["socket_ratio"] = result["raw_socket_signs_per_s"] / result["raw_inprocess_signs_per_s"]
    return result
