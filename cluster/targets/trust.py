"""What the downstream targets trust, as PEM bundles under `<cluster dir>/targets/` (seed step 3).

- `desktop/ntauth.pem`: the NTAuth store; a windows credential's issuing CA must be one of these.
- `desktop/roots.pem`: trust anchors and intermediates the desktop builds chains with; its
  self-signed certificates are the KDC's `pkinit_anchors`.
- `db/ca-bundle.pem`: the CA bundle the database verifies client certificates against.

Targets re-read these files on every session; `authsim trust` has the real servers (the KDC,
PostgreSQL) reload theirs.
Files are replaced atomically (write a temporary file, then rename).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authsim.cluster.errors import ValidationError
from authsim.cluster.layout import ClusterLayout, TargetLayout
from authsim.cluster.resources.x509 import display_name

TargetKind = Literal["desktop", "db"]
Store = Literal["ntauth", "ca"]

_FILES: dict[tuple[str, str], Callable[[TargetLayout], Path]] = {
    ("desktop", "ntauth"): lambda target: target.ntauth,
    ("desktop", "ca"): lambda target: target.roots,
    ("db", "ca"): lambda target: target.ca_bundle,
}
_LABELS = {"ntauth": "NTAuth store", "ca": "CA bundle"}


@dataclass(frozen=True)
class Trust:
    """The certificates one target trusts: its NTAuth store (desktop only) and its CA bundle."""

    ntauth: tuple[x509.Certificate, ...]
    ca: tuple[x509.Certificate, ...]


def trust_file(cluster_dir: Path, target: TargetKind, store: Store) -> Path:
    """The PEM bundle of `store` for `target`; the db target has no NTAuth store (ValueError)."""
    try:
        file_of = _FILES[(target, store)]
    except KeyError:
        raise ValueError(f"the {target} target has no {store} store") from None
    return file_of(ClusterLayout(cluster_dir).target(target))


def parse_certificates(blob: bytes, label: str) -> list[x509.Certificate]:
    """Every PEM certificate in `blob`; ValidationError naming `label` if there is none or one is no CA."""
    try:
        certs = x509.load_pem_x509_certificates(blob)
    except ValueError:
        raise ValidationError([f"{label}: no valid PEM certificate"]) from None
    problems = [
        f"{label}: '{display_name(c.subject)}' is not a CA certificate (BasicConstraints CA:TRUE)"
        for c in certs
        if not _is_ca(c)
    ]
    if problems:
        raise ValidationError(problems)
    return certs


def read_trust(cluster_dir: Path, target: TargetKind) -> Trust:
    """The target's current trust; a missing file is an empty store."""
    ntauth = _read(trust_file(cluster_dir, target, "ntauth")) if target == "desktop" else []
    return Trust(tuple(ntauth), tuple(_read(trust_file(cluster_dir, target, "ca"))))


def set_default_trust(
    cluster_dir: Path, windows_ca_pems: list[str], db_client_ca_pems: list[str]
) -> list[Path]:
    """The default trust (`authsim up`): the cluster's self-signed windows CAs in NTAuth and, being
    roots themselves, in the desktop's CA bundle; its db_client CAs in the DB's bundle.
    Only files that do not exist yet are written; returns them."""
    contents: dict[Path, list[str]] = {
        trust_file(cluster_dir, "desktop", "ntauth"): windows_ca_pems,
        trust_file(cluster_dir, "desktop", "ca"): windows_ca_pems,
        trust_file(cluster_dir, "db", "ca"): db_client_ca_pems,
    }
    written = []
    for path, pems in contents.items():
        if not path.exists():
            certs = [
                c for i, pem in enumerate(pems) for c in parse_certificates(pem.encode(), f"{path}[{i}]")
            ]
            _write(path, _unique(certs))
            written.append(path)
    return written


def add_trust(
    cluster_dir: Path,
    target: TargetKind,
    *,
    ntauth: Sequence[bytes] = (),
    ca: Sequence[bytes] = (),
    replace: bool = False,
) -> list[str]:
    """Add PEM certificates (each blob may hold several) to the target's NTAuth store and CA bundle.

    Duplicates are kept once. With `replace`, each store given certificates holds exactly those
    afterwards; a store given none is left alone. Every invalid blob is reported in one
    ValidationError before anything is written. Returns one line per certificate saying what changed.
    """
    problems: list[str] = []
    if ntauth and target != "desktop":
        problems.append(f"ntauth: the {target} target has no NTAuth store")
    given: dict[Store, list[x509.Certificate]] = {}
    stores: list[tuple[Store, Sequence[bytes]]] = [("ntauth", ntauth), ("ca", ca)]
    for store, blobs in stores:
        for i, blob in enumerate(blobs):
            try:
                given.setdefault(store, []).extend(parse_certificates(blob, f"{store}[{i}]"))
            except ValidationError as e:
                problems += e.problems
    if problems:
        raise ValidationError(problems)

    lines = []
    for store, certs in given.items():
        path = trust_file(cluster_dir, target, store)
        old = _read(path)
        new = _unique(certs if replace else old + certs)
        label = f"{target} {_LABELS[store]}"
        lines += [f"{label}: removed {_describe(c)}" for c in old if c not in new]
        lines += [f"{label}: already has {_describe(c)}" for c in old if c in new and c in certs]
        lines += [f"{label}: added {_describe(c)}" for c in new if c not in old]
        if new != old:
            _write(path, new)
    return lines


def _describe(cert: x509.Certificate) -> str:
    return f"'{display_name(cert.subject)}'"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _unique(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    return list(dict.fromkeys(certs))


def _read(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else []


def _write(path: Path, certs: list[x509.Certificate]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    tmp.replace(path)
