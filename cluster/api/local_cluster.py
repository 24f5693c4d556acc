"""A Python API for a local cluster: start N nodes in a directory, reach them, run CLI verbs, stop."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.cli.authctl import main as authctl_main
from authsim.cluster.cli.runner import CliResult, run_in_process
from authsim.cluster.errors import AuthSimError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import hsm_process, launcher
from authsim.cluster.local.external_ca import ExternalCA
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.state import ClusterState, admin_address
from authsim.cluster.store import EtcdTLS


class Hsm:
    """One node's HSM process (`hsm="process"`), for scripting outages: `stop` kills its process
    group (the HSM is gone at once), `start` starts it again on the same socket, `pause` SIGSTOPs it
    (every call hangs), `resume` SIGCONTs it. The node reconnects by itself once it answers."""

    def __init__(self, directory: Path, node: str) -> None:
        self.directory = directory
        self.node = node

    @property
    def state(self) -> str:
        """RUNNING, PAUSED or STOPPED."""
        state = ClusterState.load(self.directory)
        return hsm_process.state_of(self.directory, state, state.node(self.node))

    def stop(self) -> None:
        hsm_process.control(self.directory, self.node, "stop")

    def start(self) -> None:
        hsm_process.control(self.directory, self.node, "start")

    def pause(self) -> None:
        hsm_process.control(self.directory, self.node, "pause")

    def resume(self) -> None:
        hsm_process.control(self.directory, self.node, "resume")

    @contextlib.contextmanager
    def paused(self) -> Iterator[Hsm]:
        """The HSM hangs for the body of the `with`, and answers again after it (also on failure)."""
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[Hsm]:
        """The HSM is gone for the body of the `with`, and started again after it (also on failure)."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def pause_for(self, seconds: float) -> threading.Thread:
        """Pause now and resume after `seconds` in the background (e.g. hang during an append);
        join the returned thread to wait for the resume."""
        self.pause()
        thread = threading.Thread(target=self._resume_after, args=(seconds,), name=f"{self.node}-hsm")
        thread.start()
        return thread

    def _resume_after(self, seconds: float) -> None:
        time.sleep(seconds)
        self.resume()


class LocalCluster:
    """A running cluster in `directory`. Use `LocalCluster.start(...)` as a context manager."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def start(
        cls,
        directory: Path,
        nodes: int = 3,
        cluster_name: str = "mycluster",
        etcd_endpoints: list[str] | None = None,
        etcd_tls: EtcdTLS | None = None,
        event_retention: int | None = None,
        hsm: str | None = None,
        hsm_timeout: float | None = None,
    ) -> LocalCluster:
        options = launcher.UpOptions(
            nodes,
            cluster_name,
            etcd_endpoints,
            etcd_tls=etcd_tls,
            event_retention=event_retention,
            hsm=hsm,
            hsm_timeout=hsm_timeout,
        )
        launcher.up(directory, options)
        return cls(directory)

    @property
    def state(self) -> ClusterState:
        return ClusterState.load(self.directory)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.state.nodes]

    def client(self, node: str) -> NodeClient:
        entry = self.state.node(node)
        address = admin_address(self.directory, entry)
        return NodeClient(address, launcher.admin_identity(self.directory), entry.name)

    def hsm(self, node: str) -> Hsm:
        """`node`'s HSM process, to stop, start, pause and resume (a cluster started with hsm="process")."""
        self.state.node(node)  # an unknown node: ClusterError naming the nodes
        return Hsm(self.directory, node)

    def health(self, node: str) -> str:
        """`node`'s gRPC health: SERVING, NOT_SERVING, or UNREACHABLE when it does not answer."""
        with self.client(node) as client:
            return client.health()

    def wait_health(self, node: str, status: str = "SERVING", timeout: float = 30.0) -> float:
        """Wait until `node` reports `status`; returns the seconds it took (AuthSimError after `timeout`)."""
        started = time.monotonic()
        while (health := self.health(node)) != status:
            if time.monotonic() - started > timeout:
                raise AuthSimError(f"{node} is {health}, not {status}, after {timeout:g} s")
            time.sleep(0.05)
        return time.monotonic() - started

    def host_id(self, node: str) -> str:
        return ClusterLayout(self.directory).node(node).host_id.read_text().strip()

    def override_certs(self, external: ExternalCA, ca_type: str) -> dict[str, str]:
        """node → an override certificate signed by `external` for the key of `ca_type` the node holds."""
        certs = {}
        for node in self.node_names:
            with self.client(node) as client:
                reply = client.call("CreateOverrideCSR", pb.CreateOverrideCSRRequest(type=ca_type))
            pem = external.sign_csr(reply.csrs[0].pem.encode()).public_bytes(Encoding.PEM)
            certs[node] = pem.decode().strip()
        return certs

    def authctl(self, *args: str, node: str | None = None) -> CliResult:
        """Run `authctl --dir DIR [--node NODE] ARGS...` in this process and capture its output."""
        argv = ["--dir", str(self.directory), *(["--node", node] if node else []), *args]
        return run_in_process(authctl_main, argv)

    def sign(self, ca_type: str, user: str, out: Path, node: str | None = None) -> dict[str, Any]:
        """`authctl auth sign`: writes OUT.crt/.key/.chain.pem/.json and returns the .json content."""
        result = self.authctl("auth", "sign", "--type", ca_type, "--user", user, "--out", str(out), node=node)
        if result.exit_code != 0:
            raise AuthSimError(result.stderr.strip())
        data: dict[str, Any] = json.loads(Path(f"{out}.json").read_text())
        return data

    def exercise(self, ca_type: str, user: str, node: str | None = None) -> dict[str, Any]:
        """`authctl exercise`: the session-start event the node recorded (success or not)."""
        result = self.authctl("exercise", "--type", ca_type, "--user", user, node=node)
        if not result.stdout.strip():
            raise AuthSimError(result.stderr.strip())
        event: dict[str, Any] = json.loads(result.stdout)
        return event

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.authctl("get", "events", "--format", "json").stdout)
        return events

    def stop(self, purge: bool = False) -> list[str]:
        return launcher.down(self.directory, purge=purge)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_cluster(
    directory: Path,
    nodes: int = 3,
    cluster_name: str = "mycluster",
    etcd_endpoints: list[str] | None = None,
    etcd_tls: EtcdTLS | None = None,
    event_retention: int | None = None,
    hsm: str | None = None,
    hsm_timeout: float | None = None,
) -> Iterator[LocalCluster]:
    """Start a cluster, yield it, and stop every process it started, also when the body fails."""
    cluster = LocalCluster.start(
        directory, nodes, cluster_name, etcd_endpoints, etcd_tls, event_retention, hsm, hsm_timeout
    )
    try:
        yield cluster
    finally:
        cluster.stop()
