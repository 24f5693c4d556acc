"""The CRLs a target's real server checks: those the cluster publishes, and those an admin gave.

A server is given CRLs once a credential is revoked (some CRL lists a serial): before that there is
nothing to refuse, and a server that checks revocation refuses every chain with an issuer it has no CRL
for (PostgreSQL checks every issuer of the chain), e.g. an external CA whose CRL nobody installed.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.layout import ClusterLayout

PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.DOTALL)


def crls_in_force(cluster_dir: Path, kind: str) -> bytes:
    """The PEM bundle of CRLs the server of target `kind` must check: every published CRL and the
    admin's, or b"" while none lists a serial."""
    layout = ClusterLayout(cluster_dir)
    crls = [_der(path) for path in sorted(layout.crl_dir.glob("*.crl"))]
    admin = layout.target(kind).admin_crls
    if admin.exists():
        crls += [x509.load_pem_x509_crl(block) for block in PEM_CRL.findall(admin.read_bytes())]
    found = [crl for crl in crls if crl is not None]
    if not any(len(crl) for crl in found):
        return b""
    return b"".join(crl.public_bytes(Encoding.PEM) for crl in found)


def _der(path: Path) -> x509.CertificateRevocationList | None:
    """A published CRL; None when it cannot be read (being replaced, or broken)."""
    try:
        return x509.load_der_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None
