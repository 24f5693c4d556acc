"""Real etcd servers on loopback, one member or a cluster of members, started and stopped by PID."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from authsim.cluster.errors import ClusterError, PortInUseError
from authsim.cluster.layout import EtcdLayout
from authsim.cluster.local import processes
from authsim.cluster.local.ports import free_port, on_free_ports, port_is_free
from authsim.cluster.store import EtcdTLS

HOST = "127.0.0.1"
READY_TIMEOUT = 10.0


def find_etcd_binary() -> str:
    """The path of `etcd` on PATH, or a ClusterError saying how to install it."""
    path = shutil.which("etcd")
    if path is None:
        raise ClusterError(
            "etcd not found on PATH: install it with `sudo apt-get install etcd-server` (Debian/Ubuntu), "
            "or run on an existing etcd with --etcd host:port"
        )
    return path


@dataclass
class EtcdServer:
    """One etcd member: its data dir, ports and log, and the process when this process started it."""

    data_dir: Path
    client_port: int
    peer_port: int
    name: str
    log_path: Path
    members: dict[str, int]  # member name -> peer port, this member included
    detach: bool = False
    tls: EtcdTLS | None = None  # https for clients and peers, client certificates required
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The client endpoint as `host:port`, the form EtcdStore and `--etcd` take."""
        return f"{HOST}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @classmethod
    def start(
        cls,
        data_dir: Path,
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "authsim",
        detach: bool = False,
        log_path: Path | None = None,
        tls: EtcdTLS | None = None,
    ) -> EtcdServer:
        """Start a single-member etcd on loopback and wait until it reports healthy.

        The log goes to `log_path`, by default the `EtcdLayout` log beside `data_dir`: the launcher passes
        `<state dir>/etcd/data`, so data and log both live under `etcd/` (SPEC §4). An existing data dir
        is reused (the member restarts with its data). `detach=True` puts etcd in its own session so it
        outlives the launcher.

        With `tls`, client and peer URLs are https and every client must present a certificate from
        `tls.cacert` (etcd's --client-cert-auth). `tls.cert` serves clients and peers, and is presented
        as a client to the other members and to the health check: it needs both the serverAuth and
        clientAuth extended key usages (or none) and 127.0.0.1 among its subject alternative names.

        A port given is used as it is (PortInUseError when taken). A port left to pick that another
        process takes before etcd listens on it is picked again, with a new etcd process.
        """

        def attempt() -> EtcdServer:
            client = client_port or free_port(HOST)
            peer = peer_port
            while peer is None or peer == client:
                peer = free_port(HOST)
            server = cls._member(data_dir, name, client, peer, {name: peer}, detach, log_path, tls)
            server.restart()
            return server

        return attempt() if client_port and peer_port else on_free_ports(attempt)

    @classmethod
    def start_cluster(
        cls, base_dir: Path, size: int = 3, detach: bool = False, tls: EtcdTLS | None = None
    ) -> list[EtcdServer]:
        """Start `size` loopback members as one cluster in `base_dir/etcdN/`; return once all are healthy.

        `tls` as in `start`: one member certificate shared by every member. When another process takes
        a member's port before it listens, every member starts again on new ports with new data.
        """
        return on_free_ports(lambda: cls._start_members(base_dir, size, detach, tls))

    @classmethod
    def _start_members(cls, base_dir: Path, size: int, detach: bool, tls: EtcdTLS | None) -> list[EtcdServer]:
        """One attempt of `start_cluster` on newly picked ports; stops every member when it fails, and
        deletes the data it made when a port was taken (the members are to start afresh)."""
        ports = set[int]()
        while len(ports) < 2 * size:
            ports.add(free_port(HOST))
        pairs = list(zip(sorted(ports)[:size], sorted(ports)[size:], strict=True))
        members = {f"etcd{i + 1}": peer for i, (_, peer) in enumerate(pairs)}
        servers = [
            cls._member(EtcdLayout(base_dir / name).data, name, client, peer, members, detach, None, tls)
            for name, (client, peer) in zip(members, pairs, strict=True)
        ]
        new_data = [server.data_dir for server in servers if not server.data_dir.exists()]
        try:
            for server in servers:
                server._spawn()
            wait_healthy(servers, READY_TIMEOUT)
        except BaseException as e:
            for server in servers:
                server.stop()
            if isinstance(e, PortInUseError):
                for data_dir in new_data:
                    shutil.rmtree(data_dir, ignore_errors=True)
            raise
        return servers

    @classmethod
    def _member(
        cls,
        data_dir: Path,
        name: str,
        client_port: int,
        peer_port: int,
        members: dict[str, int],
        detach: bool,
        log_path: Path | None,
        tls: EtcdTLS | None = None,
    ) -> EtcdServer:
        data_dir = data_dir.absolute()
        log_path = log_path or EtcdLayout(data_dir.parent).log
        return cls(
            data_dir, client_port, peer_port, name, log_path, members, detach, tls.checked() if tls else None
        )

    def restart(self) -> None:
        """Start this member's process (again, after stop or a kill) on the same ports and data."""
        self._spawn()
        try:
            wait_healthy([self], READY_TIMEOUT)
        except BaseException:  # not healthy in time, or interrupted: leave no process behind
            self.stop()
            raise

    def _spawn(self) -> None:
        binary = find_etcd_binary()
        for port in (self.client_port, self.peer_port):
            if not port_is_free(port, HOST):
                raise PortInUseError(f"cannot start etcd: port {HOST}:{port} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, *self._arguments()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.detach,
            )

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def _arguments(self) -> list[str]:
        """etcd flags for this member of `self.members`."""
        client_url = f"{self.scheme}://{HOST}:{self.client_port}"
        peer_url = f"{self.scheme}://{HOST}:{self.peer_port}"
        initial_cluster = ",".join(
            f"{name}={self.scheme}://{HOST}:{port}" for name, port in self.members.items()
        )
        return [
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-token", "authsim-" + "-".join(self.members),
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self._tls_arguments(),
        ]  # fmt: skip

    def _tls_arguments(self) -> list[str]:
        """Server TLS for clients and peers, each side required to present a certificate from the CA."""
        if self.tls is None:
            return []
        cacert, cert, key = str(self.tls.cacert), str(self.tls.cert), str(self.tls.key)
        return [
            "--cert-file", cert, "--key-file", key, "--trusted-ca-file", cacert, "--client-cert-auth",
            "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", cacert,
            "--peer-client-cert-auth",
        ]  # fmt: skip

    def healthy(self) -> bool:
        """True when etcd answers GET /health with {"health": "true"} (over TLS with the member cert)."""
        url = f"{self.scheme}://{self.endpoint}/health"
        context = self.tls.ssl_context() if self.tls else None
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=context) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; a no-op when already stopped."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_healthy(servers: list[EtcdServer], timeout: float) -> None:
    """Poll every member's GET /health until {"health": "true"} from its own process (not another one
    that holds its port); raise as soon as one has exited, or stop them all and raise after `timeout`."""
    waiting = list(servers)
    give_up_at = time.monotonic() + timeout
    while waiting and time.monotonic() < give_up_at:
        for server in list(waiting):
            assert server.process is not None
            if server.process.poll() is not None:
                raise processes.exit_error("etcd", server.process, server.log_path)
            if server.healthy() and processes.listens_on(server.process.pid, server.client_port):
                waiting.remove(server)
        time.sleep(0.05)
    if waiting:
        for server in servers:
            server.stop()
        raise ClusterError(
            f"etcd on {waiting[0].endpoint} not healthy after {timeout:.0f}s; end of {waiting[0].log_path}: "
            f"{processes.tail(waiting[0].log_path)}"
        )
