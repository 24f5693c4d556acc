"""The `cert_authority_override` resource: externally signed certificates for CA keys, and its YAML codec."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.errors import ValidationError, cut, quoted
from authsim.cluster.resources.ca_types import CA_TYPES, resolve_ca_type
from authsim.cluster.resources.x509 import public_key_hash
from authsim.cluster.resources.yaml_codec import dump_yaml

KIND = "cert_authority_override"
VERSION = "v1"
MAX_RESOURCE_BYTES = 1 << 20
MAX_ENTRIES = 64
MAX_REVISION = (1 << 63) - 1  # etcd revisions are int64
MAX_YAML_ALIASES = 100
MAX_YAML_ALIAS_EXPANSION = 10_000  # nodes all aliases together may stand for (a billion-laughs guard)
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 10_000  # a full resource (64 entries, chains of 10) has under 1,500; bounds parse time

_TOP_FIELDS = ("kind", "sub_kind", "version", "metadata", "spec", "status")
_METADATA_FIELDS = ("name", "revision")
_SPEC_FIELDS = ("certificate_overrides",)
_ENTRY_FIELDS = ("certificate", "public_key", "chain", "disabled")
_MISSING: Any = object()
_PLAIN_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@lru_cache(maxsize=512)
def _pem_key_hash(pem: str) -> str:
    try:
        return public_key_hash(x509.load_pem_x509_certificate(pem.encode()).public_key())
    except (ValueError, UnsupportedAlgorithm):
        return ""


@dataclass(frozen=True)
class CertificateOverride:
    """One entry of spec.certificate_overrides: the override certificate of one CA key."""

    certificate: str = ""
    public_key: str = ""
    chain: tuple[str, ...] = ()
    disabled: bool = False

    @property
    def key_hash(self) -> str:
        """The key this entry targets: `public_key` if set, else the certificate's ("" if unreadable)."""
        if self.public_key:
            return self.public_key
        return _pem_key_hash(self.certificate) if self.certificate else ""

    @property
    def enabled(self) -> bool:
        """Issuance under this entry's key names its certificate (the override is in force)."""
        return not self.disabled and bool(self.certificate)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.certificate:
            data["certificate"] = self.certificate
        if self.public_key:
            data["public_key"] = self.public_key
        if self.chain:
            data["chain"] = list(self.chain)
        if self.disabled:
            data["disabled"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CertificateOverride:
        return cls(
            certificate=str(data.get("certificate") or "").strip(),
            public_key=str(data.get("public_key") or "").strip(),
            chain=tuple(str(pem).strip() for pem in data.get("chain") or ()),
            disabled=bool(data.get("disabled", False)),
        )

    def to_proto(self) -> pb.CertificateOverride:
        return pb.CertificateOverride(
            certificate=self.certificate, public_key=self.public_key, chain=self.chain, disabled=self.disabled
        )

    @classmethod
    def from_proto(cls, msg: pb.CertificateOverride) -> CertificateOverride:
        return cls(
            msg.certificate.strip(), msg.public_key.strip(), tuple(c.strip() for c in msg.chain), msg.disabled
        )


@dataclass(frozen=True)
class CertAuthorityOverride:
    """The override resource of one CA type: at most one entry per CA public key."""

    cluster_name: str
    ca_type: str
    certificate_overrides: tuple[CertificateOverride, ...] = ()
    revision: int = field(default=0, compare=False)
    last_write: dict[str, Any] | None = field(default=None, compare=False)  # status: node, attempts, time

    def entry(self, key_hash: str) -> tuple[int, CertificateOverride] | None:
        """The entry for public key `key_hash` and its index, or None."""
        wanted = key_hash.strip().lower()
        for index, entry in enumerate(self.certificate_overrides):
            if entry.key_hash == wanted:
                return index, entry
        return None

    def with_entry(self, entry: CertificateOverride) -> CertAuthorityOverride:
        return replace(self, certificate_overrides=(*self.certificate_overrides, entry))

    def replacing(self, index: int, entry: CertificateOverride) -> CertAuthorityOverride:
        entries = list(self.certificate_overrides)
        entries[index] = entry
        return replace(self, certificate_overrides=tuple(entries))

    def without(self, index: int) -> CertAuthorityOverride:
        entries = list(self.certificate_overrides)
        del entries[index]
        return replace(self, certificate_overrides=tuple(entries))

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if self.certificate_overrides:
            spec["certificate_overrides"] = [e.to_dict() for e in self.certificate_overrides]
        return {
            "kind": KIND,
            "sub_kind": self.ca_type,
            "version": VERSION,
            "metadata": {"name": self.cluster_name, "revision": self.revision},
            "spec": spec,
            "status": {"last_write": self.last_write} if self.last_write else {},
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], revision: int = 0, known: Mapping[int, CertificateOverride] | None = None
    ) -> CertAuthorityOverride:
        """The resource in checked `data`; `known`: entries by index already parsed (kept as they are)."""
        entries = (data.get("spec") or {}).get("certificate_overrides") or ()
        reused = known or {}
        return cls(
            cluster_name=str(data["metadata"]["name"]),
            ca_type=str(data["sub_kind"]),
            certificate_overrides=tuple(
                reused[i] if i in reused else CertificateOverride.from_dict(e) for i, e in enumerate(entries)
            ),
            revision=revision,
            last_write=(data.get("status") or {}).get("last_write"),
        )

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def to_json(self) -> bytes:
        """Stored form in etcd (the revision is etcd's own, so it is not stored)."""
        data = self.to_dict()
        del data["metadata"]["revision"]
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, revision: int = 0) -> CertAuthorityOverride:
        return cls.from_dict(json.loads(raw), revision)

    def to_proto(self) -> pb.CertAuthorityOverride:
        return pb.CertAuthorityOverride(
            cluster_name=self.cluster_name,
            type=self.ca_type,
            revision=self.revision,
            certificate_overrides=[e.to_proto() for e in self.certificate_overrides],
        )

    @classmethod
    def from_proto(cls, msg: pb.CertAuthorityOverride) -> CertAuthorityOverride:
        return cls(
            cluster_name=msg.cluster_name,
            ca_type=msg.type,
            certificate_overrides=tuple(CertificateOverride.from_proto(e) for e in msg.certificate_overrides),
            revision=msg.revision,
        )


# --- parsing user YAML -------------------------------------------------------------------------------


def parse_override_yaml(text: str | bytes, revision_required: bool = False) -> CertAuthorityOverride:
    """The resource in `text` (YAML or JSON), after structural checks; every problem in one ValidationError.

    The content rules (certificates, keys, ownership) are `override_validation.validate_override`'s.
    """
    documents = _load_yaml(text)
    if len(documents) > 1:
        raise ValidationError(
            [f"resource: {len(documents)} YAML documents (`---` between them), expected one"]
        )
    if not documents:
        raise _no_document()
    return override_from_data(documents[0], revision_required)


def parse_override_documents(text: str | bytes) -> list[CertAuthorityOverride]:
    """Every resource in `text`, as `authctl get ca_overrides` prints them: YAML documents with `---`
    between them, a JSON list of them (`--format json`), or one; structural checks as
    `parse_override_yaml`, every problem of every document in one ValidationError (with several
    documents, each problem names its document). At most one document per CA type."""
    documents = []
    for data in _load_yaml(text):
        documents.extend(data if isinstance(data, list) else [] if data is None else [data])
    if not documents:
        raise _no_document()
    if len(documents) == 1:
        return [override_from_data(documents[0])]
    parsed: list[tuple[int, CertAuthorityOverride]] = []
    problems: list[str] = []
    for number, data in enumerate(documents, 1):
        try:
            parsed.append((number, override_from_data(data)))
        except ValidationError as e:
            problems += [f"document {number}: {problem}" for problem in e.problems]
    problems += _repeated_type_problems(parsed)
    if problems:
        raise ValidationError(problems)
    return [resource for _, resource in parsed]


def override_from_data(
    data: Any,
    revision_required: bool = False,
    revision: int = 0,
    known: Sequence[CertificateOverride] = (),
) -> CertAuthorityOverride:
    """The resource in decoded YAML/JSON `data`, after structural checks; every problem in one
    ValidationError. `revision` when `data` carries none (a stored value: etcd's revision). An entry
    exactly as one of the `known` entries holds it (the previous revision's) is that entry, not
    checked and parsed again."""
    if not isinstance(data, dict):
        shape = "a mapping with kind, sub_kind, version, metadata and spec"
        raise ValidationError([f"resource: must be {shape}, got {_type_of(data)}"])
    reused = _known_entries(data, known)
    problems = _document_problems(data, revision_required, reused)
    if problems:
        raise ValidationError(problems)
    data.pop("status", None)  # system-managed: the node writes it, whatever a user put there is ignored
    data["sub_kind"] = resolve_ca_type(data["sub_kind"], "sub_kind").name
    return CertAuthorityOverride.from_dict(data, data["metadata"].get("revision") or revision, reused)


def _known_entries(
    data: dict[Any, Any], known: Sequence[CertificateOverride]
) -> dict[int, CertificateOverride]:
    """Index → the known entry, for each entry of `data` whose mapping is exactly that entry's stored
    form (so it passes the structural checks and parses to it)."""
    spec = data.get("spec")
    entries = spec.get("certificate_overrides") if isinstance(spec, dict) else None
    if not known or not isinstance(entries, list):
        return {}
    by_certificate = {entry.certificate: entry for entry in known}
    found = {}
    for index, raw in enumerate(entries):
        certificate = raw.get("certificate") if isinstance(raw, dict) else None
        entry = by_certificate.get(certificate) if isinstance(certificate, str) else None
        if entry is not None and identical_json(raw, entry.to_dict()):
            found[index] = entry
    return found


def identical_json(a: Any, b: Any) -> bool:
    """Decoded JSON values equal in value and type (`1 == True` in Python, but `disabled: 1` breaks a
    rule that `disabled: true` passes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(identical_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(map(identical_json, a, b))
    return bool(a == b)


def _no_document() -> ValidationError:
    return ValidationError(
        ["resource: the input holds no document (expected a cert_authority_override: YAML or JSON, UTF-8)"]
    )


def _repeated_type_problems(parsed: list[tuple[int, CertAuthorityOverride]]) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for number, resource in parsed:
        if resource.ca_type in first:
            problems.append(
                f"document {number}: sub_kind: {resource.ca_type} again (document {first[resource.ca_type]} "
                "is one too): one document per CA type"
            )
        first.setdefault(resource.ca_type, number)
    return problems


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing, too many aliases, big alias expansion and deep nesting."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._expanded = 0
        self._depth = 0
        self._nodes = 0
        self._weights: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count_alias(node)
            return node
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise ValidationError([f"resource: more than {MAX_YAML_NODES} YAML nodes"])
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise ValidationError([f"resource: YAML nested deeper than {MAX_YAML_DEPTH} levels"])
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._weights[id(node)] = 1 + sum(self._weights.get(id(child), 1) for child in _children(node))
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping, refusing a key given twice (YAML would keep the last one silently)."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                kind = "a mapping" if isinstance(key, dict) else "a list"
                raise ValidationError([f"resource: a key must be a plain value, got {kind} at line {line}"])
            if key in seen:
                raise ValidationError([f"resource: key {_got(key)} appears twice (again at line {line})"])
            seen.add(key)
        return super().construct_mapping(node, deep)

    def _count_alias(self, target: yaml.Node | None) -> None:
        self._aliases += 1
        if self._aliases > MAX_YAML_ALIASES:
            raise ValidationError([f"resource: more than {MAX_YAML_ALIASES} YAML aliases"])
        weight = self._weights.get(id(target))
        if weight is None:
            raise ValidationError(["resource: a YAML alias refers to a node that encloses it (recursive)"])
        self._expanded += weight
        if self._expanded > MAX_YAML_ALIAS_EXPANSION:
            limit = MAX_YAML_ALIAS_EXPANSION
            raise ValidationError([f"resource: YAML aliases expand to more than {limit} nodes"])


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _load_yaml(text: str | bytes) -> list[Any]:
    """Every document in `text` (`---` between them); every failure one ValidationError."""
    raw = text.encode(errors="surrogatepass") if isinstance(text, str) else text  # stdin may carry surrogates
    if len(raw) > MAX_RESOURCE_BYTES:
        raise ValidationError([f"resource: larger than 1 MiB ({len(raw)} bytes)"])
    _refuse_nul(raw)
    try:
        return _compose_and_construct(text)
    except yaml.reader.ReaderError as e:
        raise ValidationError([_reader_problem(e)]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ValidationError([f"resource: malformed YAML: {e.problem or e.context}{where}"]) from None
    except (yaml.YAMLError, ValueError) as e:  # an int or a date out of range
        raise ValidationError([f"resource: malformed YAML: {' '.join(str(e).split())}"]) from None


def _compose_and_construct(text: str | bytes) -> list[Any]:
    loader = _LimitedLoader(text)
    try:
        documents = []
        while loader.check_node():  # what check_data() asks, typed
            documents.append(loader.get_data())
        return documents
    finally:
        loader.dispose()


_NOT_UTF8 = "resource: not UTF-8 text (or UTF-16 with a byte-order mark)"


def _refuse_nul(raw: bytes) -> None:
    """A NUL byte outside UTF-16 is never text: most often UTF-16 without its byte-order mark (where
    the decoder would stop at some later byte instead, naming a byte that is not the problem)."""
    nul = raw.find(b"\0")
    if nul >= 0 and not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValidationError(
            [f"{_NOT_UTF8}: a NUL byte at offset {nul} (UTF-16 without a byte-order mark?)"]
        )


def _reader_problem(error: yaml.reader.ReaderError) -> str:
    """Bytes the reader cannot decode, or a decoded character YAML does not allow (a control character)."""
    code = error.character if isinstance(error.character, int) else ord(error.character)
    if error.encoding == "unicode" and code:  # decoded fine: YAML refuses the character itself
        return (
            f"resource: character U+{code:04X} at offset {error.position}: YAML allows no control characters"
        )
    what = "a NUL character" if code == 0 else f"byte 0x{code:02x}"
    return f"{_NOT_UTF8}: {what} at offset {error.position}"


def _document_problems(
    data: dict[Any, Any], revision_required: bool, known: Mapping[int, CertificateOverride]
) -> list[str]:
    problems = _unknown_fields(data, _TOP_FIELDS, "")
    problems += _constant_problems(data, "kind", KIND)
    problems += _constant_problems(data, "version", VERSION)
    problems += _sub_kind_problems(data.get("sub_kind"))
    problems += _metadata_problems(data.get("metadata"), revision_required)
    problems += _spec_problems(data.get("spec", _MISSING), known)
    return problems


def _constant_problems(data: dict[Any, Any], key: str, expected: str) -> list[str]:
    if key not in data:
        return [f"{key}: required ({expected})"]
    if data[key] != expected:
        return [f"{key}: must be {expected}, got {_got(data[key])}"]
    return []


def _sub_kind_problems(value: Any) -> list[str]:
    if value is None:
        return [f"sub_kind: required (one of {', '.join(CA_TYPES)})"]
    if not isinstance(value, str):
        return [f"sub_kind: must be a string, got {_type_of(value)}"]
    try:
        resolve_ca_type(value, "sub_kind")
    except ValidationError as e:
        return e.problems
    return []


def _metadata_problems(metadata: Any, revision_required: bool) -> list[str]:
    if metadata is None:
        return ["metadata: required (with name: the cluster name)"]
    if not isinstance(metadata, dict):
        return [f"metadata: must be a mapping, got {_type_of(metadata)}"]
    problems = _unknown_fields(metadata, _METADATA_FIELDS, "metadata.")
    name = metadata.get("name")
    if name is None or name == "":
        problems.append("metadata.name: required (the cluster name)")
    elif not isinstance(name, str):
        problems.append(f"metadata.name: must be a string, got {_type_of(name)}")
    revision = metadata.get("revision")
    if revision is None and revision_required:
        problems.append("metadata.revision: required for an update (keep the revision of your copy)")
    elif revision is not None and not _is_revision(revision):
        problems.append(f"metadata.revision: must be a non-negative integer, got {_got(revision)}")
    elif revision is not None and revision > MAX_REVISION:
        limit = f"at most {MAX_REVISION} (etcd revisions are int64)"
        problems.append(f"metadata.revision: {limit}, got {_got(revision)}")
    return problems


def _spec_problems(spec: Any, known: Mapping[int, CertificateOverride]) -> list[str]:
    if spec is _MISSING:
        return ["spec: required ({} for an empty override)"]
    if not isinstance(spec, dict):
        return [f"spec: must be a mapping, got {_type_of(spec)}"]
    entries = spec.get("certificate_overrides")
    problems = _unknown_fields(spec, _SPEC_FIELDS, "spec.")
    if entries is None:
        return problems
    if not isinstance(entries, list):
        return [*problems, f"spec.certificate_overrides: must be a list, got {_type_of(entries)}"]
    if len(entries) > MAX_ENTRIES:
        return [*problems, f"spec.certificate_overrides: {len(entries)} entries, at most {MAX_ENTRIES}"]
    for index, entry in enumerate(entries):
        if index not in known:
            problems += _entry_problems(entry, f"spec.certificate_overrides[{index}]")
    return problems


def _entry_problems(entry: Any, path: str) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{path}: must be a mapping, got {_type_of(entry)}"]
    problems = _unknown_fields(entry, _ENTRY_FIELDS, f"{path}.")
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "certificate": (_is_str, "must be a PEM string"),
        "public_key": (_is_str, "must be a string"),
        "chain": (_is_str_list, "must be a list of PEM strings"),
    }
    for key, (ok, rule) in checks.items():
        if key in entry and not ok(entry[key]):
            problems.append(f"{path}.{key}: {rule}, got {_type_of(entry[key])}")
    if "disabled" in entry and not isinstance(entry["disabled"], bool):
        problems.append(f"{path}.disabled: must be true or false, got {_got(entry['disabled'])}")
    return problems


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_revision(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_str_list(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _unknown_fields(data: dict[Any, Any], known: tuple[str, ...], prefix: str) -> list[str]:
    return [f"{prefix}{_field_name(key)}: unknown field" for key in data if key not in known]


def _field_name(key: Any) -> str:
    """A user's field name for a path: as is when plain, else quoted (one line, never read as a path)."""
    text = str(key)
    return text if len(text) <= 64 and _PLAIN_FIELD.fullmatch(text) else quoted(text)


def _got(value: Any) -> str:
    """A user value for a message: a string quoted and shortened, a number as is, anything else by type."""
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return cut(repr(value), 64)
    return _type_of(value)


def _type_of(value: Any) -> str:
    """What kind of YAML value this is; never the repr of a container (it may be huge or shared)."""
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(type(value), f"a {type(value).__name__}")
