"""Self-signed CA certificates made with a token key (SPEC §5)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from authsim.cluster.resources.x509 import ca_certificate_builder

CA_VALIDITY = dt.timedelta(days=3650)


def ca_subject(cluster_name: str, serial: int) -> x509.Name:
    """The self-signed CA subject: O = CN = cluster name, plus the serial number."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
            x509.NameAttribute(NameOID.COMMON_NAME, cluster_name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial)),
        ]
    )


def self_signed_ca_cert(key: rsa.RSAPrivateKey, cluster_name: str) -> x509.Certificate:
    """A CA certificate for `key` (a token key): CA:TRUE, keyCertSign + cRLSign, both critical."""
    public_key = key.public_key()
    serial = x509.random_serial_number()
    name = ca_subject(cluster_name, serial)
    now = dt.datetime.now(dt.timezone.utc)
    builder = ca_certificate_builder(
        name,
        name,
        public_key,
        now - dt.timedelta(minutes=1),
        now + CA_VALIDITY,
        serial_number=serial,
        authority_key_id=x509.SubjectKeyIdentifier.from_public_key(public_key),
    )
    return builder.sign(key, hashes.SHA256())
