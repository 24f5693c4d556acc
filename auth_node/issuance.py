"""Client credentials signed with this node's active CA key, through an override when one is enabled."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authsim.auth_node.token_signer import TokenSigner
from authsim.cluster.errors import KeyAccessError, ValidationError, control_character, node_command
from authsim.cluster.layout import published_crl
from authsim.cluster.resources import clock
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.resources.cert_authority import CAKeyPair, CertAuthority
from authsim.cluster.resources.override import CertAuthorityOverride
from authsim.cluster.resources.x509 import display_name

SMARTCARD_LOGON = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")
UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
DEFAULT_TTL = dt.timedelta(hours=1)
BACKDATE = dt.timedelta(minutes=1)  # a leaf is valid from a little before now: clients' clocks lag
MAX_TTL = dt.timedelta(days=30)
MAX_USER_BYTES = 64  # the user is the leaf's CN: X.520 allows 64
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # bounds the work a caller's key costs
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
KEY_RULE = (
    f"public_key: must be an RSA key of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits or an EC key on P-256 or P-384"
)
USER_RULE = "printable characters only (letters, digits, punctuation, symbols, spaces)"


@dataclass(frozen=True)
class Issuer:
    """Who signs: the CA key, and the certificate that names it (the override's, or the self-signed one)."""

    key: CAKeyPair
    certificate: x509.Certificate
    chain: tuple[str, ...]  # PEMs presented above the leaf, nearest first
    override_active: bool

    @property
    def subject(self) -> str:
        """The issuing certificate's subject, RFC 4514."""
        return _subject(self.certificate)


@dataclass(frozen=True)
class Credential:
    certificate: x509.Certificate
    issuer: Issuer

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode()

    @property
    def not_after_clipped(self) -> bool:
        """True when the credential ends with its issuing certificate, before its TTL would: authsim
        clips a credential to the override (or self-signed) certificate it chains to, never refuses it."""
        return self.certificate.not_valid_after_utc >= self.issuer.certificate.not_valid_after_utc


def resolve_issuer(
    ca: CertAuthority,
    override: CertAuthorityOverride | None,
    host_id: str,
    node: str,
    node_names: Mapping[str, str],
) -> Issuer:
    """This node's active key of `ca`, issuing under its enabled override entry if there is one."""
    active = [pair for pair in ca.active_keys if pair.key.host_id == host_id]
    if not active:
        role = "only an additional key" if ca.keys_of_host(host_id) else "no key"
        holders = ", ".join(
            f"{node_names.get(p.key.host_id, 'host')} ({p.key.host_id})"
            + (f" {node_command(node_names[p.key.host_id])}" if p.key.host_id in node_names else "")
            for p in ca.active_keys
        )
        raise KeyAccessError(
            f"node {node} holds {role} of the {ca.ca_type} CA, so it cannot sign: run "
            f"`authctl auth rotate --type {ca.ca_type}` to make its key active, or sign on the node holding "
            f"the active key: {holders}",
            owner_host_id=ca.active_keys[0].key.host_id if ca.active_keys else "",
            asking_host_id=host_id,
        )
    pair = active[0]
    _check_valid(_certificate(pair.cert_pem), f"the self-signed {ca.ca_type} CA certificate")
    found = None if override is None else override.entry(pair.public_key_hash)
    if found is not None and found[1].enabled:
        entry = found[1]
        override_cert = _certificate(entry.certificate)
        _check_valid(
            override_cert,
            f"the enabled {ca.ca_type} override of key {pair.public_key_hash[:16]}",
            f"; replace it with `authctl auth update-override --type {ca.ca_type} --public-key "
            f"{pair.public_key_hash} --set-cert NEW.pem`",
        )
        chain = () if CA_TYPES[ca.ca_type].smartcard_logon else (entry.certificate, *entry.chain)
        return Issuer(pair, override_cert, chain, True)
    return Issuer(pair, _certificate(pair.cert_pem), (), False)


@functools.lru_cache(maxsize=256)
def _subject(cert: x509.Certificate) -> str:
    return display_name(cert.subject)


@functools.lru_cache(maxsize=256)
def _certificate(pem: str) -> x509.Certificate:
    """Issuer certificates, parsed once: they change only when a CA or an override does."""
    return x509.load_pem_x509_certificate(pem.encode())


def _check_valid(cert: x509.Certificate, what: str, hint: str = "") -> None:
    now = clock.now()
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise KeyAccessError(
            f"{what} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC): cannot sign under it{hint}"
        )


@dataclass(frozen=True)
class CredentialRequest:
    """What a client asks for: a credential of CA `ca_type` for `user` and the client's `public_key`.
    Checked when made: a request that exists is one the node may sign."""

    ca_type: str
    user: str
    public_key: CertificateIssuerPublicKeyTypes
    ttl: dt.timedelta = DEFAULT_TTL

    def __post_init__(self) -> None:
        problems = user_problems(self.user) + public_key_problems(self.public_key)
        if not dt.timedelta(0) < self.ttl <= MAX_TTL:
            problems.append(f"ttl: must be between 1 second and {MAX_TTL.days} days")
        if problems:
            raise ValidationError(problems)


def user_problems(user: str) -> list[str]:
    """The user rule: the leaf's CN (and UPN), so short and printable."""
    if not user:
        return ["user: required"]
    size = len(user.encode(errors="surrogatepass"))
    if size > MAX_USER_BYTES:
        return [f"user: at most {MAX_USER_BYTES} bytes of UTF-8 (a certificate CN), got {size} bytes"]
    bad = control_character(user)
    if bad is not None:
        return [f"user: {USER_RULE}; no control or formatting characters, got {bad}"]
    return []


def public_key_problems(key: CertificateIssuerPublicKeyTypes) -> list[str]:
    """The client key rule: RSA of a safe size, or EC on a curve every verifier accepts."""
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            return [f"{KEY_RULE}, got RSA {key.key_size} bits"]
        return []
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, EC_CURVES):
            return [f"{KEY_RULE}, got EC {key.curve.name}"]
        return []
    return [f"{KEY_RULE}, got {type(key).__name__.removeprefix('_')}"]


async def issue_credentials(
    signer: TokenSigner,
    work: Sequence[tuple[Issuer, CredentialRequest]],
    domain: str,
    crl_dir: Path | None = None,
) -> list[Credential]:
    """Client certificates, each signed inside the token under its issuer, in the order asked; a
    windows leaf's UPN is `user@<domain>`, and its CRL distribution point the published CRL of its
    issuing certificate in `crl_dir` (a file:// URI) when there is one.

    The certificates are built here, on the event loop, and signed on the token's thread in one hand-over
    with whatever other requests are waiting for it.
    """
    builders = [
        (i.key.key, _leaf_builder(_issuing(i.certificate), r, domain, _crl_uri(i, r.ca_type, crl_dir)))
        for i, r in work
    ]
    certificates = await signer.sign(builders)
    return [Credential(c, issuer) for c, (issuer, _) in zip(certificates, work, strict=True)]


@dataclass(frozen=True)
class _IssuingCertificate:
    """What a leaf takes from the certificate it chains to."""

    subject: x509.Name
    authority_key_id: x509.AuthorityKeyIdentifier  # the issuing certificate's SKI
    not_before: dt.datetime
    not_after: dt.datetime


@functools.lru_cache(maxsize=256)
def _issuing(cert: x509.Certificate) -> _IssuingCertificate:
    """Read once per issuing certificate, not once per leaf."""
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(cert.public_key())  # type: ignore[arg-type]
    return _IssuingCertificate(cert.subject, aki, cert.not_valid_before_utc, cert.not_valid_after_utc)


def _crl_uri(issuer: Issuer, ca_type: str, crl_dir: Path | None) -> str:
    """Where a windows leaf's verifier finds its issuer's CRL: the cluster's publication point."""
    if crl_dir is None or not CA_TYPES[ca_type].smartcard_logon:
        return ""
    path = published_crl(crl_dir, ca_type, issuer.key.public_key_hash, issuer.override_active)
    return path.as_uri()


def _leaf_builder(
    issuer: _IssuingCertificate, request: CredentialRequest, domain: str, crl_uri: str = ""
) -> x509.CertificateBuilder:
    """The leaf RFC 5280 client verifiers accept: CN = user and a SAN naming the user, SKI and AKI,
    valid within its issuer's validity; with `crl_uri`, a CRL distribution point naming it."""
    now = clock.now()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.user)])
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    smartcard = CA_TYPES[request.ca_type].smartcard_logon
    if smartcard:
        usages.append(SMARTCARD_LOGON)
    public_key = request.public_key
    # The SAN names the user: for windows the UPN `user@<domain>` (what a domain controller and a PKINIT
    # KDC map), else the subject again as a directoryName: the user has no DNS name, e-mail address or
    # URI, and the DN is what PostgreSQL's cert auth maps.
    san = (
        x509.OtherName(UPN, _der_utf8_string(f"{request.user}@{domain}"))
        if smartcard
        else x509.DirectoryName(subject)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, issuer.not_before))
        .not_valid_after(min(now + request.ttl, issuer.not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),  # RSA key transport only
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(issuer.authority_key_id, critical=False)
    )
    if crl_uri:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_uri)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder


def _der_utf8_string(text: str) -> bytes:
    """DER encoding of an ASN.1 UTF8String (the value of a UPN otherName)."""
    data = text.encode()
    if len(data) < 0x80:
        return bytes([0x0C, len(data)]) + data
    length = len(data).to_bytes((len(data).bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(length)]) + length + data
