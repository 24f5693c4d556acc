"""X.509 helpers shared by the product and the tests: the one public-key hash (SPEC §5)."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def public_key_hash(public_key: CertificatePublicKeyTypes) -> str:
    """Lower-case hex SHA-256 of the key's DER SubjectPublicKeyInfo."""
    return hashlib.sha256(
        public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()
