"""Benchmark parts: raw SoftHSM RSA-2048 signing, credentials per second through one node, and the
write-to-effect time of override changes. Run through scripts/bench (bench/run.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.auth_node.pb import authsim_pb2_grpc as pb_grpc
from authsim.cluster.api.local_cluster import LocalCluster
from authsim.cluster.local.external_ca import init
from authsim.cluster.local.launcher import admin_identity
from authsim.cluster.mtls import NODE_TLS_NAME
from authsim.hsm import load_token_config, provision_token
from authsim.hsm.provision import HSM_INPROCESS, HSM_PROCESS

RAW_SIGN = """
import sys, time, uuid
from pathlib import Path
from authsim.hsm import Pkcs11KeyStore, load_token_config
config = load_token_config(Path(sys.argv[1]), "bench", hsm_process=sys.argv[3] == "process")
store = Pkcs11KeyStore.open(config, str(uuid.uuid4()), "bench")
ref, _ = store.generate_rsa_key()
data = b"x" * 512
deadline = time.perf_counter() + float(sys.argv[2])
count = 0
started = time.perf_counter()
while time.perf_counter() < deadline:
    store.sign(ref, data)
    count += 1
print(count / (time.perf_counter() - started))
store.close()
"""


def raw_sign_rate(tmp: Path, seconds: float, hsm: str = HSM_INPROCESS) -> float:
    """RSA-2048 SHA256-PKCS#1 signatures per second through one Pkcs11KeyStore session: SoftHSM loaded
    in-process, or (`hsm="process"`) through an HSM process's socket."""
    token = provision_token(tmp / f"rawtoken-{hsm}", "bench")
    if hsm == HSM_PROCESS:
        token = load_token_config(token.node_dir, "bench", hsm_process=True)
    done = subprocess.run(
        [sys.executable, "-c", RAW_SIGN, str(token.node_dir), str(seconds), hsm],
        env=token.process_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def issuance_rate(cluster: LocalCluster, node: str, seconds: float, in_flight: int, batch: int = 1) -> float:
    """Credentials per second from one node with `in_flight` concurrent calls from one asyncio client
    (keys made beforehand, so the client's own work is small): Sign calls, or SignBatch calls of
    `batch` requests when `batch` > 1."""
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    request = pb.SignRequest(type="db_client", user="bench", public_key=spki)
    many = pb.SignBatchRequest(requests=[request] * batch)
    key, cert, server_ca = admin_identity(cluster.directory).read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_ca, private_key=key, certificate_chain=cert
    )

    async def run() -> float:
        address = cluster.state.node(node).address
        options = [("grpc.ssl_target_name_override", NODE_TLS_NAME)]
        async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
            stub = pb_grpc.AuthServiceStub(channel)
            count = 0
            deadline = time.perf_counter() + seconds

            async def caller() -> None:
                nonlocal count
                while time.perf_counter() < deadline:
                    if batch == 1:
                        await stub.Sign(request, timeout=10)
                    else:
                        await stub.SignBatch(many, timeout=10)
                    count += batch

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(in_flight)))
            return count / (time.perf_counter() - started)

    return asyncio.run(run())


def propagation(cluster: LocalCluster, tmp: Path, changes: int) -> list[float]:
    """Seconds from a write's acknowledgement (through another node) to the owner's first credential
    that reflects it; alternately disabling (via node1) and enabling (via the owner)."""
    ca = init(tmp / "extca")
    owner = "node2"
    cert = cluster.override_certs(ca, "db_client")[owner]
    with cluster.client(owner) as client:
        added = client.call("CreateOverride", pb.CreateOverrideRequest(type="db_client", certificate=cert))
    key = added.public_key
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    sign = pb.SignRequest(type="db_client", user="bench", public_key=spki)
    delays = []
    with cluster.client("node1") as other, cluster.client(owner) as signer:
        for i in range(changes):
            disable = i % 2 == 0
            writer = other if disable else signer
            change = pb.UpdateOverrideRequest(
                type="db_client", public_key=key, set_disabled=disable, force=True
            )
            writer.call("UpdateOverride", change)
            acknowledged = time.perf_counter()
            while signer.call("Sign", sign).ca_override.active == disable:
                if time.perf_counter() - acknowledged > 10:
                    raise RuntimeError(f"change {i} not in effect on {owner} after 10 s")
            delays.append(time.perf_counter() - acknowledged)
    return delays
