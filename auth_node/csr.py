"""CSRs for the CA keys this node holds, signed inside its token (SPEC §6)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from authsim.cluster.errors import NotFoundError, ValidationError, cut, quoted
from authsim.cluster.resources.cert_authority import CAKeyPair, CertAuthority
from authsim.cluster.resources.key_prefix import resolve_key_hash
from authsim.cluster.resources.subject import with_cluster_name
from authsim.hsm import KeyStore

MAX_SUBJECT_CHARS = 1024  # far above any real distinguished name; bounds what a request makes us parse
# Attributes cryptography encodes as PrintableString, and what that string type may hold (X.680 §41.4)
_PRINTABLE_STRING_OIDS = (
    NameOID.COUNTRY_NAME,
    NameOID.JURISDICTION_COUNTRY_NAME,
    NameOID.SERIAL_NUMBER,
    NameOID.DN_QUALIFIER,
)
_PRINTABLE_STRING = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]*")


@dataclass(frozen=True)
class OverrideCSR:
    ca_type: str
    role: str
    public_key_hash: str
    pem: str


def csr_subject(ca_cert_subject: x509.Name, cluster_name: str, custom: str = "") -> x509.Name:
    """The CSR subject: the CA's subject without serialNumber, or `custom` made to name the cluster
    (`subject.with_cluster_name`)."""
    if not custom:
        return x509.Name(
            [rdn for rdn in ca_cert_subject.rdns if not any(a.oid == NameOID.SERIAL_NUMBER for a in rdn)]
        )
    if len(custom) > MAX_SUBJECT_CHARS:
        raise ValidationError([f"subject: longer than {MAX_SUBJECT_CHARS} characters (got {len(custom)})"])
    try:
        name = x509.Name.from_rfc4514_string(custom)
    except ValueError as e:
        raise ValidationError([f"subject: not an RFC 4514 distinguished name: {cut(str(e), 200)}"]) from None
    for attribute in name:
        if attribute.oid in _PRINTABLE_STRING_OIDS and not _PRINTABLE_STRING.fullmatch(str(attribute.value)):
            raise ValidationError(
                [
                    f"subject: {attribute.rfc4514_attribute_name} may hold only A-Z a-z 0-9 space and "
                    f"'()+,-./:=? (a PrintableString), got {quoted(attribute.value)}"
                ]
            )
    return with_cluster_name(name, cluster_name)


async def create_override_csrs(
    ca: CertAuthority,
    keystore: KeyStore,
    node_names: dict[str, str],
    subject: str = "",
    public_key_hash: str = "",
) -> tuple[list[OverrideCSR], list[str]]:
    """One CSR per key of `ca` in this node's token (active first), and warnings for the keys skipped;
    `public_key_hash`, a hash or a unique prefix of one, picks one key."""
    if public_key_hash:
        known = (pair.public_key_hash for _, pair in ca.all_keys())
        public_key_hash = resolve_key_hash(public_key_hash, known, f"the {ca.ca_type} CA", "public_key_hash")
    own = [(role, pair) for role, pair in ca.all_keys() if pair.key.host_id == keystore.host_id]
    others = [(role, pair) for role, pair in ca.all_keys() if pair.key.host_id != keystore.host_id]
    if public_key_hash:
        own = [(r, p) for r, p in own if p.public_key_hash == public_key_hash]
        if not own:  # a key of the CA, so another node's
            holder = _holder(next(p for _, p in others if p.public_key_hash == public_key_hash), node_names)
            raise ValidationError(
                [
                    f"public_key: key {public_key_hash[:16]} is held by {holder}: "
                    "run create-override-csr on that node"
                ]
            )
        others = []
    if not own:
        raise NotFoundError(f"node {keystore.node_name} holds no key of the {ca.ca_type} CA")
    if subject and len(own) > 1:
        raise ValidationError(
            [f"subject: a custom subject would apply to {len(own)} keys: pick one with --public-key"]
        )
    warnings = [
        f"skipped {role} key {p.public_key_hash[:16]}: held by {_holder(p, node_names)}, "
        "run create-override-csr on that node"
        for role, p in others
    ]
    csrs = []
    for role, pair in own:
        pem = await asyncio.to_thread(_sign_csr, keystore, pair, ca.cluster_name, subject)
        csrs.append(OverrideCSR(ca.ca_type, role, pair.public_key_hash, pem))
    return csrs, warnings


def _holder(pair: CAKeyPair, node_names: dict[str, str]) -> str:
    name = node_names.get(pair.key.host_id, "another node")
    return f"node {name} (host {pair.key.host_id})"


def _sign_csr(keystore: KeyStore, pair: CAKeyPair, cluster_name: str, subject: str) -> str:
    ca_cert = x509.load_pem_x509_certificate(pair.cert_pem.encode())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        csr_subject(ca_cert.subject, cluster_name, subject)
    )
    key = keystore.private_key(pair.key)
    csr = keystore.run(lambda: builder.sign(key, hashes.SHA256()))
    return csr.public_bytes(Encoding.PEM).decode()
