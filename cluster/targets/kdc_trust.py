"""What the desktop's KDC must check, and whether the running KDC checks it yet.

MIT krb5 reads `pkinit_anchors` and `pkinit_revoke` only at start, so the KDC runs under a supervisor
(`authsim.cluster.local.kdc_supervisor`) that restarts it when they change and then records the digest
of what it started it with (`KdcLayout.serving`). A logon first waits until that digest is the one of
the files now, so a credential revoked a moment ago is checked against the CRL listing it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from authsim.cluster.layout import ClusterLayout
from authsim.cluster.targets.crls import crls_in_force

CURRENT_TIMEOUT = 15.0  # seconds a logon waits for the KDC to take new anchors or CRLs


@dataclass(frozen=True)
class KdcTrust:
    """The KDC's client trust: its anchors file and the CRLs it must check (PEM; b"": none)."""

    anchors: bytes
    crls: bytes

    @property
    def digest(self) -> str:
        parts = (self.anchors, self.crls)
        return hashlib.sha256(b"".join(len(p).to_bytes(8, "big") + p for p in parts)).hexdigest()


def kdc_trust(cluster_dir: Path) -> KdcTrust:
    """The trust the KDC of `cluster_dir` must run with now: its anchors file, and the desktop's CRLs in
    force (`crls_in_force`: the published ones and the admin's, once some CRL lists a serial)."""
    anchors = ClusterLayout(cluster_dir).kdc.anchors
    return KdcTrust(anchors.read_bytes() if anchors.exists() else b"", crls_in_force(cluster_dir, "desktop"))


def wait_current(cluster_dir: Path, timeout: float = CURRENT_TIMEOUT) -> str | None:
    """Wait until the running KDC was started with the trust of the files now; None once it was (or
    when no supervisor runs it: a KDC run by `serve` has what it read at start), else why not."""
    serving = ClusterLayout(cluster_dir).kdc.serving
    deadline = time.monotonic() + timeout
    while True:
        try:
            started_with = serving.read_text().strip()
        except FileNotFoundError:
            return None
        if started_with == kdc_trust(cluster_dir).digest:
            return None
        if time.monotonic() > deadline:
            return f"the KDC did not take the current anchors and CRLs within {timeout:g}s"
        time.sleep(0.05)
