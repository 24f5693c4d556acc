"""Start a target process for the launcher, and wait until it accepts connections."""

from __future__ import annotations

import os
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


def wait_listening(process: subprocess.Popen[bytes], address: str, log: Path, timeout: float) -> None:
    """Return once the server `process` listens on `host:port` itself; raise as soon as it has exited
    (PortInUseError when another process holds the port), with the end of its `log`, or after
    `timeout` seconds."""
    port = int(address.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while not processes.listens_on(process.pid, port):
        if process.poll() is not None:
            raise processes.exit_error(f"the server for {address}", process, log)
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"nothing listens on {address} after {timeout:g}s; end of {log}: {processes.tail(log)}"
            )
        time.sleep(0.05)
