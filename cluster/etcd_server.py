"""A real single-member etcd server on loopback, started and stopped by PID."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import ClusterError
from cluster.ports import free_port, port_is_free

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
    ) -> EtcdServer:
        """Start etcd on loopback and wait until it reports healthy.

        The log goes to `log_path`, by default `data_dir.parent / "etcd.log"`: the launcher passes
        `<state dir>/etcd/data`, so data and log both live under `etcd/` (SPEC §4). An existing data dir
        is reused (the member restarts with its data). `detach=True` puts etcd in its own session so it
        outlives the launcher.
        """
        binary = find_etcd_binary()
        data_dir = data_dir.absolute()
        client_port = client_port or free_port(HOST)
        while peer_port is None or peer_port == client_port:
            peer_port = free_port(HOST)
        for port in (client_port, peer_port):
            if not port_is_free(port, HOST):
                raise ClusterError(f"cannot start etcd: port {HOST}:{port} is already in use")
        server = cls(
            data_dir=data_dir,
            client_port=client_port,
            peer_port=peer_port,
            name=name,
            log_path=log_path or data_dir.parent / "etcd.log",
        )
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with server.log_path.open("ab") as log:
            server.process = subprocess.Popen(
                [binary, *server._arguments({name: peer_port})],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
            )
        server._wait_healthy(READY_TIMEOUT)
        return server

    def _arguments(self, members: dict[str, int]) -> list[str]:
        """etcd flags; `members` maps member name to peer port (one entry today, three later)."""
        client_url = f"http://{HOST}:{self.client_port}"
        peer_url = f"http://{HOST}:{self.peer_port}"
        initial_cluster = ",".join(f"{name}=http://{HOST}:{port}" for name, port in members.items())
        return [
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-token", self.name,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    def _wait_healthy(self, timeout: float) -> None:
        """Poll GET /health until {"health": "true"}; on exit or timeout, stop etcd and raise."""
        assert self.process is not None
        give_up_at = time.monotonic() + timeout
        while time.monotonic() < give_up_at:
            if self.process.poll() is not None:
                raise ClusterError(
                    f"etcd exited with code {self.process.returncode} during start-up; "
                    f"end of {self.log_path}: {self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise ClusterError(
            f"etcd on {self.endpoint} not healthy after {timeout:.0f}s; end of {self.log_path}: "
            f"{self.log_tail()}"
        )

    def healthy(self) -> bool:
        """True when etcd answers GET /health with {"health": "true"}."""
        url = f"http://{self.endpoint}/health"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the etcd log joined with ` | `, for one-line error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

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
