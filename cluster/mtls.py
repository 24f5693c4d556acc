"""The cluster-internal TLS identities: a server CA for node certificates, an admin CA for authctl,
an etcd CA for the embedded etcd's member and its clients (each node and the admin).

These are software keys (grpcio needs PEM keys for TLS); CA keys in tokens never serve TLS. Separate
CAs keep the roles apart: a node accepts only client certificates from the admin CA, so a node's own
server certificate can never act as an admin identity, and the embedded etcd accepts only certificates
from the etcd CA, whose client certificates name their holder in the CN (etcd's user name for RBAC).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authsim.cluster.layout import (
    ClusterLayout,
    EtcdClientLayout,
    EtcdLayout,
    KdcLayout,
    NodeLayout,
    ServerTLSLayout,
)
from authsim.cluster.resources.x509 import ca_certificate_builder, key_usage
from authsim.cluster.secret_files import write_all
from authsim.cluster.store import EtcdTLS

NODE_TLS_NAME = "authsim-node"  # DNS SAN every node certificate carries; clients verify against it
ADMIN_CN = "admin"
ETCD_MEMBER_CN = "etcd-member"  # no etcd user has this name: the member certificate grants no KV access
PKINIT_KDC = x509.ObjectIdentifier("1.3.6.1.5.2.3.5")  # EKU id-pkinit-KPKdc (RFC 4556)
PKINIT_SAN = x509.ObjectIdentifier("1.3.6.1.5.2.2")  # otherName id-pkinit-san: a KRB5PrincipalName
_NT_SRV_INST = 2  # Kerberos name type of a service instance such as krbtgt/REALM
_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class TLSIdentity:
    """A certificate and its key on disk, with the CA bundle its peer must chain to."""

    cert: Path
    key: Path
    peer_ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.key.read_bytes(), self.cert.read_bytes(), self.peer_ca.read_bytes()


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ensure_ca(
    cert_path: Path, key_path: Path, name: str, cluster_name: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # pki/: private from the first CA
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"{cluster_name} {name}", cluster_name)
    now = dt.datetime.now(dt.timezone.utc)
    builder = ca_certificate_builder(
        subject, subject, key.public_key(), now - dt.timedelta(minutes=5), now + _VALIDITY, path_length=0
    )
    cert = builder.sign(key, hashes.SHA256())
    _write_pair(cert_path, cert, key_path, key)
    return cert, key


def _server_ca(cluster_dir: Path, cluster_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of node and target server certificates, made once (its name is in its subject)."""
    pki = ClusterLayout(cluster_dir).pki
    return _ensure_ca(pki.server_ca_cert, pki.server_ca_key, "server-ca", cluster_name)


def _admin_ca(cluster_dir: Path, cluster_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of admin client certificates, made once."""
    pki = ClusterLayout(cluster_dir).pki
    return _ensure_ca(pki.admin_ca_cert, pki.admin_ca_key, "admin-ca", cluster_name)


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    cluster_name: str,
    usage: x509.ObjectIdentifier | list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    cert_path: Path,
    key_path: Path,
) -> None:
    if cert_path.exists() and key_path.exists():
        return
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(cn, cluster_name), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(["digital_signature"]), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_pair(cert_path, cert, key_path, key)


def _write_pair(
    cert_path: Path, cert: x509.Certificate, key_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    """The key (0600) and its certificate, both or neither (see `write_all`)."""
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    write_all({key_path: _key_pem(key), cert_path: cert_pem}, public={cert_path})


def ensure_admin_identity(cluster_dir: Path, cluster_name: str) -> TLSIdentity:
    """The admin identity authctl presents (client cert from the admin CA), made once."""
    layout = ClusterLayout(cluster_dir)
    server_ca, _ = _server_ca(cluster_dir, cluster_name)
    admin_ca = _admin_ca(cluster_dir, cluster_name)
    admin = layout.admin
    admin.directory.mkdir(mode=0o700, exist_ok=True)
    _issue(admin_ca, ADMIN_CN, cluster_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], admin.cert, admin.key)
    admin.server_ca.write_bytes(server_ca.public_bytes(serialization.Encoding.PEM))
    return TLSIdentity(admin.cert, admin.key, admin.server_ca)


def ensure_node_identity(cluster_dir: Path, cluster_name: str, node_dir: Path, node_name: str) -> TLSIdentity:
    """A node's server certificate (named `authsim-node`, which clients check), trusting only the admin
    CA for clients. The node also gets the server CA, to check the downstream targets it connects to."""
    identity = ensure_server_identity(cluster_dir, cluster_name, node_dir, [NODE_TLS_NAME, node_name])
    admin_ca, _ = _admin_ca(cluster_dir, cluster_name)
    node = NodeLayout(node_dir)
    node.admin_ca.write_bytes(admin_ca.public_bytes(serialization.Encoding.PEM))
    return TLSIdentity(identity.cert, identity.key, node.admin_ca)


def issued_cluster_name(cert_path: Path) -> str:
    """The cluster a certificate of this PKI was made for: its subject's O (see `_name`)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(names[0].value) if names else ""


def ensure_server_identity(
    cluster_dir: Path, cluster_name: str, directory: Path, names: list[str]
) -> TLSIdentity:
    """A server certificate from the server CA for DNS `names` (plus localhost), made once, and the
    server CA beside it. Only nodes carry the name `authsim-node`: a target's certificate cannot pass
    for a node's."""
    server_ca = _server_ca(cluster_dir, cluster_name)
    server = ServerTLSLayout(directory)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in (*names, "localhost")]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    _issue(
        server_ca,
        names[-1],
        cluster_name,
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
        server.tls_cert,
        server.tls_key,
    )
    server.server_ca.write_bytes(server_ca[0].public_bytes(serialization.Encoding.PEM))
    return TLSIdentity(server.tls_cert, server.tls_key, server.server_ca)


def _etcd_ca(cluster_dir: Path, cluster_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of the embedded etcd's member and client certificates, made once."""
    pki = ClusterLayout(cluster_dir).pki
    return _ensure_ca(pki.etcd_ca_cert, pki.etcd_ca_key, "etcd-ca", cluster_name)


def ensure_etcd_member_identity(
    cluster_dir: Path, cluster_name: str, directory: Path | None = None, hosts: Sequence[str] = ()
) -> EtcdTLS:
    """An etcd member identity in `directory` (default the embedded etcd's `etcd/`), made once: a
    certificate for `hosts` (names or IP addresses), localhost and 127.0.0.1 that serves clients and
    peers and is a client to the other members (and to its health check), and the etcd CA as the only
    CA it trusts. Members of one cluster share it, so it names every member's host."""
    ca = _etcd_ca(cluster_dir, cluster_name)
    etcd = EtcdLayout(directory) if directory else ClusterLayout(cluster_dir).etcd
    etcd.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    sans = [_san(host) for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"])]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    _issue(ca, ETCD_MEMBER_CN, cluster_name, usages, sans, etcd.tls_cert, etcd.tls_key)
    etcd.etcd_ca.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    return EtcdTLS(etcd.etcd_ca, etcd.tls_cert, etcd.tls_key)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def ensure_etcd_client_identity(cluster_dir: Path, cluster_name: str, directory: Path, cn: str) -> EtcdTLS:
    """An etcd client identity in `directory` (a node's dir, `admin/`), made once: a client
    certificate from the etcd CA with CN = `cn` (etcd's user name for it), and the etcd CA."""
    ca = _etcd_ca(cluster_dir, cluster_name)
    files = EtcdClientLayout(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _issue(ca, cn, cluster_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], files.cert, files.key)
    files.etcd_ca.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    return EtcdTLS(files.etcd_ca, files.cert, files.key)


def _kdc_ca(cluster_dir: Path, cluster_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of the KDC's PKINIT certificate, made once. The KDC needs its own issuer among its trust
    anchors, and a CA that signs nothing else adds no client it would accept."""
    pki = ClusterLayout(cluster_dir).pki
    return _ensure_ca(pki.kdc_ca_cert, pki.kdc_ca_key, "kdc-ca", cluster_name)


def ensure_kdc_identity(cluster_dir: Path, cluster_name: str, kdc: KdcLayout, realm: str) -> TLSIdentity:
    """The KDC's PKINIT certificate for `realm` (EKU id-pkinit-KPKdc, SAN krbtgt/REALM@REALM), made once,
    and its CA beside it: PKINIT clients check the KDC against that CA."""
    ca = _kdc_ca(cluster_dir, cluster_name)
    kdc.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    san = x509.OtherName(PKINIT_SAN, krb5_principal_name(realm, ["krbtgt", realm], _NT_SRV_INST))
    _issue(ca, "kdc", cluster_name, PKINIT_KDC, [san], kdc.cert, kdc.key)
    kdc.kdc_ca.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    return TLSIdentity(kdc.cert, kdc.key, kdc.kdc_ca)


def krb5_principal_name(realm: str, components: Sequence[str], name_type: int) -> bytes:
    """DER of a KRB5PrincipalName (RFC 4556 §3.2.2), the value of an id-pkinit-san otherName:
    SEQUENCE { [0] realm GeneralString, [1] SEQUENCE { [0] name-type INTEGER, [1] SEQUENCE OF
    GeneralString } }, every tag explicit."""
    strings = b"".join(_der(0x1B, c.encode()) for c in components)
    name = _der(0x30, _der(0xA0, _der(0x02, name_type.to_bytes(1, "big"))) + _der(0xA1, _der(0x30, strings)))
    return _der(0x30, _der(0xA0, _der(0x1B, realm.encode())) + _der(0xA1, name))


def _der(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length (short or long form), content."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content
