"""The cert_authority_override resource: YAML codec, structural checks and the validation rules (SPEC §7).

Pure and fast: software RSA keys stand in for token keys; no etcd or HSM is needed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.errors import ValidationError
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride, parse_override_yaml
from authsim.cluster.resources.validation import OverrideContext, check_override, validate_override
from authsim.cluster.resources.yaml_codec import dump_yaml
from tests.certs import (
    CertKey,
    ca_key_pair,
    cluster_ca,
    external_ca,
    issue_cert,
    name,
    override_cert,
    rsa_key,
)

CLUSTER = "mycluster"
HOST_A, HOST_B, HOST_C = "host-a", "host-b", "host-c"  # host-c is missing from the node registry
NODE_NAMES = {HOST_A: "auth1", HOST_B: "auth2"}
E0, E1 = "spec.certificate_overrides[0]", "spec.certificate_overrides[1]"
BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""  # 72 aliases, under the alias count limit: the expansion limit stops it
GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----"
NOW = dt.datetime.now(dt.timezone.utc)


# --- the world: one windows CA with three keys on three nodes, an external CA, override certificates ------


@dataclass(frozen=True)
class World:
    """CA key a is active on host-a; b (host-b) and c (host-c) are additional trusted keys."""

    ca_a: CertKey
    ca_b: CertKey
    ca_c: CertKey
    chain: list[CertKey]  # the external CA, issuing CA first, root last
    ov_a: CertKey
    ov_b: CertKey
    ov_x: CertKey  # an override certificate for a key the CA does not have
    authority: CertAuthority

    def values(self) -> dict[str, str]:
        """What expected messages refer to as {ha}, {hb}, {hc} and {hx}: the key hashes."""
        keys = {"ha": self.ca_a, "hb": self.ca_b, "hc": self.ca_c, "hx": self.ov_x}
        return {placeholder: cert.key_hash for placeholder, cert in keys.items()}


@cache
def world() -> World:
    ca_a, ca_b, ca_c = (cluster_ca(CLUSTER, rsa_key(slot)) for slot in (1, 2, 3))
    chain = external_ca(levels=2)
    authority = CertAuthority(
        CLUSTER,
        "windows",
        active_keys=(ca_key_pair(ca_a, HOST_A),),
        additional_trusted_keys=(ca_key_pair(ca_b, HOST_B), ca_key_pair(ca_c, HOST_C)),
    )
    return World(
        ca_a=ca_a,
        ca_b=ca_b,
        ca_c=ca_c,
        chain=chain,
        ov_a=override_cert(rsa_key(1), chain[0]),
        ov_b=override_cert(rsa_key(2), chain[0]),
        ov_x=override_cert(rsa_key(4), chain[0]),
        authority=authority,
    )


def ov(ca_slot: int, **kwargs: Any) -> CertKey:
    """An override certificate for the CA key in `ca_slot`, issued by the external issuing CA."""
    return override_cert(rsa_key(ca_slot), world().chain[0], **kwargs)


def impostor(real: CertKey) -> CertKey:
    """A CA with the same subject as `real` but another key: the names match, the signature does not."""
    return issue_cert(real.cert.subject, rsa_key(150))


def csr_pem() -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(name(CLUSTER, orgs=[CLUSTER]))
    return csr.sign(rsa_key(1), hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def doc(*entries: dict[str, Any], name: Any = CLUSTER, **fields: Any) -> str:
    """A resource in the seed's shape; `fields` replace or add top-level fields (None removes one)."""
    data: dict[str, Any] = {
        "kind": "cert_authority_override",
        "sub_kind": "windows",
        "version": "v1",
        "metadata": {"name": name},
        "spec": {"certificate_overrides": list(entries)} if entries else {},
    }
    data.update(fields)
    return dump_yaml({k: v for k, v in data.items() if v is not None})


def entry(cert: CertKey, **extra: Any) -> dict[str, Any]:
    return {"certificate": cert.pem, **extra}


def stored(*entries: CertificateOverride, revision: int = 7) -> CertAuthorityOverride:
    return CertAuthorityOverride(CLUSTER, "windows", entries, revision=revision)


def context(host_id: str = HOST_A, force: bool = False, authority: bool = True) -> OverrideContext:
    return OverrideContext(CLUSTER, world().authority if authority else None, host_id, NODE_NAMES, force, NOW)


def problems_of(
    text: str,
    previous: CertAuthorityOverride | None = None,
    ctx: OverrideContext | None = None,
    revision_required: bool = False,
) -> list[str]:
    """Every problem of writing `text` over `previous`: the parser's if any, else the validator's."""
    try:
        resource = parse_override_yaml(text, revision_required)
    except ValidationError as e:
        return e.problems
    return validate_override(resource, previous, ctx or context())


def _no_previous(w: World) -> CertAuthorityOverride | None:
    return None


@dataclass(frozen=True)
class Case:
    """One write: its YAML, what is stored before it, who writes it and the problem expected (None: valid)."""

    id: str
    text: Callable[[World], str]
    expected: str | None = None  # a substring of one problem; {ha}-style values from World.values()
    previous: Callable[[World], CertAuthorityOverride | None] = _no_previous
    host_id: str = HOST_A
    force: bool = False
    authority: bool = True
    revision_required: bool = False

    def problems(self) -> list[str]:
        w = world()
        ctx = context(self.host_id, self.force, self.authority)
        return problems_of(self.text(w), self.previous(w), ctx, self.revision_required)


# --- the corpus of bad writes --------------------------------------------------------------------------

MUST_BE_MAPPING = "resource: must be a mapping with kind, sub_kind, version, metadata and spec, got"
FALLBACK = "would switch issued credentials back to the self-signed CA; use --force"

BAD_DOCUMENTS = [
    Case(
        "malformed-yaml",
        lambda w: "kind: cert_authority_override\nspec: [unclosed\n",
        "resource: malformed YAML: expected ',' or ']', but got '<stream end>' at line 3 column 1",
    ),
    Case(
        "tab-indent",
        lambda w: "kind: x\n\tb: 2\n",
        "resource: malformed YAML: found character '\\t' that cannot start any token at line 2 column 1",
    ),
    Case(
        "unsafe-tag",
        lambda w: "kind: !!python/object/apply:os.system [ls]\n",
        "resource: malformed YAML: could not determine a constructor for the tag",
    ),
    Case(
        "billion-laughs", lambda w: BILLION_LAUGHS, "resource: YAML aliases expand to more than 10000 nodes"
    ),
    Case(
        "101-aliases",
        lambda w: "a: &a x\nb: [" + "*a, " * 101 + "]\n",
        "resource: more than 100 YAML aliases",
    ),
    Case(
        "recursive-alias",
        lambda w: "a: &a [*a]\n",
        "resource: a YAML alias refers to a node that encloses it",
    ),
    Case(
        "depth-bomb",
        lambda w: "spec: " + "[" * 1000 + "]" * 1000,
        "resource: YAML nested deeper than 32 levels",
    ),
    Case("oversize", lambda w: "#" + "x" * (1 << 20), f"resource: larger than 1 MiB ({(1 << 20) + 1} bytes)"),
    Case("not-a-mapping", lambda w: "- kind\n", f"{MUST_BE_MAPPING} a list"),
    Case("empty-document", lambda w: "", "resource: the input holds no document"),
    Case("null-document", lambda w: "---\n", f"{MUST_BE_MAPPING} null"),
    Case(
        "two-documents",
        lambda w: "{}\n---\n{}\n",
        "resource: 2 YAML documents (`---` between them), expected one",
    ),
    Case(
        "wrong-kind",
        lambda w: doc(kind="cert_authority"),
        "kind: must be cert_authority_override, got 'cert_authority'",
    ),
    Case("missing-kind", lambda w: doc(kind=None), "kind: required (cert_authority_override)"),
    Case("wrong-version", lambda w: doc(version="v2"), "version: must be v1, got 'v2'"),
    Case(
        "unknown-sub-kind",
        lambda w: doc(sub_kind="host"),
        "sub_kind: unknown CA type 'host' (known: windows, db_client)",
    ),
    Case("missing-sub-kind", lambda w: doc(sub_kind=None), "sub_kind: required (one of windows, db_client)"),
    Case("unknown-top-field", lambda w: doc(specs={}), "specs: unknown field"),
    Case(
        "metadata-not-mapping", lambda w: doc(metadata=CLUSTER), "metadata: must be a mapping, got a string"
    ),
    Case("missing-name", lambda w: doc(metadata={}), "metadata.name: required (the cluster name)"),
    Case("name-not-string", lambda w: doc(name=12), "metadata.name: must be a string, got an integer"),
    Case(
        "wrong-name",
        lambda w: doc(name="other"),
        "metadata.name: must be the cluster name 'mycluster', got 'other'",
    ),
    Case(
        "unknown-metadata-field",
        lambda w: doc(metadata={"name": CLUSTER, "labels": {}}),
        "metadata.labels: unknown field",
    ),
    Case(
        "revision-not-int",
        lambda w: doc(metadata={"name": CLUSTER, "revision": "seven"}),
        "metadata.revision: must be a non-negative integer, got 'seven'",
    ),
    Case(
        "revision-required",
        lambda w: doc(),
        "metadata.revision: required for an update",
        revision_required=True,
    ),
    Case("missing-spec", lambda w: doc(spec=None), "spec: required ({{}} for an empty override)"),
    Case(
        "spec-not-mapping",
        lambda w: doc(spec=["certificate_overrides"]),
        "spec: must be a mapping, got a list",
    ),
    Case("unknown-spec-field", lambda w: doc(spec={"overrides": []}), "spec.overrides: unknown field"),
    Case(
        "entries-not-list",
        lambda w: doc(spec={"certificate_overrides": "x"}),
        "spec.certificate_overrides: must be a list, got a string",
    ),
    Case(
        "65-entries",
        lambda w: doc(*[{"public_key": f"{i:064x}", "disabled": True} for i in range(65)]),
        "spec.certificate_overrides: 65 entries, at most 64",
        force=True,
    ),
    Case(
        "entry-not-mapping",
        lambda w: doc(spec={"certificate_overrides": ["x"]}),
        f"{E0}: must be a mapping, got a string",
    ),
    Case("unknown-entry-field", lambda w: doc(entry(w.ov_a, foo=1)), f"{E0}.foo: unknown field"),
    Case(
        "certificate-not-string",
        lambda w: doc({"certificate": 12}),
        f"{E0}.certificate: must be a PEM string, got an integer",
    ),
    Case(
        "chain-not-list",
        lambda w: doc(entry(w.ov_a, chain=w.chain[0].pem)),
        f"{E0}.chain: must be a list of PEM strings, got a string",
    ),
    Case(
        "disabled-not-bool",
        lambda w: doc(entry(w.ov_a, disabled="maybe")),
        f"{E0}.disabled: must be true or false, got 'maybe'",
    ),
]

BAD_CERTIFICATES = [
    Case(
        "two-pems",
        lambda w: doc({"certificate": w.ov_a.pem + "\n" + w.chain[0].pem}),
        f"{E0}.certificate: contains 2 PEM blocks, expected exactly one certificate",
    ),
    Case(
        "trailing-junk",
        lambda w: doc({"certificate": w.ov_a.pem + "\njunk"}),
        f"{E0}.certificate: trailing data after the PEM block",
    ),
    Case(
        "leading-junk",
        lambda w: doc({"certificate": "Subject: CN=x\n" + w.ov_a.pem}),
        f"{E0}.certificate: data before the PEM block",
    ),
    Case(
        "garbage-pem",
        lambda w: doc({"certificate": GARBAGE_PEM}),
        f"{E0}.certificate: not a valid X.509 certificate: ",
    ),
    Case(
        "no-pem",
        lambda w: doc({"certificate": "MIIBIjANBgkqhkiG9w0B"}),
        f"{E0}.certificate: not a PEM certificate",
    ),
    Case(
        "csr-not-cert",
        lambda w: doc({"certificate": csr_pem()}),
        f"{E0}.certificate: PEM block is a CERTIFICATE REQUEST, expected a CERTIFICATE",
    ),
    Case(
        "not-a-ca",
        lambda w: doc(entry(ov(1, ca=False))),
        f"{E0}.certificate: BasicConstraints CA is false: not a CA certificate",
    ),
    Case(
        "no-basic-constraints",
        lambda w: doc(entry(ov(1, ca=None))),
        f"{E0}.certificate: missing BasicConstraints",
    ),
    Case(
        "no-key-cert-sign",
        lambda w: doc(entry(ov(1, key_usage=["crl_sign"]))),
        f"{E0}.certificate: missing KeyUsage keyCertSign",
    ),
    Case(
        "no-crl-sign",
        lambda w: doc(entry(ov(1, key_usage=["key_cert_sign", "digital_signature"]))),
        f"{E0}.certificate: missing KeyUsage cRLSign",
    ),
    Case(
        "no-key-usage",
        lambda w: doc(entry(ov(1, key_usage=None))),
        f"{E0}.certificate: missing KeyUsage cRLSign",
    ),
    Case(
        "never-valid",
        lambda w: doc(
            entry(ov(1, not_before=NOW + dt.timedelta(days=2), not_after=NOW + dt.timedelta(days=1)))
        ),
        f"{E0}.certificate: not_before ",
    ),
    Case(
        "no-cluster-in-subject",
        lambda w: doc(entry(ov(1, subject=name("Windows CA")))),
        f"{E0}.certificate: subject has no O or OID 1.3.9999.4.1 naming the cluster 'mycluster'",
    ),
    Case(
        "oid-other-cluster",
        lambda w: doc(entry(ov(1, subject=name("CA", cluster_oid="other")))),
        f"{E0}.certificate: subject OID 1.3.9999.4.1 is 'other', not the cluster name 'mycluster'",
    ),
    Case(
        "oid-wins-over-o",
        lambda w: doc(entry(ov(1, subject=name("CA", orgs=[CLUSTER], cluster_oid="other")))),
        f"{E0}.certificate: subject OID 1.3.9999.4.1 is 'other', not the cluster name 'mycluster'",
    ),
    Case(
        "first-o-other",
        lambda w: doc(entry(ov(1, subject=name("CA", orgs=["Acme", CLUSTER])))),
        f"{E0}.certificate: subject's first O is 'Acme', not the cluster name 'mycluster'",
    ),
    Case(
        "public-key-mismatch",
        lambda w: doc(entry(w.ov_a, public_key=w.ca_b.key_hash)),
        f"{E0}.public_key: does not match the certificate's public key (hash {{ha}})",
    ),
    Case(
        "public-key-not-hex",
        lambda w: doc({"public_key": "XYZ", "disabled": True}),
        f"{E0}.public_key: must be 64 lower-case hex characters (SHA-256 of the public key), got 'XYZ'",
    ),
    Case(
        "public-key-upper-case",
        lambda w: doc({"public_key": w.ca_b.key_hash.upper(), "disabled": True}),
        f"{E0}.public_key: must be 64 lower-case hex characters",
    ),
    Case(
        "enabled-without-certificate",
        lambda w: doc({"public_key": w.ca_a.key_hash}),
        f"{E0}.certificate: required for an enabled override",
    ),
    Case(
        "disabled-without-anything",
        lambda w: doc({"disabled": True}),
        f"{E0}: a disabled override needs a certificate or a public_key",
    ),
    Case(
        "duplicate",
        lambda w: doc(entry(w.ov_a), entry(ov(1, days=100))),
        f"{E1}: duplicate entry for public key {{ha}} (also at [0])",
    ),
    Case(
        "duplicate-public-key",
        lambda w: doc(entry(w.ov_b, disabled=True), {"public_key": w.ca_b.key_hash, "disabled": True}),
        f"{E1}: duplicate entry for public key {{hb}} (also at [0])",
    ),
    Case(
        "chain-root-first",
        lambda w: doc(entry(w.ov_a, chain=[c.pem for c in w.chain[::-1]])),
        f"{E0}.chain[0]: is not the issuer of the certificate: its subject "
        "'O=Example Corp,CN=Example Corp Root CA' is not the certificate's issuer",
    ),
    Case(
        "chain-wrong-root",
        lambda w: doc(entry(w.ov_a, chain=[w.chain[0].pem, external_ca(1, first_slot=200)[0].pem])),
        f"{E0}.chain[1]: is not the issuer of chain[0]",
    ),
    Case(
        "chain-impostor-issuer",
        lambda w: doc(entry(w.ov_a, chain=[impostor(w.chain[0]).pem])),
        f"{E0}.chain[0]: is not the issuer of the certificate: its key did not sign the certificate "
        "(the chain must go from the certificate's issuer towards the root)",
    ),
    Case(
        "chain-of-11",
        lambda w: doc(entry(w.ov_a, chain=[w.chain[0].pem] * 11)),
        f"{E0}.chain: 11 certificates, at most 10",
    ),
    Case(
        "chain-without-certificate",
        lambda w: doc({"public_key": w.ca_a.key_hash, "chain": [w.chain[0].pem], "disabled": True}),
        f"{E0}.chain: requires a certificate",
    ),
    Case(
        "chain-garbage",
        lambda w: doc(entry(w.ov_a, chain=[GARBAGE_PEM])),
        f"{E0}.chain[0]: not a valid X.509 certificate",
    ),
]

BAD_AGAINST_CA = [
    Case(
        "no-cert-authority",
        lambda w: doc(entry(w.ov_a)),
        "sub_kind: no cert_authority windows exists in cluster mycluster",
        authority=False,
    ),
    Case(
        "unknown-key",
        lambda w: doc(entry(w.ov_x)),
        f"{E0}: public key {{hx}} is not a key of the windows CA "
        "(run `authctl auth create-override-csr --type windows` to get a CSR for a CA key)",
    ),
    Case(
        "outlives-ca",
        lambda w: doc(entry(ov(1, not_after=w.ca_a.not_after + dt.timedelta(days=1)))),
        f"{E0}.certificate: not_after ",  # the full text is checked in test_outliving_message
    ),
    Case(
        "expired",
        lambda w: doc(entry(ov(1, not_before=NOW - dt.timedelta(days=30), days=10))),
        f"{E0}.certificate: expired on ",
    ),
    Case(
        "disable-active",
        lambda w: doc(entry(w.ov_a, disabled=True)),
        f"{E0}.disabled: disabling the enabled override of the active key {{ha}} {FALLBACK}",
        previous=lambda w: stored(CertificateOverride(w.ov_a.pem)),
    ),
    Case(
        "remove-active",
        lambda w: doc(entry(w.ov_b, disabled=True)),
        f"spec.certificate_overrides: removing the enabled override of the active key {{ha}} (was entry [0]) "
        f"{FALLBACK}",
        previous=lambda w: stored(
            CertificateOverride(w.ov_a.pem), CertificateOverride(w.ov_b.pem, disabled=True)
        ),
    ),
    Case(
        "empty-spec-removes-active",
        lambda w: doc(),
        "spec.certificate_overrides: removing the enabled override of the active key {ha}",
        previous=lambda w: stored(CertificateOverride(w.ov_a.pem)),
    ),
    Case(
        "other-nodes-key",
        lambda w: doc(entry(w.ov_b)),
        f"{E0}: public key {{hb}} is held by node auth2 (host host-b): "
        "enable it by running this command on that node (`authctl --node auth2 …`)",
    ),
    Case(
        "other-nodes-key-forced",
        lambda w: doc(entry(w.ov_b)),
        f"{E0}: public key {{hb}} is held by node auth2 (host host-b)",
        force=True,
    ),
    Case(
        "unnamed-nodes-key",
        lambda w: doc(entry(ov(3))),
        f"{E0}: public key {{hc}} is held by another node (host host-c)",
    ),
    Case(
        "enable-staged-from-wrong-node",
        lambda w: doc(entry(w.ov_b)),
        f"{E0}: public key {{hb}} is held by node auth2",
        previous=lambda w: stored(CertificateOverride(w.ov_b.pem, disabled=True)),
    ),
    Case(
        "recertify-from-wrong-node",
        lambda w: doc(entry(ov(2, days=200))),
        f"{E0}: public key {{hb}} is held by node auth2",
        previous=lambda w: stored(CertificateOverride(w.ov_b.pem)),
    ),
    Case(
        "enable-entry-of-a-removed-key",
        lambda w: doc(entry(w.ov_x)),
        f"{E0}.disabled: public key {{hx}} is not (or no longer) a key of the windows CA: "
        "only a disabled entry may name it",
        previous=lambda w: stored(CertificateOverride(w.ov_x.pem, disabled=True)),
    ),
    Case(
        "enable-entry-of-a-removed-key-among-others",
        lambda w: doc(entry(w.ov_a), entry(w.ov_x)),
        f"{E1}.disabled: public key {{hx}} is not (or no longer) a key of the windows CA",
        previous=lambda w: stored(
            CertificateOverride(w.ov_a.pem), CertificateOverride(public_key=w.ov_x.key_hash, disabled=True)
        ),
    ),
    Case(
        "recertify-enabled-entry-of-a-removed-key",
        lambda w: doc(entry(ov(4, days=200))),
        f"{E0}.certificate: public key {{hx}} is not (or no longer) a key of the windows CA: "
        "only a disabled entry may name it",
        previous=lambda w: stored(CertificateOverride(w.ov_x.pem)),
    ),
]

BAD = BAD_DOCUMENTS + BAD_CERTIFICATES + BAD_AGAINST_CA


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_write_is_refused_with_its_field_path(case: Case) -> None:
    assert case.expected is not None
    expected = case.expected.format(**world().values())
    problems = case.problems()
    assert any(expected in p for p in problems), f"{expected!r} not in {problems}"


# --- valid writes --------------------------------------------------------------------------------------

GOOD = [
    Case("seed-empty-spec", lambda w: doc()),
    Case("seed-one-certificate", lambda w: doc(entry(w.ov_a))),
    Case("seed-staged-disabled-for-another-node", lambda w: doc(entry(w.ov_b, disabled=True))),
    Case(
        "staged-entry-enabled-by-its-owner",
        lambda w: doc(entry(w.ov_b)),
        previous=lambda w: stored(CertificateOverride(w.ov_b.pem, disabled=True)),
        host_id=HOST_B,
    ),
    Case(
        "per-node-append-keeps-other-nodes-entry",
        lambda w: doc(entry(w.ov_b), entry(w.ov_a)),
        previous=lambda w: stored(CertificateOverride(w.ov_b.pem)),
    ),
    Case(
        "oid-fixes-first-o",
        lambda w: doc(entry(ov(1, subject=name("CA", orgs=["Acme"], cluster_oid=CLUSTER)))),
    ),
    Case(
        "o-and-oid-agree",
        lambda w: doc(entry(ov(1, subject=name("CA", orgs=[CLUSTER], cluster_oid=CLUSTER)))),
    ),
    Case("chain-to-root", lambda w: doc(entry(w.ov_a, chain=[c.pem for c in w.chain]))),
    Case("matching-public-key", lambda w: doc(entry(w.ov_a, public_key=w.ca_a.key_hash))),
    Case("disabled-public-key-only", lambda w: doc({"public_key": w.ca_c.key_hash, "disabled": True})),
    Case("unknown-key-forced", lambda w: doc(entry(w.ov_x)), force=True),
    Case("no-cert-authority-forced", lambda w: doc(entry(w.ov_x)), force=True, authority=False),
    Case(
        "disable-active-forced",
        lambda w: doc(entry(w.ov_a, disabled=True)),
        previous=lambda w: stored(CertificateOverride(w.ov_a.pem)),
        force=True,
    ),
    Case(
        "remove-active-forced",
        lambda w: doc(),
        previous=lambda w: stored(CertificateOverride(w.ov_a.pem)),
        force=True,
    ),
    Case(
        "disable-additional-key-from-any-node",
        lambda w: doc(entry(w.ov_b, disabled=True)),
        previous=lambda w: stored(CertificateOverride(w.ov_b.pem)),
    ),
    Case(
        "remove-additional-key", lambda w: doc(), previous=lambda w: stored(CertificateOverride(w.ov_b.pem))
    ),
    Case(
        "kept-entry-of-a-removed-key",
        lambda w: doc(entry(w.ov_x), entry(w.ov_a)),
        previous=lambda w: stored(CertificateOverride(w.ov_x.pem)),
    ),
    Case(
        "disabled-entry-of-a-removed-key-kept",
        lambda w: doc(entry(w.ov_x, disabled=True), entry(w.ov_a)),
        previous=lambda w: stored(CertificateOverride(w.ov_x.pem, disabled=True)),
    ),
    Case(
        "disable-entry-of-a-removed-key",
        lambda w: doc(entry(w.ov_x, disabled=True)),
        previous=lambda w: stored(CertificateOverride(w.ov_x.pem)),
    ),
    Case(
        "enable-entry-of-a-removed-key-forced",
        lambda w: doc(entry(w.ov_x)),
        previous=lambda w: stored(CertificateOverride(w.ov_x.pem, disabled=True)),
        force=True,
    ),
    Case(
        "disable-expired-override",
        lambda w: doc(entry(ov(2, not_before=NOW - dt.timedelta(days=30), days=10), disabled=True)),
        previous=lambda w: stored(
            CertificateOverride(ov(2, not_before=NOW - dt.timedelta(days=30), days=10).pem)
        ),
    ),
    Case("json-input", lambda w: json.dumps(parse_override_yaml(doc(entry(w.ov_a))).to_dict())),
    Case("sub-kind-alias", lambda w: doc(sub_kind="db-client")),
    Case("status-ignored", lambda w: doc(entry(w.ov_a), status={"crl": "anything", "x": [1]})),
    Case("revision-given", lambda w: doc(metadata={"name": CLUSTER, "revision": 3}), revision_required=True),
    Case(
        "aliases-within-limits",
        lambda w: (
            "kind: cert_authority_override\nsub_kind: windows\nversion: v1\nmetadata: {name: mycluster}\n"
            "spec:\n  certificate_overrides:\n"
            f"  - certificate: {json.dumps(w.ov_a.pem)}\n    chain: [&issuer {json.dumps(w.chain[0].pem)}]\n"
            f"  - certificate: {json.dumps(w.ov_b.pem)}\n    chain: [*issuer]\n    disabled: true\n"
        ),
    ),
    Case(
        "64-entries",
        lambda w: doc(*[{"public_key": f"{i:064x}", "disabled": True} for i in range(64)]),
        force=True,
    ),
]


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_valid_write_is_accepted(case: Case) -> None:
    assert case.problems() == []


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 30
    assert len({c.id for c in BAD + GOOD}) == len(BAD + GOOD)


# --- specific messages, limits and safety ---------------------------------------------------------------


def test_outliving_message_names_both_dates() -> None:
    w = world()
    late = ov(1, not_after=w.ca_a.not_after + dt.timedelta(days=1))
    expected = (
        f"{E0}.certificate: not_after {late.not_after:%Y-%m-%dT%H:%M:%SZ} is after the CA certificate's "
        f"not_after {w.ca_a.not_after:%Y-%m-%dT%H:%M:%SZ}: an override must not outlive the CA certificate "
        "it replaces"
    )
    assert problems_of(doc(entry(late))) == [expected]


def test_alias_bomb_fails_fast_without_expanding() -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ValidationError) as raised:
            parse_override_yaml(BILLION_LAUGHS)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.problems == ["resource: YAML aliases expand to more than 10000 nodes"]
    assert elapsed < 0.2
    assert peak < 2 * 1024 * 1024


def test_oversize_is_refused_before_parsing() -> None:
    text = "kind: [" * (1 << 19)  # would be a depth bomb too; the size check comes first
    with pytest.raises(ValidationError) as raised:
        parse_override_yaml(text.encode())
    assert raised.value.problems == [f"resource: larger than 1 MiB ({len(text)} bytes)"]


def test_undecodable_bytes_are_refused_naming_the_encoding_expected() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_override_yaml("kind: café\n".encode("latin-1"))
    assert raised.value.problems == [
        "resource: not UTF-8 text (or UTF-16 with a byte-order mark): byte 0xe9 at offset 9"
    ]
    with pytest.raises(ValidationError, match="kind: must be cert_authority_override, got 'x'"):
        parse_override_yaml("kind: x\n".encode("utf-16"))  # UTF-16 with its BOM is read


def test_a_key_given_twice_is_refused_with_its_line() -> None:
    text = "kind: cert_authority_override\nsub_kind: windows\nversion: v1\nsub_kind: db_client\n"
    with pytest.raises(ValidationError) as raised:
        parse_override_yaml(text)
    assert raised.value.problems == ["resource: key 'sub_kind' appears twice (again at line 4)"]
    nested = "metadata:\n  name: a\n  name: b\n"
    with pytest.raises(ValidationError, match=r"key 'name' appears twice \(again at line 3\)"):
        parse_override_yaml(nested)


def test_a_key_that_is_a_mapping_or_list_is_refused_with_its_line() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_override_yaml("{ {name: mycluster}: 1 }\n")
    assert raised.value.problems == ["resource: a key must be a plain value, got a mapping at line 1"]
    with pytest.raises(ValidationError, match=r"got a list at line 2"):
        parse_override_yaml("kind: x\n? [a, b]\n: 1\n")


def test_a_revision_beyond_int64_is_refused() -> None:
    text = doc(metadata={"name": CLUSTER, "revision": 1 << 63})
    with pytest.raises(ValidationError) as raised:
        parse_override_yaml(text, revision_required=True)
    assert raised.value.problems == [
        "metadata.revision: at most 9223372036854775807 (etcd revisions are int64), got 9223372036854775808"
    ]


def test_validator_limits_entries_of_a_resource_built_in_code() -> None:
    entries = tuple(CertificateOverride(public_key=f"{i:064x}", disabled=True) for i in range(65))
    problems = validate_override(stored(*entries), None, context(force=True))
    assert problems == ["spec.certificate_overrides: 65 entries, at most 64"]


def test_parser_reports_every_structural_problem() -> None:
    text = doc({"foo": 1, "disabled": "no way"}, kind="ca", version="v2", sub_kind="ssh", extra=1)
    with pytest.raises(ValidationError) as raised:
        parse_override_yaml(text)
    assert raised.value.problems == [
        "extra: unknown field",
        "kind: must be cert_authority_override, got 'ca'",
        "version: must be v1, got 'v2'",
        "sub_kind: unknown CA type 'ssh' (known: windows, db_client)",
        f"{E0}.foo: unknown field",
        f"{E0}.disabled: must be true or false, got 'no way'",
    ]


def test_validator_returns_every_problem_at_once() -> None:
    w = world()
    resource = replace(
        parse_override_yaml(doc(entry(ov(1, ca=False), public_key="ab"), entry(w.ov_b), entry(w.ov_x))),
        cluster_name="other",
    )
    values = w.values()
    assert validate_override(resource, None, context()) == [
        "metadata.name: must be the cluster name 'mycluster', got 'other'",
        f"{E0}.certificate: BasicConstraints CA is false: not a CA certificate",
        f"{E0}.public_key: must be 64 lower-case hex characters (SHA-256 of the public key), got 'ab'",
        f"spec.certificate_overrides[2]: public key {values['hx']} is not a key of the windows CA "
        "(run `authctl auth create-override-csr --type windows` to get a CSR for a CA key)",
        f"{E1}: public key {values['hb']} is held by node auth2 (host host-b): "
        "enable it by running this command on that node (`authctl --node auth2 …`)",
    ]


def test_check_override_raises_with_every_problem() -> None:
    w = world()
    resource = parse_override_yaml(doc(entry(w.ov_b), entry(w.ov_x)))
    with pytest.raises(ValidationError) as raised:
        check_override(resource, None, context())
    assert len(raised.value.problems) == 2
    check_override(parse_override_yaml(doc(entry(w.ov_a))), None, context())


def test_override_is_a_ca_according_to_openssl(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed as an independent checker"
    pem = tmp_path / "override.pem"
    pem.write_text(world().ov_a.pem + "\n")
    out = subprocess.run(
        [openssl, "x509", "-in", str(pem), "-noout", "-ext", "basicConstraints,keyUsage"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "CA:TRUE" in out
    assert "Certificate Sign" in out
    assert "CRL Sign" in out
    assert problems_of(doc(entry(world().ov_a))) == []


# --- the codec -----------------------------------------------------------------------------------------


def test_seed_shape_and_yaml_round_trip() -> None:
    w = world()
    text = doc(entry(w.ov_a), entry(w.ov_b, disabled=True), metadata={"name": CLUSTER, "revision": 5})
    resource = parse_override_yaml(text)
    assert resource.revision == 5
    assert resource.to_dict() == {
        "kind": "cert_authority_override",
        "sub_kind": "windows",
        "version": "v1",
        "metadata": {"name": CLUSTER, "revision": 5},
        "spec": {
            "certificate_overrides": [
                {"certificate": w.ov_a.pem},
                {"certificate": w.ov_b.pem, "disabled": True},
            ]
        },
        "status": {},
    }
    dumped = resource.to_yaml()
    assert "- certificate: |-\n      -----BEGIN CERTIFICATE-----\n" in dumped
    assert parse_override_yaml(dumped) == resource
    assert parse_override_yaml(dumped).revision == 5
    assert parse_override_yaml(dumped).to_yaml() == dumped


def test_empty_override_is_spec_braces() -> None:
    resource = parse_override_yaml(doc())
    assert resource == CertAuthorityOverride(CLUSTER, "windows")
    assert "spec: {}\n" in resource.to_yaml()
    assert resource.to_dict()["spec"] == {}


def test_json_form_stored_in_etcd_has_no_revision() -> None:
    w = world()
    resource = parse_override_yaml(
        doc(entry(w.ov_a, chain=[c.pem for c in w.chain]), {"public_key": w.ca_c.key_hash, "disabled": True})
    )
    resource = replace(resource, revision=9)
    raw = resource.to_json()
    assert "revision" not in json.loads(raw)["metadata"]
    again = CertAuthorityOverride.from_json(raw, 12)
    assert again == resource
    assert again.revision == 12
    assert parse_override_yaml(raw) == resource  # the stored JSON is valid YAML input


def test_proto_round_trip() -> None:
    w = world()
    resource = replace(
        parse_override_yaml(doc(entry(w.ov_a, chain=[w.chain[0].pem]), entry(w.ov_b, disabled=True))),
        revision=4,
    )
    msg = resource.to_proto()
    assert isinstance(msg, pb.CertAuthorityOverride)
    assert (msg.cluster_name, msg.type, msg.revision) == (CLUSTER, "windows", 4)
    again = CertAuthorityOverride.from_proto(pb.CertAuthorityOverride.FromString(msg.SerializeToString()))
    assert again == resource
    assert again.revision == 4


def test_pem_whitespace_is_normalised() -> None:
    w = world()
    resource = parse_override_yaml(
        doc({"certificate": f"\n  {w.ov_a.pem}\n\n", "public_key": f" {w.ca_a.key_hash} "})
    )
    assert resource.certificate_overrides[0] == CertificateOverride(w.ov_a.pem, w.ca_a.key_hash)


def test_sub_kind_alias_is_normalised() -> None:
    assert parse_override_yaml(doc(sub_kind="db-client")).ca_type == "db_client"


def test_entry_helpers_are_immutable() -> None:
    w = world()
    a, b = CertificateOverride(w.ov_a.pem), CertificateOverride(public_key=w.ca_b.key_hash, disabled=True)
    empty = CertAuthorityOverride(CLUSTER, "windows")
    both = empty.with_entry(a).with_entry(b)
    assert empty.certificate_overrides == ()
    assert both.entry(w.ca_a.key_hash) == (0, a)
    assert both.entry(w.ca_b.key_hash.upper()) == (1, b)
    assert both.entry(w.ca_c.key_hash) is None
    enabled_b = replace(b, disabled=False, certificate=w.ov_b.pem)
    assert both.replacing(1, enabled_b).certificate_overrides == (a, enabled_b)
    assert both.without(0).certificate_overrides == (b,)
    assert both.certificate_overrides == (a, b)


def test_key_hash_is_the_public_key_or_the_certificates() -> None:
    w = world()
    assert CertificateOverride(w.ov_a.pem).key_hash == w.ca_a.key_hash
    assert CertificateOverride(public_key="ab" * 32).key_hash == "ab" * 32
    assert CertificateOverride(GARBAGE_PEM).key_hash == ""
    assert CertificateOverride(public_key="ab" * 32).to_dict() == {"public_key": "ab" * 32}
