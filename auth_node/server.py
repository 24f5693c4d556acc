"""The node process: open its token, serve gRPC over mTLS, keep its CA keys in etcd, report health."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authsim.auth_node.ca_keys import ensure_ca_keys
from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.auth_node.crls import CRLs
from authsim.auth_node.csr import answer_csr_requests
from authsim.auth_node.events import EventRecorder
from authsim.auth_node.expiry_alerts import watch_expiry
from authsim.auth_node.listeners import bind_failure, local_socket, raise_fd_limit, server_options
from authsim.auth_node.overrides import Overrides
from authsim.auth_node.pb import authsim_pb2, authsim_pb2_grpc
from authsim.auth_node.rotation import RotationParts
from authsim.auth_node.service import AuthService
from authsim.cluster.errors import AuthSimError, ClusterError, HsmUnavailableError, StoreUnavailableError
from authsim.cluster.mtls import TLSIdentity
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.addresses import register_node
from authsim.cluster.store.keys import cluster_prefix
from authsim.cluster.store.queue import Session
from authsim.hsm import HsmProbe, KeyStore

log = logging.getLogger(__name__)

SERVICE_NAME = authsim_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
HEALTH_INTERVAL = 0.5  # seconds between etcd probes
EVENTS_DRAIN = 3.0  # seconds a stopping node waits for the events it is still recording
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def node_tls(node: NodeConfig) -> TLSIdentity:
    files = node.layout
    return TLSIdentity(files.tls_cert, files.tls_key, files.admin_ca)


def create_server(
    node: NodeConfig,
    store: EtcdStore,
    keystore: KeyStore,
    view: ClusterView,
    health_servicer: health.aio.HealthServicer,
    recorder: EventRecorder,
    crls: CRLs,
    session: Session,
) -> tuple[grpc.aio.Server, int, Path | None]:
    """A gRPC server for `node` that accepts only clients with a certificate from the admin CA, on its
    TCP address and on its local socket (when the path fits); returns the server, its port, the socket."""
    server = grpc.aio.server(options=server_options(raise_fd_limit()))
    service = AuthService(node, store, keystore, view, recorder, crls, session)
    authsim_pb2_grpc.add_AuthServiceServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    key, cert, admin_ca = node_tls(node).read()
    credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=admin_ca, require_client_auth=True
    )
    try:
        port = server.add_secure_port(node.listen, credentials)
    except RuntimeError:
        raise ClusterError(f"cannot listen on {node.listen}: {bind_failure(node.listen)}") from None
    socket = local_socket(node.layout)
    if socket is not None:
        server.add_secure_port(f"unix:{socket}", credentials)
    return server, port, socket


async def _set_health(health_servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


async def keep_healthy(
    node: NodeConfig, store: EtcdStore, keystore: KeyStore, health_servicer: health.aio.HealthServicer
) -> None:
    """SERVING once the CA keys are in place and while etcd and the HSM answer; NOT_SERVING otherwise.
    The HSM probe also reconnects to an HSM that answers again (no node restart)."""
    ready = False
    current = NOT_SERVING
    while True:
        try:
            if isinstance(keystore, HsmProbe):
                await asyncio.to_thread(keystore.probe)
            if not ready:
                await ensure_ca_keys(store, keystore, node)
                await register_node(store, node.cluster_name, node.host_id, node.name, node.listen)
                ready = True
            else:
                await store.ping(cluster_prefix(node.cluster_name))
            status = SERVING
        except StoreUnavailableError as e:
            status = NOT_SERVING
            if current == SERVING:
                log.warning("etcd unreachable, NOT_SERVING: %s", e)
        except HsmUnavailableError as e:
            status = NOT_SERVING
            if current == SERVING:
                log.warning("HSM unavailable, NOT_SERVING: %s", e)
        except AuthSimError as e:  # e.g. start-up CAS gave up under contention, a token error: retry
            status = NOT_SERVING
            log.warning("not ready, NOT_SERVING: %s", e)
        if status != current:
            await _set_health(health_servicer, status)
            log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            current = status
        await asyncio.sleep(HEALTH_INTERVAL)


async def run_node(node: NodeConfig, keystore: KeyStore) -> int:
    """Serve until SIGTERM or SIGINT (exit status 0), or until a background task fails (1)."""
    health_servicer = health.aio.HealthServicer()
    await _set_health(health_servicer, NOT_SERVING)
    async with EtcdStore(list(node.etcd_endpoints), tls=node.etcd_tls) as store:
        view = ClusterView(store, node.cluster_name)
        recorder = EventRecorder(store, node.cluster_name, node.event_retention)
        session = Session(store)  # writers' places in a queue outlive the node by its TTL at most
        crls = CRLs(node, store, keystore, view, session)
        server, port, socket = create_server(
            node, store, keystore, view, health_servicer, recorder, crls, session
        )
        await server.start()
        log.info("node %s (host %s) listening on port %d and %s", node.name, node.host_id, port, socket)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            asyncio.create_task(keep_healthy(node, store, keystore, health_servicer)),
            asyncio.create_task(view.run()),
            asyncio.create_task(session.run()),
            asyncio.create_task(crls.run()),
            asyncio.create_task(watch_expiry(node, recorder, view)),
            asyncio.create_task(answer_csr_requests(view, store, keystore)),
            asyncio.create_task(
                RotationParts(node, store, keystore, view, Overrides(store, node, view, session)).run()
            ),
        ]
        for task in tasks:
            task.add_done_callback(lambda _: stop.set())
        await stop.wait()
        await server.stop(grace=1.0)
        await recorder.drain(EVENTS_DRAIN)
        if socket is not None:
            socket.unlink(missing_ok=True)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    for failure in failures:
        log.error("background task failed, stopping: %s", failure, exc_info=failure)
    return 1 if failures else 0
