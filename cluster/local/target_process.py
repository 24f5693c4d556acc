"""Start a target process for the launcher, and wait until it accepts connections."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import processes
from authsim.cluster.targets._tls import KINDS, target_identity


def target_marker(cluster_dir: Path, kind: str) -> str:
    """A string only this target's command line contains (for `processes.is_running` / `stop`)."""
    return f"cluster.targets --dir {cluster_dir} --kind {kind}"


def start_target(
    cluster_dir: Path, kind: str, port: int, cluster_name: str, server: str
) -> subprocess.Popen[bytes]:
    """Spawn `python -m authsim.cluster.targets` for `kind` on 127.0.0.1:`port`, in front of its real
    `server` (host:port of the KDC or PostgreSQL), logging to
    `targets/<kind>/target.log`. Its server certificate is made here first, so targets started
    together never race to create the server CA."""
    if kind not in KINDS:
        raise ClusterError(f"unknown target kind {kind!r} (known: {', '.join(KINDS)})")
    target_identity(cluster_dir, cluster_name, kind)
    argv = [sys.executable, "-m", "authsim.cluster.targets", "--dir", str(cluster_dir), "--kind", kind]
    argv += ["--listen", f"127.0.0.1:{port}", "--cluster-name", cluster_name, "--server", server]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return processes.spawn(argv, ClusterLayout(cluster_dir).target(kind).log, env)


def wait_listening(address: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once `host:port` accepts a TCP connection; ClusterError after `timeout` seconds, or as
    soon as `process` (the server, when given) has exited."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError as e:
            if process is not None and process.poll() is not None:
                raise ClusterError(
                    f"the server for {address} exited with code {process.returncode}"
                ) from None
            if time.monotonic() >= deadline:
                raise ClusterError(f"nothing listens on {address} after {timeout:g}s: {e}") from None
            time.sleep(0.05)
