"""Fuzz of the cert_authority_override parser and validator, and a test for every input size limit.

Property-based (hypothesis, derandomized so every run tries the same examples): random text and
bytes, random YAML documents, byte- and field-level mutations of a valid resource, random and mutated
DER inside PEM armour, and resources built field by field as a hostile client could send them. For
every input, parsing and validation end in a resource or a ValidationError (never another exception)
within TIME_LIMIT seconds; every problem is one line starting with a field path; whatever validates
clean survives its stored JSON form (and its YAML and proto forms) unchanged and validates clean again.

Then one test per limit: resource size, YAML depth, aliases, YAML nodes, entries, chain length, CSR
subject length, credential user name. Pure and fast: software RSA keys stand in for token keys.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, cast

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from authsim.auth_node.csr import MAX_SUBJECT_CHARS, csr_subject
from authsim.auth_node.issuance import USER_RULE, Credential, CredentialRequest, Issuer, issue_credentials
from authsim.auth_node.token_signer import TokenSigner
from authsim.cluster.errors import ValidationError
from authsim.cluster.resources import override as ca_override
from authsim.cluster.resources.ca_types import resolve_ca_type
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.override import (
    KIND,
    MAX_ENTRIES,
    MAX_RESOURCE_BYTES,
    MAX_YAML_ALIASES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    CertAuthorityOverride,
    CertificateOverride,
    parse_override_yaml,
)
from authsim.cluster.resources.validation import MAX_CHAIN, OverrideContext, check_override, validate_override
from authsim.cluster.resources.yaml_codec import dump_yaml
from authsim.hsm import Pkcs11KeyStore
from tests.certs import CertKey, ca_key_pair, cluster_ca, external_ca, name, override_cert, rsa_key

CLUSTER = "mycluster"
HOST_A, HOST_B = "host-a", "host-b"  # host-a is the node applying every write
NODE_NAMES = {HOST_A: "node1", HOST_B: "node2"}
TIME_LIMIT = 2.0  # seconds for one parse + validation, whatever the input

FUZZ = settings(
    max_examples=200,
    deadline=None,  # each example asserts TIME_LIMIT itself, measured around the code under test only
    derandomize=True,  # the same examples on every run, so CI failures reproduce
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# A problem starts with the path of the field it is about. Unknown fields are named as the user wrote
# them: a plain name as is, anything else quoted (so it stays on one line and never reads as a path).
_ENTRY = r"spec\.certificate_overrides\[\d+\]"
_PROBLEM_PATH = re.compile(
    r"(?:resource|kind|sub_kind|version|status|metadata(?:\.(?:name|revision))?"
    rf"|spec(?:\.certificate_overrides)?|{_ENTRY}(?:\.(?:certificate|public_key|chain(?:\[\d+\])?|disabled))?"
    r"): \S"
)
_UNKNOWN_FIELD = re.compile(
    rf"(?:metadata\.|spec\.|{_ENTRY}\.)?(?:[A-Za-z_][A-Za-z0-9_-]*|'.*|\".*): unknown field"
)


# --- the world: a windows and a db_client CA on two nodes, an external CA, a valid resource --------------


@dataclass(frozen=True)
class World:
    chain: list[CertKey]  # the external CA, issuing CA first, root last
    ov_a: CertKey  # override of the active windows key, held by host-a (the writing node)
    ov_b: CertKey  # override of the additional windows key, held by host-b
    self_signed: CertKey  # the active windows key's self-signed CA certificate
    csr_pem: str
    authorities: dict[str, CertAuthority]

    @property
    def valid(self) -> dict[str, Any]:
        """A resource that validates clean: host-a's entry enabled with its chain, host-b's staged."""
        return {
            "kind": KIND,
            "sub_kind": "windows",
            "version": "v1",
            "metadata": {"name": CLUSTER},
            "spec": {
                "certificate_overrides": [
                    {"certificate": self.ov_a.pem, "chain": [c.pem for c in self.chain]},
                    {"certificate": self.ov_b.pem, "public_key": self.ov_b.key_hash, "disabled": True},
                ]
            },
        }

    @property
    def pems(self) -> list[str]:
        """Real PEM objects of every sort an entry might be given (the same on every call)."""
        return [
            self.ov_a.pem,
            self.ov_b.pem,
            *(c.pem for c in self.chain),
            self.self_signed.pem,
            self.csr_pem,
        ]


@cache
def world() -> World:
    """Made once: strategies draw from it, and must see the same values on every run."""
    self_signed = {slot: cluster_ca(CLUSTER, rsa_key(slot)) for slot in (1, 2, 5, 6)}
    authorities = {
        ca_type: CertAuthority(
            CLUSTER,
            ca_type,
            active_keys=(ca_key_pair(self_signed[active], HOST_A),),
            additional_trusted_keys=(ca_key_pair(self_signed[additional], HOST_B),),
        )
        for ca_type, active, additional in (("windows", 1, 2), ("db_client", 5, 6))
    }
    chain = external_ca(levels=2)
    csr = x509.CertificateSigningRequestBuilder().subject_name(name(CLUSTER, orgs=[CLUSTER]))
    csr_pem = csr.sign(rsa_key(1), hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    return World(
        chain=chain,
        ov_a=override_cert(rsa_key(1), chain[0]),
        ov_b=override_cert(rsa_key(2), chain[0]),
        self_signed=self_signed[1],
        csr_pem=csr_pem,
        authorities=authorities,
    )


@cache
def valid_resource() -> CertAuthorityOverride:
    return parse_override_yaml(dump_yaml(world().valid))


def context(resource: CertAuthorityOverride) -> OverrideContext:
    """What a node checks a write against: the stored CA of the resource's type, as node1 (host-a)."""
    return OverrideContext(CLUSTER, world().authorities.get(resource.ca_type), HOST_A, NODE_NAMES)


# --- the properties -----------------------------------------------------------------------------------


def _outcome(what: str) -> None:
    """Count how examples ended (`pytest --hypothesis-show-statistics`), to see the fuzz reach clean."""
    if currently_in_test_context():
        event(what)


def check_problems(problems: list[str]) -> None:
    """Every problem is one line that starts with the path of the field it is about."""
    for problem in problems:
        assert isinstance(problem, str)
        assert problem.splitlines() == [problem], f"not one line: {problem!r}"
        path_ok = _PROBLEM_PATH.match(problem) or _UNKNOWN_FIELD.fullmatch(problem)
        assert path_ok, f"does not start with a field path: {problem!r}"


def check_storable(resource: CertAuthorityOverride, previous: CertAuthorityOverride | None) -> None:
    """A clean resource survives what storing and showing it does to it, and is still clean after."""
    stored = CertAuthorityOverride.from_json(resource.to_json())
    assert stored == resource
    assert validate_override(stored, previous, context(stored)) == []
    assert parse_override_yaml(stored.to_yaml()) == resource  # `authctl get` then `authctl create -f`
    assert CertAuthorityOverride.from_proto(resource.to_proto()) == resource  # authctl → node


def check_resource(resource: CertAuthorityOverride) -> None:
    """Validate as a create and as an update of the valid resource; clean results must be storable."""
    for previous in (None, valid_resource()):
        problems = validate_override(resource, previous, context(resource))
        check_problems(problems)
        _outcome(f"{'update' if previous else 'create'}: {'refused' if problems else 'clean'}")
        if not problems:
            check_override(resource, previous, context(resource))
            check_storable(resource, previous)


def check_input(text: str | bytes) -> None:
    """The whole write path of a user's file, timed: parse, then validate what parsed."""
    started = time.perf_counter()
    try:
        resource = parse_override_yaml(text)
    except ValidationError as e:
        assert e.problems, "a ValidationError without a problem"
        _outcome("parse: refused")
        check_problems(e.problems)
    else:
        check_resource(resource)
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_LIMIT, f"took {elapsed:.2f} s (limit {TIME_LIMIT} s) on {len(text)} characters"


# --- strategies ---------------------------------------------------------------------------------------

# Protobuf strings are valid UTF-8: no lone surrogates reach a node, so none are made where a node reads.
UTF8 = st.characters(exclude_categories=["Cs"])
TEXT = st.text(UTF8, max_size=60)
PEM_LABELS = st.sampled_from(["CERTIFICATE", "CERTIFICATE REQUEST", "PRIVATE KEY", "X509 CRL", "certificate"])


def armour(der: bytes, label: str = "CERTIFICATE", width: int = 64) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + width] for i in range(0, len(body), width)] or [""]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"])


def pem_body(pem: str) -> str:
    return "\n".join(line for line in pem.splitlines() if not line.startswith("-----"))


@st.composite
def mutated_der(draw: st.DrawFn) -> bytes:
    """A real certificate's DER with a few bytes flipped, inserted, deleted, or cut off."""
    certificate = x509.load_pem_x509_certificate(draw(st.sampled_from(world().pems[:5])).encode())
    der = bytearray(certificate.public_bytes(serialization.Encoding.DER))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, max(len(der) - 1, 0)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        if op == "flip" and der:
            der[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            der[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del der[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del der[at:]
        elif der:
            der[at] = draw(st.sampled_from([0x00, 0x01, 0x30, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xFF]))
    return bytes(der)


DER = st.one_of(st.binary(max_size=600), mutated_der())


@st.composite
def pem_texts(draw: st.DrawFn) -> str:
    """Something for a certificate field: real, armoured garbage, several blocks, junk around, or text."""
    one = st.one_of(
        st.deferred(lambda: st.sampled_from(world().pems)),
        st.builds(armour, DER, PEM_LABELS, st.sampled_from([64, 76, 1, 10_000])),
        st.deferred(lambda: st.sampled_from(world().pems)).map(
            lambda p: armour(base64.b64decode(pem_body(p)), "CERTIFICATE REQUEST")
        ),
    )
    kind = draw(st.sampled_from(["one", "several", "junk", "text"]))
    if kind == "one":
        return draw(one)
    if kind == "several":
        return "\n".join(draw(st.lists(one, min_size=0, max_size=3)))
    if kind == "junk":
        return draw(TEXT) + draw(one) + draw(TEXT)
    return draw(TEXT)


KEY_HASHES = st.one_of(
    st.deferred(lambda: st.sampled_from([world().ov_a.key_hash, world().ov_b.key_hash])),
    st.text("0123456789abcdefABCDEF", min_size=0, max_size=70),
    TEXT,
)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    TEXT,
    st.binary(max_size=20),
    st.dates(),
    st.sampled_from([KIND, "windows", "db_client", "db-client", "v1", "v2", CLUSTER, "", 0, -1]),
)
FIELD_NAMES = st.sampled_from(
    ["kind", "sub_kind", "version", "metadata", "name", "revision", "spec", "certificate_overrides",
     "certificate", "public_key", "chain", "disabled", "status", "last_write"]
)  # fmt: skip
KEYS = st.one_of(FIELD_NAMES, TEXT, st.integers(), st.booleans(), st.none())
ANY_YAML = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)


def either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything at all."""
    return st.one_of(good, good, good, good, ANY_YAML)


_ENTRY_FIELDS = {
    "certificate": either(pem_texts()),
    "public_key": either(KEY_HASHES),
    "chain": either(st.lists(pem_texts(), max_size=3)),
    "disabled": either(st.booleans()),
}
ENTRIES = st.one_of(
    st.fixed_dictionaries({}, optional=_ENTRY_FIELDS),
    st.fixed_dictionaries({}, optional={**_ENTRY_FIELDS, "extra": ANY_YAML}),
)
_DOCUMENT_FIELDS = {
    "kind": either(st.just(KIND)),
    "sub_kind": either(st.sampled_from(["windows", "db_client", "db-client", "linux"])),
    "version": either(st.just("v1")),
    "metadata": either(
        st.fixed_dictionaries(
            {"name": either(st.just(CLUSTER))}, optional={"revision": either(st.integers(min_value=0))}
        )
    ),
    "spec": either(
        st.fixed_dictionaries({}, optional={"certificate_overrides": either(st.lists(ENTRIES, max_size=4))})
    ),
}
DOCUMENTS = st.one_of(
    st.fixed_dictionaries(_DOCUMENT_FIELDS, optional={"status": ANY_YAML}),  # every field there
    st.fixed_dictionaries({}, optional={**_DOCUMENT_FIELDS, "status": ANY_YAML, "extra": ANY_YAML}),
)


def dump(data: Any, style: str) -> str:
    if style == "block":
        return dump_yaml(data)
    if style == "flow":
        return yaml.safe_dump(data, default_flow_style=True, width=10_000)
    return yaml.safe_dump(data, canonical=True)


YAML_STYLES = st.sampled_from(["block", "flow", "canonical"])


def _locations(data: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key or index) of every value inside `data`."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in list(items):
        yield data, key
        yield from _locations(value)


def _pem_locations(data: Any) -> list[tuple[Any, Any]]:
    return [(c, k) for c, k in _locations(data) if isinstance(c[k], str) and "-----BEGIN" in c[k]]


@st.composite
def mutated_data(draw: st.DrawFn) -> dict[str, Any]:
    """The valid resource with a few fields changed: set, removed, PEMs swapped or given a foreign body."""
    data = copy.deepcopy(world().valid)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "delete", "swap-pems", "foreign-body", "random-der", "duplicate"]))
        places = list(_locations(data))
        pems = _pem_locations(data)
        if op == "set" and places:
            container, key = draw(st.sampled_from(places))
            container[key] = draw(st.one_of(ANY_YAML, pem_texts(), KEY_HASHES))
        elif op == "delete" and places:
            container, key = draw(st.sampled_from(places))
            del container[key]
        elif op == "swap-pems" and len(pems) >= 2:
            (c1, k1), (c2, k2) = draw(st.permutations(pems))[:2]
            c1[k1], c2[k2] = c2[k2], c1[k1]
        elif op == "foreign-body" and pems:
            container, key = draw(st.sampled_from(pems))
            donor = draw(st.sampled_from(world().pems))
            container[key] = armour(base64.b64decode(pem_body(donor)))
        elif op == "random-der" and pems:
            container, key = draw(st.sampled_from(pems))
            container[key] = armour(draw(DER))
        elif op == "duplicate":
            entries = (
                data.get("spec", {}).get("certificate_overrides")
                if isinstance(data.get("spec"), dict)
                else None
            )
            if isinstance(entries, list) and entries:
                entries.append(copy.deepcopy(draw(st.sampled_from(entries))))
    return data


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    """The valid resource's YAML with bytes flipped, inserted or deleted, lines duplicated, or cut off."""
    data = bytearray(dump(world().valid, draw(YAML_STYLES)).encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(
            st.sampled_from(["flip", "insert", "delete", "truncate", "special", "dup-line", "swap-lines"])
        )
        lines = data.split(b"\n")
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        elif op == "special":
            data[at:at] = draw(
                st.sampled_from(
                    [
                        b":",
                        b"- ",
                        b"\n",
                        b" ",
                        b"&a ",
                        b"*a",
                        b"!!",
                        b"|",
                        b"\t",
                        b"'",
                        b'"',
                        b"{",
                        b"[",
                        b"#",
                        b"? ",
                        b"---\n",
                        b"\xff",
                        b"\x00",
                        b"\xc3",
                    ]
                )
            )
        elif op == "dup-line":
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\n".join(lines))
        elif op == "swap-lines":
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


ENTRY_OBJECTS = st.builds(
    CertificateOverride,
    certificate=st.one_of(pem_texts(), st.just("")),
    public_key=st.one_of(KEY_HASHES, st.just("")),
    chain=st.lists(pem_texts(), max_size=3).map(tuple),
    disabled=st.booleans(),
)
REAL_ENTRIES = st.deferred(
    lambda: st.sampled_from(
        [*valid_resource().certificate_overrides, CertificateOverride(world().ov_b.pem)]  # host-b's, enabled
    )
)
RESOURCES = st.builds(
    CertAuthorityOverride,
    cluster_name=st.one_of(st.just(CLUSTER), TEXT),
    ca_type=st.one_of(st.sampled_from(["windows", "db_client", "db-client"]), TEXT),
    certificate_overrides=st.lists(st.one_of(REAL_ENTRIES, ENTRY_OBJECTS), max_size=4).map(tuple),
)


# --- the fuzz -----------------------------------------------------------------------------------------


def test_the_valid_resource_is_clean_so_the_fuzz_starts_from_something_storable() -> None:
    resource = valid_resource()
    assert len(resource.certificate_overrides) == 2
    assert validate_override(resource, None, context(resource)) == []
    assert validate_override(resource, resource, context(resource)) == []
    check_input(dump_yaml(world().valid))


@FUZZ
@given(st.one_of(st.text(), st.binary()))
@example("")
@example(b"\xff\xfe")
@example("\ud800: 1")  # a lone surrogate, as Python text may hold one
@example('"a\\nb": 1')  # a field name with a newline in it
def test_random_text_and_bytes(text: str | bytes) -> None:
    check_input(text)


def test_a_status_of_any_shape_is_ignored() -> None:
    """status is system-managed: a list or a string there once crashed the parser (AttributeError)."""
    for status in ("[1]", "x", "{last_write: [1, 2]}", "null"):
        resource = parse_override_yaml(_empty_doc() + f"status: {status}\n")
        assert resource.last_write is None
        check_resource(resource)


def _corrupt(der: bytes, old: bytes, new: bytes) -> str:
    assert der.count(old) == 1
    return armour(der.replace(old, new))


def test_certificates_that_load_but_do_not_parse_are_problems_not_crashes() -> None:
    """cryptography parses names and keys lazily: a bad one used to escape as an exception, not a problem."""
    der = world().ov_a.cert.public_bytes(serialization.Encoding.DER)
    broken = {
        "issuer not UTF-8": _corrupt(der, b"Example Corp Issuing", b"\x8dxample Corp Issuing"),
        "subject not UTF-8": _corrupt(der, b"mycluster override", b"\x8dycluster override"),
        "unknown key type": _corrupt(
            der, bytes.fromhex("2a864886f70d010101"), bytes.fromhex("2a864886f70d010102")
        ),
    }
    for why, pem in broken.items():
        key_hash = CertificateOverride(pem).key_hash  # never raises; "" when the key is unreadable
        assert (key_hash == "") == (why == "unknown key type")
        for entry in ({"certificate": pem}, {"certificate": world().ov_a.pem, "chain": [pem]}):
            data = world().valid
            data["spec"]["certificate_overrides"][0] = entry
            resource = parse_override_yaml(dump_yaml(data))
            problems = validate_override(resource, None, context(resource))
            field = "certificate" if "chain" not in entry else "chain[0]"
            prefix = f"spec.certificate_overrides[0].{field}: not a valid X.509 certificate: "
            assert any(p.startswith(prefix) for p in problems), (why, problems)
            check_input(dump_yaml(data))


@FUZZ
@given(ANY_YAML, YAML_STYLES)
def test_random_yaml_documents(data: Any, style: str) -> None:
    check_input(dump(data, style))


@FUZZ
@given(DOCUMENTS, YAML_STYLES)
def test_random_documents_in_the_resource_shape(data: dict[str, Any], style: str) -> None:
    check_input(dump(data, style))


@FUZZ
@given(mutated_text())
def test_byte_mutations_of_a_valid_resource(text: bytes) -> None:
    check_input(text)


@FUZZ
@given(mutated_data(), YAML_STYLES)
def test_field_mutations_of_a_valid_resource(data: dict[str, Any], style: str) -> None:
    check_input(dump(data, style))


@FUZZ
@given(pem_texts(), st.lists(pem_texts(), max_size=3), st.booleans())
def test_random_der_and_pem_for_the_certificate_and_chain(
    certificate: str, chain: list[str], disabled: bool
) -> None:
    data = world().valid
    data["spec"]["certificate_overrides"][0] = {
        "certificate": certificate,
        "chain": chain,
        "disabled": disabled,
    }
    check_input(dump_yaml(data))


@FUZZ
@given(RESOURCES)
def test_resources_as_a_client_could_send_them(resource: CertAuthorityOverride) -> None:
    """What WriteOverrideResource gets from a client that skips authctl's parser: any strings at all.

    The node first resolves the type's spelling (db-client is db_client), as done here, then validates.
    """
    started = time.perf_counter()
    try:
        received = replace(resource, ca_type=resolve_ca_type(resource.ca_type, "sub_kind").name)
    except ValidationError as e:
        check_problems(e.problems)
    else:
        check_resource(received)
    assert time.perf_counter() - started < TIME_LIMIT


# --- one test per size limit --------------------------------------------------------------------------


def _refused(text: str | bytes) -> tuple[list[str], float]:
    started = time.perf_counter()
    with pytest.raises(ValidationError) as raised:
        parse_override_yaml(text)
    return raised.value.problems, time.perf_counter() - started


def _empty_doc(entries: list[dict[str, Any]] | None = None) -> str:
    """A resource with these entries, each written out in full (equal entries would become YAML aliases)."""
    spec = {"certificate_overrides": [copy.deepcopy(e) for e in entries]} if entries is not None else {}
    return dump_yaml(
        {"kind": KIND, "sub_kind": "windows", "version": "v1", "metadata": {"name": CLUSTER}, "spec": spec}
    )


def test_a_resource_over_1_mib_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[int] = []
    real = ca_override._compose_and_construct

    def spy(text: str | bytes) -> Any:
        parsed.append(len(text))
        return real(text)

    monkeypatch.setattr(ca_override, "_compose_and_construct", spy)
    at_limit = _empty_doc() + "#" * (MAX_RESOURCE_BYTES - len(_empty_doc()))
    assert len(at_limit.encode()) == MAX_RESOURCE_BYTES
    assert parse_override_yaml(at_limit).ca_type == "windows"
    assert parsed == [MAX_RESOURCE_BYTES]
    parsed.clear()
    over: list[str | bytes] = [
        at_limit + "#",
        (at_limit + "#").encode(),
        "é" * (MAX_RESOURCE_BYTES // 2 + 1),  # fewer characters than the limit, more bytes
        "[" * (MAX_RESOURCE_BYTES + 1),  # would be refused for depth, if it were parsed
    ]
    for text in over:
        problems, elapsed = _refused(text)
        size = len(text.encode()) if isinstance(text, str) else len(text)
        assert problems == [f"resource: larger than 1 MiB ({size} bytes)"]
        assert elapsed < 0.1
    assert parsed == []


def test_yaml_deeper_than_the_limit_is_refused() -> None:
    def nested(levels: int) -> str:  # the top mapping is one level, each list one more
        return "kind: cert_authority_override\nx: " + "[" * (levels - 1) + "]" * (levels - 1) + "\n"

    problems, _ = _refused(nested(MAX_YAML_DEPTH))
    assert "x: unknown field" in problems
    assert not any("deeper" in p for p in problems)
    for text in (nested(MAX_YAML_DEPTH + 1), "[" * 500_000, "".join("  " * i + "a:\n" for i in range(200))):
        problems, elapsed = _refused(text)
        assert problems == [f"resource: YAML nested deeper than {MAX_YAML_DEPTH} levels"]
        assert elapsed < TIME_LIMIT


def test_alias_bombs_are_refused_fast() -> None:
    laughs = '#\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        laughs += f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    bombs = {
        laughs: "resource: YAML aliases expand to more than 10000 nodes",
        "a: &a x\nb: [" + ",".join(["*a"] * (MAX_YAML_ALIASES + 1)) + "]": (
            f"resource: more than {MAX_YAML_ALIASES} YAML aliases"
        ),
        "a: &a [*a]": "resource: a YAML alias refers to a node that encloses it (recursive)",
    }
    for text, expected in bombs.items():
        problems, elapsed = _refused(text)
        assert problems == [expected]
        assert elapsed < 0.5


def test_more_yaml_nodes_than_the_limit_are_refused_fast() -> None:
    """1 MiB of tiny nodes took a pure-Python YAML parser 5 to 10 s before this limit."""
    under = "x: [" + ",".join(["1"] * (MAX_YAML_NODES - 10)) + "]"
    assert not any("YAML nodes" in p for p in _refused(under)[0])
    slow_before = [
        "x: [" + ",".join(["1"] * ((MAX_RESOURCE_BYTES - 10) // 2)) + "]",
        "x:\n" + "- 1\n" * ((MAX_RESOURCE_BYTES - 10) // 4),
        "".join(f"k{i}: 1\n" for i in range(100_000))[:MAX_RESOURCE_BYTES],
        "x: [" + ",".join(["{}"] * ((MAX_RESOURCE_BYTES - 10) // 3)) + "]",
    ]
    for text in slow_before:
        problems, elapsed = _refused(text)
        assert problems == [f"resource: more than {MAX_YAML_NODES} YAML nodes"]
        assert elapsed < TIME_LIMIT


def test_more_than_64_entries_are_refused_by_the_parser_and_the_validator() -> None:
    staged: dict[str, Any] = {"public_key": world().ov_b.key_hash, "disabled": True}
    problems, _ = _refused(_empty_doc([{}] * (MAX_ENTRIES + 1)))
    assert problems == [f"spec.certificate_overrides: {MAX_ENTRIES + 1} entries, at most {MAX_ENTRIES}"]
    at_limit = parse_override_yaml(_empty_doc([staged] * MAX_ENTRIES))
    assert not any("entries, at most" in p for p in validate_override(at_limit, None, context(at_limit)))
    too_many = CertAuthorityOverride(
        CLUSTER,
        "windows",
        (CertificateOverride(public_key=world().ov_b.key_hash, disabled=True),) * (MAX_ENTRIES + 1),
    )
    problems = validate_override(too_many, None, context(too_many))
    assert f"spec.certificate_overrides: {MAX_ENTRIES + 1} entries, at most {MAX_ENTRIES}" in problems


@cache
def deep_external_ca() -> list[CertKey]:
    """An external CA with MAX_CHAIN levels: the longest chain an entry may carry."""
    return external_ca(levels=MAX_CHAIN, first_slot=200, org="Deep Corp")


def test_a_chain_longer_than_10_is_refused_and_10_is_clean() -> None:
    chain = deep_external_ca()
    cert = override_cert(rsa_key(1), chain[0])
    entry = CertificateOverride(cert.pem, chain=tuple(c.pem for c in chain))
    longest = CertAuthorityOverride(CLUSTER, "windows", (entry,))
    assert validate_override(longest, None, context(longest)) == []
    too_long = CertAuthorityOverride(
        CLUSTER, "windows", (CertificateOverride(cert.pem, chain=(*entry.chain, chain[-1].pem)),)
    )
    assert validate_override(too_long, None, context(too_long)) == [
        f"spec.certificate_overrides[0].chain: {MAX_CHAIN + 1} certificates, at most {MAX_CHAIN}"
    ]


def test_the_largest_resource_within_every_limit_is_handled_in_bounded_time() -> None:
    """64 entries, each with a certificate and a chain of 10, under 1 MiB: parsed and validated fast."""
    chain = [c.pem for c in deep_external_ca()]
    cert = override_cert(rsa_key(1), deep_external_ca()[0]).pem
    text = _empty_doc([{"certificate": cert, "chain": chain}] * MAX_ENTRIES)
    assert 0.5 * MAX_RESOURCE_BYTES < len(text.encode()) <= MAX_RESOURCE_BYTES
    started = time.perf_counter()
    resource = parse_override_yaml(text)
    problems = validate_override(resource, None, context(resource))
    elapsed = time.perf_counter() - started
    assert len(problems) == MAX_ENTRIES - 1  # the same key 64 times: every entry after the first
    assert all("duplicate entry" in p for p in problems)
    assert elapsed < TIME_LIMIT


# --- the CSR subject ----------------------------------------------------------------------------------


def _subject_of_length(length: int) -> str:
    """A valid RFC 4514 subject of exactly `length` characters: O=<cluster>, then L=x... attributes."""
    subject = f"O={CLUSTER}"
    while len(subject) < length:
        room = length - len(subject) - len(",L=")
        subject += ",L=" + "x" * min(64, max(room, 1))
    assert len(subject) == length, "pick a length the attributes can fill exactly"
    return subject


def test_an_oversize_csr_subject_is_refused_fast() -> None:
    ca_subject = world().self_signed.cert.subject
    at_limit = csr_subject(ca_subject, CLUSTER, _subject_of_length(MAX_SUBJECT_CHARS))
    assert at_limit.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == CLUSTER
    for length in (MAX_SUBJECT_CHARS + 1, 100_000):
        started = time.perf_counter()
        with pytest.raises(ValidationError) as raised:
            csr_subject(ca_subject, CLUSTER, "CN=" + "a" * (length - 3))
        assert raised.value.problems == [
            f"subject: longer than {MAX_SUBJECT_CHARS} characters (got {length})"
        ]
        assert time.perf_counter() - started < 0.1


RDN_TYPES = st.sampled_from(
    ["CN", "O", "OU", "L", "ST", "C", "DC", "UID", "1.3.9999.4.1", "2.5.4.5", "0.9", "x"]
)


@FUZZ
@given(
    st.one_of(
        TEXT,
        st.lists(st.tuples(RDN_TYPES, TEXT), max_size=6).map(
            lambda rdns: ",".join(f"{t}={v}" for t, v in rdns)
        ),
    )
)
@example("O=other,1.3.9999.4.1=mycluster")
@example("1.3.9999.4.1=other")
@example("CN=" + "a" * 65)
@example("2.5.4.5=!")  # serialNumber is a PrintableString: this once failed only when signing the CSR
@example("C=é1")
def test_csr_subjects(custom: str) -> None:
    """A custom subject gives a name a CSR can be signed with, or a ValidationError about `subject`."""
    ca_subject = world().self_signed.cert.subject
    started = time.perf_counter()
    try:
        subject = csr_subject(ca_subject, CLUSTER, custom)
    except ValidationError as e:
        assert all(p.startswith("subject: ") and p.splitlines() == [p] for p in e.problems), e.problems
    else:
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(rsa_key(1), hashes.SHA256())
        assert csr.is_signature_valid
    assert time.perf_counter() - started < TIME_LIMIT


# --- the user name of a credential --------------------------------------------------------------------


class SoftwareKeyStore:
    """Stands in for Pkcs11KeyStore where issue_credentials uses it: no token, a software key.

    A CredentialRequest checks `user` when it is made, before the keystore is asked for anything, so
    `calls` counts whether a request got as far as the token.
    """

    def __init__(self) -> None:
        self.calls = 0

    def private_key(self, ref: KeyRef) -> rsa.RSAPrivateKey:
        self.calls += 1
        return rsa_key(1)

    def run(self, call: Callable[..., Any], *args: Any) -> Any:
        self.calls += 1
        return call(*args)

    async def run_async(self, call: Callable[..., Any], *args: Any) -> Any:
        self.calls += 1
        return call(*args)


def _issue(user: str, ca_type: str) -> tuple[Credential | ValidationError, int]:
    ca = world().self_signed
    issuer = Issuer(ca_key_pair(ca, HOST_A), ca.cert, (), override_active=False)
    keystore = SoftwareKeyStore()
    public_key = rsa_key(7).public_key()
    try:
        request = CredentialRequest(ca_type, user, public_key, dt.timedelta(hours=1))
        signer = TokenSigner(cast(Pkcs11KeyStore, keystore))
        [credential] = asyncio.run(issue_credentials(signer, [(issuer, request)], "mycluster.test"))
    except ValidationError as e:
        return e, keystore.calls
    return credential, keystore.calls


USERS = st.one_of(
    TEXT.filter(lambda u: len(u.encode()) <= 64),  # a CN holds at most 64 bytes of UTF-8
    st.text(UTF8, min_size=257, max_size=400),
)


@FUZZ
@given(USERS, st.sampled_from(["windows", "db_client"]))
@example("a" * 257, "windows")
@example("alice\nbob", "db_client")
@example("a" * 64, "windows")
def test_credential_user_names(user: str, ca_type: str) -> None:
    """Users that fit a CN (64 bytes) get a credential naming them; past 256 refused before the token.

    Between the two: see test_a_user_longer_than_a_common_name_is_a_validation_error.
    """
    outcome, token_calls = _issue(user, ca_type)
    printable = all(c == " " or c.isprintable() for c in user)
    if isinstance(outcome, ValidationError):
        [problem] = outcome.problems
        assert token_calls == 0
        if not user:
            assert problem == "user: required"
        elif len(user.encode()) > 64:
            assert problem.startswith("user: at most 64 bytes of UTF-8 (a certificate CN), got ")
        else:
            assert problem.startswith(f"user: {USER_RULE}; no control or formatting characters, got U+")
            assert not printable
    else:
        assert printable and 0 < len(user.encode()) <= 64
        cn = outcome.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == user


def test_a_user_over_256_characters_is_refused_before_any_token_call() -> None:
    outcome, token_calls = _issue("a" * 100_000, "windows")
    assert isinstance(outcome, ValidationError)
    assert outcome.problems == ["user: at most 64 bytes of UTF-8 (a certificate CN), got 100000 bytes"]
    assert token_calls == 0


def test_a_user_longer_than_a_common_name_is_a_validation_error() -> None:
    for user in ("a" * 65, "a" * 256, "é" * 33):
        outcome, token_calls = _issue(user, "db_client")
        assert isinstance(outcome, ValidationError)
        assert token_calls == 0
