"""The CRLs a target's real server checks: those the cluster publishes for the target's CA type, and
those an admin gave.

A server is given CRLs once a credential is revoked (some CRL lists a serial): before that there is
nothing to refuse, and a server that checks revocation refuses every chain with an issuer it has no CRL
for (PostgreSQL checks every issuer of the chain), e.g. an external CA whose CRL nobody installed.

CRLs that list serials come first: MIT krb5 keeps only the first CRL of each issuer name it reads
(`X509_CRL_cmp` compares issuer names), and override certificates of several keys may share a subject
(`CN=<cluster>,O=<cluster>`); `shadowed` names what it then skips.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.layout import ClusterLayout
from authsim.cluster.resources.ca_types import CA_TYPES

PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.DOTALL)


def crls_in_force(cluster_dir: Path, kind: str) -> bytes:
    """The PEM bundle of CRLs the server of target `kind` must check: every published CRL of the CA
    types that target checks and the admin's, those listing serials first, or b"" while none lists a
    serial."""
    layout = ClusterLayout(cluster_dir)
    types = [name for name, ca_type in CA_TYPES.items() if ca_type.target == kind]
    paths = sorted(p for name in types for p in layout.crl_dir.glob(f"{name}-*.crl"))
    crls = [_der(path) for path in paths]
    admin = layout.target(kind).admin_crls
    if admin.exists():
        crls += [x509.load_pem_x509_crl(block) for block in PEM_CRL.findall(admin.read_bytes())]
    found = sorted((crl for crl in crls if crl is not None), key=lambda crl: len(crl) == 0)
    if not any(len(crl) for crl in found):
        return b""
    return b"".join(crl.public_bytes(Encoding.PEM) for crl in found)


def shadowed(bundle: bytes) -> list[str]:
    """The issuer names of which `bundle` holds several CRLs: a reader keeping one CRL per issuer name
    (MIT krb5) checks only the first of each."""
    names = Counter(
        x509.load_pem_x509_crl(block).issuer.rfc4514_string() for block in PEM_CRL.findall(bundle)
    )
    return [name for name, count in names.items() if count > 1]


def _der(path: Path) -> x509.CertificateRevocationList | None:
    """A published CRL; None when it cannot be read (being replaced, or broken)."""
    try:
        return x509.load_der_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None
