"""The KDC's supervisor: `python -m authsim.cluster.local.kdc_supervisor --dir D --domain N --port P`.

It runs the desktop's krb5kdc as its child (same process group) on 127.0.0.1:P, and restarts it there
whenever the KDC's trust changes (`targets.kdc_trust`: its anchors file, the published CRLs and the
admin's), which MIT krb5 reads only at start; after each start it records what the KDC started with
(`KdcLayout.serving`), so logons can wait for it. Its PID is the KDC's in `cluster.yaml`, the same for
as long as it runs: `authsim down` stops it and its krb5kdc together (their process group), and only it
ever starts a krb5kdc for the dir, one at a time. It exits when the krb5kdc it starts does not serve.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from authsim.cluster.errors import ClusterError
from authsim.cluster.local.kdc import READY_TIMEOUT, SERVING, SUPERVISED, Kdc
from authsim.cluster.secret_files import write_private
from authsim.cluster.targets.crls import PEM_CRL, shadowed
from authsim.cluster.targets.kdc_trust import KdcTrust, kdc_trust
from authsim.cluster.targets.server_log import end_of

POLL_INTERVAL = 0.2  # seconds between looks at the KDC's trust files
STOP_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1  # prctl(2)


class Supervisor:
    """krb5kdc for `kdc` on `kdc.port`, kept running with the trust of the files."""

    def __init__(self, kdc: Kdc) -> None:
        self.kdc = kdc
        self.child: subprocess.Popen[bytes] | None = None
        self.started_with: str | None = None  # the digest of the trust the child was started with
        self.stopping = False

    def run(self) -> None:
        """Keep the KDC serving with the current trust until SIGTERM or SIGINT."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        layout = self.kdc.layout
        write_private(layout.pid_file, f"{os.getpid()}\n".encode())
        try:
            while not self.stopping:
                trust = kdc_trust(self.kdc.directory)
                if not self.stopping and self._stale(trust):
                    self._restart(trust)
                time.sleep(POLL_INTERVAL)
        finally:
            layout.serving.unlink(missing_ok=True)
            self._stop_child()
            layout.pid_file.unlink(missing_ok=True)

    def _stale(self, trust: KdcTrust) -> bool:
        """True when no krb5kdc runs, or it was started with another trust."""
        return self.child is None or self.child.poll() is not None or trust.digest != self.started_with

    def _restart(self, trust: KdcTrust) -> None:
        """Stop the running krb5kdc (if any) and start one checking `trust`; ClusterError when it does
        not serve."""
        self._stop_child()
        self.kdc.write_crls(trust.crls)
        assert self.kdc.port is not None
        argv, env = self.kdc.command(self.kdc.port)
        offset = end_of(self.kdc.layout.log)
        # output: our log; preexec_fn is safe here, the supervisor runs no threads
        self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
        if not self.kdc.ready(self.child, offset, SERVING, READY_TIMEOUT):
            raise ClusterError(f"krb5kdc did not start on {self.kdc.address}")
        self.started_with = trust.digest
        write_private(self.kdc.layout.serving, f"{trust.digest}\n".encode())
        crls = len(PEM_CRL.findall(trust.crls))
        print(f"{SUPERVISED} on {self.kdc.address}, pid {self.child.pid}, {crls} CRLs", flush=True)
        for issuer in shadowed(trust.crls):
            print(
                f"kdc supervisor: warning: krb5kdc checks only the first CRL of issuer {issuer!r}", flush=True
            )

    def _stop_child(self) -> None:
        if self.child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.child.terminate()
        try:
            self.child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()
        self.child = None

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the supervisor dies, even by SIGKILL (no orphan KDC
    left holding the port)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="authsim.cluster.local.kdc_supervisor", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="the cluster dir")
    parser.add_argument("--domain", required=True, help="the desktop domain (the realm in lower case)")
    parser.add_argument("--port", type=int, required=True, help="the KDC's port on 127.0.0.1")
    args = parser.parse_args(argv)
    kdc = Kdc(args.dir.absolute(), args.domain, args.port)
    try:
        Supervisor(kdc).run()
    except ClusterError as e:
        print(f"kdc supervisor: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
