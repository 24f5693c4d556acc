"""Resources read back from etcd, distrusted: decoded without raising, with every rule they break."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from authsim.cluster.errors import StoredDataError, ValidationError, cut
from authsim.cluster.resources.cert_authority import ROTATION_PHASES, CAKeyPair, CertAuthority
from authsim.cluster.resources.override import CertAuthorityOverride, identical_json, override_from_data
from authsim.cluster.resources.validation import OverrideContext, key_hash_problems, validate_override
from authsim.cluster.resources.x509 import public_key_hash

MAX_STORED_PROBLEM_CHARS = 300  # one problem in a StoredDataError's message


@dataclass(frozen=True)
class StoredOverride:
    """A stored `cert_authority_override`: what could be read of it, and the rules it breaks."""

    resource: CertAuthorityOverride  # without entries when the value is unreadable
    problems: tuple[str, ...] = ()  # empty when it passes every rule on its content
    content: Any = field(default=None, compare=False, repr=False)  # the stored JSON but its status

    @property
    def valid(self) -> bool:
        return not self.problems

    def error(self) -> StoredDataError:
        """The one-line refusal of anything that would rely on this resource, with the fix."""
        name = f"ca_overrides/{self.resource.ca_type}"
        return stored_error(
            name,
            self.resource.revision,
            list(self.problems),
            override_fix(self.resource.ca_type),
        )


@dataclass(frozen=True)
class StoredCertAuthority:
    """A stored `cert_authority`: the CA when it is readable and sound, else the rules it breaks."""

    ca_type: str
    revision: int
    cert_authority: CertAuthority | None
    problems: tuple[str, ...] = ()

    def error(self) -> StoredDataError:
        name = f"cas/{self.ca_type}"
        return stored_error(name, self.revision, list(self.problems), cert_authority_fix(self.ca_type))

    def require(self) -> CertAuthority:
        """The CA; StoredDataError naming the rule and the fix when it breaks one."""
        if self.cert_authority is None:
            raise self.error()
        return self.cert_authority


def override_fix(ca_type: str) -> str:
    """How an admin replaces a stored override that breaks a rule."""
    name = f"ca_overrides/{ca_type}"
    return f"replace it with a valid one (`authctl create -f FILE`) or remove it (`authctl rm {name}`)"


def cert_authority_fix(ca_type: str) -> str:
    """How an admin replaces a stored CA that breaks a rule: the nodes record their keys again."""
    return (
        f"remove it (`authctl rm cas/{ca_type}`) and restart the nodes (`authsim down && authsim up`): "
        "each records its own key again"
    )


def stored_error(name: str, revision: int, problems: list[str], fix: str) -> StoredDataError:
    first = cut(problems[0], MAX_STORED_PROBLEM_CHARS)
    rest = f" (and {len(problems) - 1} more: see `authctl get {name}`)" if len(problems) > 1 else ""
    return StoredDataError(f"stored {name} (revision {revision}) breaks a rule: {first}{rest}; {fix}")


def read_override(
    raw: bytes, revision: int, cluster_name: str, ca_type: str, previous: StoredOverride | None = None
) -> StoredOverride:
    """The override stored at `ca_type`'s key, checked as a write of it would be on its content.
    When only the status differs from `previous` (an earlier revision read), that is the reading, with
    this revision and status: every node reads every change, and most change only the status. Else
    entries stored exactly as in `previous` are taken from it, not parsed again, and their content
    checks are cached: a change of one entry costs about one entry's work."""
    empty = CertAuthorityOverride(cluster_name, ca_type, revision=revision)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # not JSON (also not UTF-8)
        return StoredOverride(empty, (f"resource: not a JSON document: {cut(str(e), 120)}",))
    last_write = _last_write(data)
    content = {k: v for k, v in data.items() if k != "status"} if isinstance(data, dict) else None
    if content is not None and previous is not None and identical_json(content, previous.content):
        pinned = previous.resource.revision if _pinned_revision(content) else revision
        return replace(previous, resource=replace(previous.resource, revision=pinned, last_write=last_write))
    known = () if previous is None else previous.resource.certificate_overrides
    try:
        resource = override_from_data(
            dict(data) if isinstance(data, dict) else data, revision=revision, known=known
        )
    except ValidationError as e:
        return StoredOverride(empty, tuple(e.problems), content)
    problems = []
    if resource.ca_type != ca_type:
        problems.append(f"sub_kind: {resource.ca_type} stored at the key of {ca_type}")
    ctx = OverrideContext(cluster_name, None, "", {}, force=True)
    problems += validate_override(resource, resource, ctx)
    return StoredOverride(replace(resource, last_write=last_write), tuple(problems), content)


def _pinned_revision(content: dict[str, Any]) -> bool:
    """Whether the stored document names its revision itself (else it is etcd's)."""
    metadata = content.get("metadata")
    return isinstance(metadata, dict) and bool(metadata.get("revision"))


def _last_write(data: Any) -> dict[str, Any] | None:
    status = data.get("status") if isinstance(data, dict) else None
    found = status.get("last_write") if isinstance(status, dict) else None
    return found if isinstance(found, dict) else None


def read_cert_authority(raw: bytes, revision: int, cluster_name: str, ca_type: str) -> StoredCertAuthority:
    """The CA stored at `ca_type`'s key: its shape, names, and each key's certificate and hash."""
    try:
        ca = CertAuthority.from_json(raw, revision)
    except ValidationError as e:
        return StoredCertAuthority(ca_type, revision, None, tuple(e.problems))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        reason = f"missing {e}" if isinstance(e, KeyError) else cut(str(e), 120)
        return StoredCertAuthority(ca_type, revision, None, (f"resource: not a cert_authority: {reason}",))
    problems = []
    if ca.cluster_name != cluster_name:
        problems.append(f"spec.cluster_name: must be {cluster_name}, got {cut(ca.cluster_name, 80)}")
    if ca.ca_type != ca_type:
        problems.append(f"spec.type: must be {ca_type}, got {cut(ca.ca_type, 80)}")
    if not ca.active_keys:
        problems.append("spec.active_keys.tls: no active key")
    if ca.rotation.phase not in ROTATION_PHASES:
        problems.append(
            f"spec.rotation.phase: must be one of {', '.join(ROTATION_PHASES)}, "
            f"got {cut(ca.rotation.phase, 40)}"
        )
    for role, keys in (
        ("active_keys", ca.active_keys),
        ("additional_trusted_keys", ca.additional_trusted_keys),
    ):
        for index, pair in enumerate(keys):
            problems += _key_pair_problems(pair, f"spec.{role}.tls[{index}]")
    if problems:
        return StoredCertAuthority(ca_type, revision, None, tuple(problems))
    return StoredCertAuthority(ca_type, revision, ca)


def _key_pair_problems(pair: CAKeyPair, path: str) -> list[str]:
    problems = key_hash_problems(pair.public_key_hash, f"{path}.public_key_hash")
    try:
        cert_hash = _certificate_key_hash(pair.cert_pem)
    except (ValueError, UnsupportedAlgorithm) as e:
        return [*problems, f"{path}.cert: not a PEM X.509 certificate: {cut(str(e), 120)}"]
    if not problems and cert_hash != pair.public_key_hash:
        problems.append(f"{path}.public_key_hash: does not match the certificate's public key ({cert_hash})")
    return problems


@lru_cache(maxsize=1024)
def _certificate_key_hash(cert_pem: str) -> str:
    """The key hash of a CA key's certificate, parsed once: every node re-reads each CA on each change."""
    return public_key_hash(x509.load_pem_x509_certificate(cert_pem.encode()).public_key())
