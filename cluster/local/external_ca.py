"""A stand-in for the user's external CA: a root and an intermediate on disk that sign override CSRs.

`init(dir)` makes (once) `root.pem`/`root.key`, `intermediate.pem`/`intermediate.key` and `chain.pem`
(intermediate then root: the `chain` of an override entry). `ExternalCA.sign_csr` issues the CA
certificate an override needs (seed step 2), or, for demos of validation, a deliberately wrong one.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from authsim.cluster.errors import ClusterError, ValidationError
from authsim.cluster.resources.crl import crl_builder
from authsim.cluster.resources.subject import CLUSTER_NAME_OID
from authsim.cluster.resources.x509 import ca_certificate_builder
from authsim.cluster.secret_files import write_all

WRONG_CLUSTER = "wrong-cluster"

# Deliberately broken certificates, each breaking exactly one rule of an override certificate.
DEFECTS: dict[str, str] = {
    "no-crl-sign": "KeyUsage without cRLSign",
    "no-cert-sign": "KeyUsage without keyCertSign",
    "not-ca": "BasicConstraints CA:FALSE",
    "wrong-cluster": f"first O and OID {CLUSTER_NAME_OID.dotted_string} replaced with {WRONG_CLUSTER!r}",
    "expired": "validity entirely in the past",
    "outlive": "valid for 30 years (outlives the cluster's 10-year self-signed CA certificate)",
}

# What `sign_csr` does without defects, as an OpenSSL extfile for users whose external CA is OpenSSL.
OPENSSL_EXTFILE = """\
basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always
"""
OPENSSL_SIGN_COMMAND = (
    "openssl x509 -req -in CSR -CA intermediate.pem -CAkey intermediate.key -CAcreateserial"
    " -days 365 -sha256 -extfile ext.cnf -out cert.pem"
)

_CA_VALIDITY = dt.timedelta(days=20 * 365)
_USAGE_DEFECTS = (("key_cert_sign", "no-cert-sign"), ("crl_sign", "no-crl-sign"))  # KeyUsage flag, its defect
_OUTLIVE = dt.timedelta(days=30 * 365)


@dataclass(frozen=True)
class ExternalCA:
    """An initialised external CA directory: the root, the intermediate that signs, and its key."""

    directory: Path
    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: rsa.RSAPrivateKey = field(repr=False)

    @property
    def chain_path(self) -> Path:
        return self.directory / "chain.pem"

    @property
    def extfile_path(self) -> Path:
        """OPENSSL_EXTFILE, which OPENSSL_SIGN_COMMAND names (`init` writes it)."""
        return self.directory / "ext.cnf"

    @property
    def chain_pem(self) -> bytes:
        """Intermediate then root: the chain above a certificate this CA signs."""
        return _pem(self.intermediate) + _pem(self.root)

    @classmethod
    def load(cls, directory: Path) -> ExternalCA:
        """The CA `init` made in `directory`; ClusterError saying how to make one if there is none."""
        paths = [directory / n for n in ("root.pem", "intermediate.pem", "intermediate.key")]
        if not all(p.is_file() for p in paths):
            raise ClusterError(
                f"no external CA in {directory}: run `authsim external-ca init --dir {directory}`"
            )
        root = x509.load_pem_x509_certificate(paths[0].read_bytes())
        intermediate, key = _load_pair(directory, "intermediate")
        return cls(directory, root, intermediate, key)

    def crls(self) -> bytes:
        """The root's and the intermediate's CRLs (PEM, revoking nothing, valid 7 days): what a verifier
        that checks every issuer of a chain (PostgreSQL) needs from this CA."""
        root, root_key = _load_pair(self.directory, "root")
        now = dt.datetime.now(dt.timezone.utc)
        signed = [
            crl_builder(cert, 1, {}, now).sign(key, hashes.SHA256())
            for cert, key in ((root, root_key), (self.intermediate, self.intermediate_key))
        ]
        return b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in signed)

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        days: int = 365,
        defects: frozenset[str] = frozenset(),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A CA certificate for the CSR's subject and key, signed by the intermediate.

        Extensions as in OPENSSL_EXTFILE, valid from a minute ago (or from `not_before`) for `days` (or
        until `not_after`).
        `defects` (keys of DEFECTS) break chosen rules on purpose; 'expired' and 'outlive' set the
        validity themselves. Every problem with the arguments is reported in one ValidationError.
        """
        problems = [
            f"defects: unknown {d!r} (known: {', '.join(DEFECTS)})" for d in sorted(defects - DEFECTS.keys())
        ]
        if days < 1:
            problems.append(f"days: must be at least 1, got {days}")
        if {"expired", "outlive"} <= defects:
            problems.append("defects: 'expired' and 'outlive' cannot be combined")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            problems.append("csr: not a PEM certificate request")
        else:
            if not csr.is_signature_valid:
                problems.append("csr: signature does not verify")
        if problems:
            raise ValidationError(problems)

        now = dt.datetime.now(dt.timezone.utc)
        not_before = not_before or now - dt.timedelta(minutes=1)
        not_after = not_after or now + dt.timedelta(days=days)
        if "expired" in defects:
            not_before, not_after = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
        if "outlive" in defects:
            not_after = now + _OUTLIVE
        subject = _wrong_cluster(csr.subject) if "wrong-cluster" in defects else csr.subject
        ca = "not-ca" not in defects
        issuer_ski = self.intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = ca_certificate_builder(
            subject,
            self.intermediate.subject,
            csr.public_key(),
            not_before,
            not_after,
            ca=ca,
            path_length=0 if ca else None,
            usage=[flag for flag, defect in _USAGE_DEFECTS if defect not in defects],
            authority_key_id=issuer_ski,
        )
        return builder.sign(self.intermediate_key, hashes.SHA256())


def init(directory: Path, name: str = "authsim external root") -> ExternalCA:
    """Make the external CA in `directory` (0700) unless it is there already; return it.

    Root: self-signed `CN=<name>`, no path length limit. Intermediate: `CN=<name> intermediate`,
    pathlen 1 (the override CA below it, pathlen 0, issues the leaves). Keys are RSA-2048, files 0600.
    `chain.pem` is rewritten from the two certificates each time, `ext.cnf` (OPENSSL_EXTFILE) too.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    new_root = not _has_pair(directory, "root")
    if new_root:
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_pair(directory, "root", _ca_cert(root_name, key.public_key(), root_name, key, None), key)
    root, root_key = _load_pair(directory, "root")
    if new_root or not _has_pair(directory, "intermediate"):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} intermediate")])
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_pair(
            directory, "intermediate", _ca_cert(subject, key.public_key(), root.subject, root_key, 1), key
        )
    ca = ExternalCA.load(directory)
    ca.chain_path.write_bytes(ca.chain_pem)
    ca.extfile_path.write_text(OPENSSL_EXTFILE)
    return ca


def _ca_cert(
    subject: x509.Name,
    public_key: rsa.RSAPublicKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    path_length: int | None,
) -> x509.Certificate:
    """The root (self-signed, without AuthorityKeyIdentifier) or the intermediate."""
    now = dt.datetime.now(dt.timezone.utc)
    issuer_ski = (
        None if issuer == subject else x509.SubjectKeyIdentifier.from_public_key(issuer_key.public_key())
    )
    builder = ca_certificate_builder(
        subject,
        issuer,
        public_key,
        now - dt.timedelta(minutes=1),
        now + _CA_VALIDITY,
        path_length=path_length,
        authority_key_id=issuer_ski,
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _wrong_cluster(subject: x509.Name) -> x509.Name:
    """`subject` with its first O and every OID 1.3.9999.4.1 value replaced by WRONG_CLUSTER."""
    first_o = next((a for a in subject if a.oid == NameOID.ORGANIZATION_NAME), None)

    def swap(a: x509.NameAttribute[str | bytes]) -> x509.NameAttribute[str | bytes]:
        wrong = a is first_o or a.oid == CLUSTER_NAME_OID
        return x509.NameAttribute(a.oid, WRONG_CLUSTER) if wrong else a

    return x509.Name([x509.RelativeDistinguishedName([swap(a) for a in rdn]) for rdn in subject.rdns])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _has_pair(directory: Path, name: str) -> bool:
    return (directory / f"{name}.pem").is_file() and (directory / f"{name}.key").is_file()


def _load_pair(directory: Path, name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ClusterError(f"{directory / name}.key: not an RSA private key")
    return cert, key


def _write_pair(directory: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_path = directory / f"{name}.pem"
    write_all({directory / f"{name}.key": pem, cert_path: _pem(cert)}, public={cert_path})
