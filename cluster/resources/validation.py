"""Validation of a `cert_authority_override` write (SPEC §7): a pure function returning every problem found.

Rules on the content of every entry (PEM, CA extensions, subject, public_key, chain, duplicates) apply to
all entries; rules against the CA (key membership, lifetime) and ownership apply to the entries a write
adds or changes, so an entry stored earlier never blocks another node's edit. `force` skips only the
rules against the CA, never ownership.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from authsim.cluster.errors import ValidationError, cut, node_command, quoted
from authsim.cluster.resources import clock
from authsim.cluster.resources.ca_types import resolve_ca_type
from authsim.cluster.resources.cert_authority import CAKeyPair, CertAuthority
from authsim.cluster.resources.override import MAX_ENTRIES, CertAuthorityOverride, CertificateOverride
from authsim.cluster.resources.subject import cluster_name_problems
from authsim.cluster.resources.x509 import display_name, public_key_hash

MAX_CHAIN = 10
_KEY_HASH = re.compile(r"[0-9a-f]{64}")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----([^-]*)-----END \1-----")
_CHAIN_RULE = "the chain must go from the certificate's issuer towards the root"
_FALLBACK_RULE = "would switch issued credentials back to the self-signed CA; use --force"


@dataclass(frozen=True)
class OverrideContext:
    """What a write is checked against: the cluster, its CA of the resource's type, the writing node."""

    cluster_name: str
    cert_authority: CertAuthority | None  # the CA of resource.ca_type, as stored
    host_id: str  # host id of the node applying the write
    node_names: Mapping[str, str]  # host id -> node name, for messages; may miss entries
    force: bool = False
    now: datetime | None = None  # for tests; default: the current time


@dataclass(frozen=True)
class _Entry:
    """One entry with what the content checks learnt about it."""

    index: int
    entry: CertificateOverride
    cert: x509.Certificate | None  # None when absent or unreadable
    key_hash: str  # "" when neither a well-formed public_key nor a readable certificate
    before: CertificateOverride | None = None  # the entry for the same key in the previous resource

    @property
    def path(self) -> str:
        return f"spec.certificate_overrides[{self.index}]"

    @property
    def recertified(self) -> bool:
        """The write adds this entry or changes its certificate."""
        return self.before is None or self.before.certificate != self.entry.certificate

    @property
    def takes_effect(self) -> bool:
        """The write makes this entry's certificate and chain the ones issuing: added, enabled or changed."""
        if self.entry.disabled:
            return False
        before = self.before
        if before is None or before.disabled:
            return True
        return (before.certificate, before.chain) != (self.entry.certificate, self.entry.chain)


def check_override(
    new: CertAuthorityOverride, previous: CertAuthorityOverride | None, ctx: OverrideContext
) -> None:
    """Raise ValidationError with every problem of writing `new` over `previous`; return if there is none."""
    problems = validate_override(new, previous, ctx)
    if problems:
        raise ValidationError(problems)


def validate_override(
    new: CertAuthorityOverride, previous: CertAuthorityOverride | None, ctx: OverrideContext
) -> list[str]:
    """Every problem of writing `new` over `previous` (None when absent), each `field.path: rule`."""
    problems = _resource_problems(new, ctx)
    if len(new.certificate_overrides) > MAX_ENTRIES:
        count = len(new.certificate_overrides)
        return [*problems, f"spec.certificate_overrides: {count} entries, at most {MAX_ENTRIES}"]
    entries: list[_Entry] = []
    before = _entries_by_key(previous)
    for index, entry in enumerate(new.certificate_overrides):
        checked, entry_problems = _check_entry(index, entry, ctx.cluster_name, before)
        entries.append(checked)
        problems += list(entry_problems)
    problems += _duplicate_problems(entries)
    if not ctx.force:
        problems += _against_ca_problems(new, entries, previous, ctx)
    if ctx.cert_authority is not None:
        problems += _ownership_problems(entries, ctx.cert_authority, ctx)
    return problems


# --- the resource and each entry on its own ----------------------------------------------------------


def _resource_problems(new: CertAuthorityOverride, ctx: OverrideContext) -> list[str]:
    problems = []
    if new.cluster_name != ctx.cluster_name:
        expected, got = ctx.cluster_name, new.cluster_name
        problems.append(f"metadata.name: must be the cluster name {quoted(expected)}, got {quoted(got)}")
    try:
        resolve_ca_type(new.ca_type, "sub_kind")
    except ValidationError as e:
        problems += e.problems
    return problems


_ANY_INDEX = "[\0]"  # stands for the entry's index in the cached problems of its content


def _check_entry(
    index: int, entry: CertificateOverride, cluster_name: str, before: Mapping[str, CertificateOverride]
) -> tuple[_Entry, tuple[str, ...]]:
    """The checks of one entry on its own, at position `index`; `before`: the previous entries by key."""
    content, problems = _check_entry_content(entry, cluster_name)
    here = f"[{index}]"
    checked = _Entry(index, entry, content.cert, content.key_hash, before.get(content.key_hash))
    return checked, tuple(p.replace(_ANY_INDEX, here) if _ANY_INDEX in p else p for p in problems)


@functools.lru_cache(maxsize=1024)
def _check_entry_content(entry: CertificateOverride, cluster_name: str) -> tuple[_Entry, tuple[str, ...]]:
    """The checks of one entry's content: a pure function of it, so it is cached wherever the entry
    sits (a CAS retry, or the next append, validates the same entries again, maybe at a new index)."""
    index = -1
    path = f"spec.certificate_overrides{_ANY_INDEX}"
    problems: list[str] = []
    cert = None
    if entry.certificate:
        cert, problems = _load_pem_certificate(entry.certificate, f"{path}.certificate")
    if cert is not None:
        problems += _ca_certificate_problems(cert, f"{path}.certificate", cluster_name)
    elif not entry.certificate and not entry.disabled:
        problems.append(f"{path}.certificate: required for an enabled override")
    elif not entry.certificate and not entry.public_key:
        problems.append(f"{path}: a disabled override needs a certificate or a public_key")
    key_hash, key_problems = _key_hash(entry, cert, path)
    problems += key_problems
    problems += _chain_problems(entry, cert, path)
    return _Entry(index, entry, cert, key_hash), tuple(problems)


def _load_pem_certificate(text: str, path: str) -> tuple[x509.Certificate | None, list[str]]:
    """The one certificate in `text`, or None and why not."""
    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks:
        return None, [
            f"{path}: not a PEM certificate (no -----BEGIN CERTIFICATE----- ... -----END "
            "CERTIFICATE----- block)"
        ]
    if len(blocks) > 1:
        return None, [f"{path}: contains {len(blocks)} PEM blocks, expected exactly one certificate"]
    block = blocks[0]
    problems = []
    if block.group(1) != "CERTIFICATE":
        problems.append(f"{path}: PEM block is a {block.group(1)}, expected a CERTIFICATE")
    if text[: block.start()].strip():
        problems.append(f"{path}: data before the PEM block")
    if text[block.end() :].strip():
        problems.append(f"{path}: trailing data after the PEM block")
    if problems:
        return None, problems
    try:
        cert = x509.load_pem_x509_certificate(block.group(0).encode())
        # parsed lazily: a malformed name, extension or key is a malformed certificate
        _ = cert.subject, cert.issuer, cert.extensions, cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        return None, [f"{path}: not a valid X.509 certificate: {cut(str(e), 200)}"]
    return cert, []


def _ca_certificate_problems(cert: x509.Certificate, path: str, cluster_name: str) -> list[str]:
    problems = _basic_constraints_problems(cert)
    problems += _key_usage_problems(cert)
    if cert.not_valid_before_utc > cert.not_valid_after_utc:
        problems.append(
            f"not_before {_date(cert.not_valid_before_utc)} is after not_after "
            f"{_date(cert.not_valid_after_utc)}: the certificate is never valid"
        )
    problems += cluster_name_problems(cert.subject, cluster_name)
    return [f"{path}: {p}" for p in problems]


def _basic_constraints_problems(cert: x509.Certificate) -> list[str]:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return ["missing BasicConstraints"]
    return [] if constraints.ca else ["BasicConstraints CA is false: not a CA certificate"]


def _key_usage_problems(cert: x509.Certificate) -> list[str]:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return ["missing KeyUsage keyCertSign", "missing KeyUsage cRLSign"]
    problems = []
    if not usage.key_cert_sign:
        problems.append("missing KeyUsage keyCertSign")
    if not usage.crl_sign:
        problems.append("missing KeyUsage cRLSign")
    return problems


def _key_hash(entry: CertificateOverride, cert: x509.Certificate | None, path: str) -> tuple[str, list[str]]:
    """The targeted key (a well-formed public_key, else the certificate's) and the public_key problems."""
    cert_hash = public_key_hash(cert.public_key()) if cert is not None else ""
    if not entry.public_key:
        return cert_hash, []
    if not _KEY_HASH.fullmatch(entry.public_key):
        return cert_hash, key_hash_problems(entry.public_key, f"{path}.public_key")
    if cert_hash and entry.public_key != cert_hash:
        return entry.public_key, [
            f"{path}.public_key: does not match the certificate's public key (hash {cert_hash})"
        ]
    return entry.public_key, []


def key_hash_problems(value: str, path: str) -> list[str]:
    """The public_key rule: a SHA-256 hash of a DER SubjectPublicKeyInfo in lower-case hex."""
    if _KEY_HASH.fullmatch(value):
        return []
    return [f"{path}: must be 64 lower-case hex characters (SHA-256 of the public key), got {quoted(value)}"]


def _chain_problems(entry: CertificateOverride, cert: x509.Certificate | None, path: str) -> list[str]:
    if not entry.chain:
        return []
    if not entry.certificate:
        return [f"{path}.chain: requires a certificate"]
    if len(entry.chain) > MAX_CHAIN:
        return [f"{path}.chain: {len(entry.chain)} certificates, at most {MAX_CHAIN}"]
    problems: list[str] = []
    child, child_name = cert, "the certificate"
    for j, pem in enumerate(entry.chain):
        issuer, pem_problems = _load_pem_certificate(pem, f"{path}.chain[{j}]")
        problems += pem_problems
        if issuer is not None and child is not None:
            problems += _issuer_problems(child, child_name, issuer, f"{path}.chain[{j}]")
        child, child_name = issuer, f"chain[{j}]"
    return problems


def _issuer_problems(
    child: x509.Certificate, child_name: str, issuer: x509.Certificate, path: str
) -> list[str]:
    if child.issuer != issuer.subject:
        reason = (
            f"its subject {quoted(display_name(issuer.subject))} is not {child_name}'s issuer "
            f"{quoted(display_name(child.issuer))}"
        )
    else:
        try:
            child.verify_directly_issued_by(issuer)
            return []
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            reason = f"its key did not sign {child_name}"
    return [f"{path}: is not the issuer of {child_name}: {reason} ({_CHAIN_RULE})"]


def _duplicate_problems(entries: list[_Entry]) -> list[str]:
    problems = []
    first: dict[str, int] = {}
    for e in entries:
        if not e.key_hash:
            continue
        if e.key_hash in first:
            problems.append(
                f"{e.path}: duplicate entry for public key {e.key_hash} (also at [{first[e.key_hash]}])"
            )
        else:
            first[e.key_hash] = e.index
    return problems


# --- what the write changes, against the CA and the writing node -------------------------------------


def _entries_by_key(previous: CertAuthorityOverride | None) -> dict[str, CertificateOverride]:
    """The previous resource's entries by the key each targets (the first one for a key, as `entry`)."""
    found: dict[str, CertificateOverride] = {}
    for entry in () if previous is None else previous.certificate_overrides:
        if entry.key_hash:
            found.setdefault(entry.key_hash, entry)
    return found


def _against_ca_problems(
    new: CertAuthorityOverride,
    entries: list[_Entry],
    previous: CertAuthorityOverride | None,
    ctx: OverrideContext,
) -> list[str]:
    ca = ctx.cert_authority
    if ca is None:
        if not entries:
            return []
        return [f"sub_kind: no cert_authority {new.ca_type} exists in cluster {ctx.cluster_name}"]
    keys = {pair.public_key_hash: pair for _, pair in ca.all_keys()}
    problems = []
    for e in entries:
        pair = keys.get(e.key_hash)
        if pair is None and e.key_hash:
            problems += _unknown_key_problems(e, ca.ca_type)
        if pair is not None and e.cert is not None:
            problems += _lifetime_problems(e, pair, ctx)
    return problems + _fallback_problems(entries, previous, ca)


def _unknown_key_problems(e: _Entry, ca_type: str) -> list[str]:
    """A new entry must name a key of the CA; an entry kept for a key the CA no longer has (rotated out)
    may stay, disabled (history: the key is not overridden), but it can never take effect again."""
    if e.before is None:
        return [
            f"{e.path}: public key {e.key_hash} is not a key of the {ca_type} CA (run "
            f"`authctl auth create-override-csr --type {ca_type}` to get a CSR for a CA key)"
        ]
    if e.takes_effect:
        field = "disabled" if e.before.disabled else "certificate"
        return [
            f"{e.path}.{field}: public key {e.key_hash} is not (or no longer) a key of the {ca_type} CA: "
            "only a disabled entry may name it"
        ]
    return []


def _lifetime_problems(e: _Entry, pair: CAKeyPair, ctx: OverrideContext) -> list[str]:
    """An entry that starts issuing must not be expired; a new certificate must not outlive the CA's."""
    assert e.cert is not None
    problems = []
    not_after = e.cert.not_valid_after_utc
    if e.takes_effect and not_after < (ctx.now or clock.now()):
        problems.append(f"{e.path}.certificate: expired on {_date(not_after)}")
    ca_not_after = _not_after(pair.cert_pem)
    if e.recertified and not_after > ca_not_after:
        problems.append(
            f"{e.path}.certificate: not_after {_date(not_after)} is after the CA certificate's not_after "
            f"{_date(ca_not_after)}: an override must not outlive the CA certificate it replaces"
        )
    return problems


@functools.lru_cache(maxsize=256)
def _not_after(cert_pem: str) -> datetime:
    """A CA certificate's not_after, parsed once per certificate."""
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


def _fallback_problems(
    entries: list[_Entry], previous: CertAuthorityOverride | None, ca: CertAuthority
) -> list[str]:
    """Disabling or removing the enabled override of an active key silently changes the issuing CA."""
    if previous is None:
        return []
    active = {pair.public_key_hash for pair in ca.active_keys}
    now_by_hash = {e.key_hash: e for e in entries if e.key_hash}
    problems = []
    for index, before in enumerate(previous.certificate_overrides):
        key_hash = before.key_hash
        if before.disabled or key_hash not in active:
            continue
        after = now_by_hash.get(key_hash)
        if after is None:
            problems.append(
                f"spec.certificate_overrides: removing the enabled override of the active key {key_hash} "
                f"(was entry [{index}]) {_FALLBACK_RULE}"
            )
        elif after.entry.disabled:
            problems.append(
                f"{after.path}.disabled: disabling the enabled override of the active key {key_hash} "
                f"{_FALLBACK_RULE}"
            )
    return problems


def _ownership_problems(entries: list[_Entry], ca: CertAuthority, ctx: OverrideContext) -> list[str]:
    """Only the node whose token holds a key may add, enable or change an enabled override for it."""
    owners = {pair.public_key_hash: pair.key.host_id for _, pair in ca.all_keys()}
    problems = []
    for e in entries:
        owner = owners.get(e.key_hash)
        if not e.takes_effect or owner is None or owner == ctx.host_id:
            continue
        name = ctx.node_names.get(owner)
        holder = f"node {name}" if name else "another node"
        there = f" ({node_command(name)})" if name else ""
        problems.append(
            f"{e.path}: public key {e.key_hash} is held by {holder} (host {owner}): "
            f"enable it by running this command on that node{there}"
        )
    return problems


def _date(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
