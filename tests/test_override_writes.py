"""Bad writes through real nodes: each gets its precise message and leaves the stored resource as it was."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.resources.yaml_codec import dump_yaml

Doc = dict[str, Any]


@dataclass
class World:
    """A 3-node cluster whose windows override holds one enabled entry per node."""

    cluster: LocalCluster
    ca: ExternalCA
    tmp: Path
    active: str  # node holding the active windows key
    other: str  # a node holding an additional key
    certs: dict[str, dict[str, str]]  # node -> variant -> PEM
    hashes: dict[str, str]  # node -> public key hash
    baseline: Doc

    def pem(self, cert: x509.Certificate) -> str:
        return cert.public_bytes(Encoding.PEM).decode().strip()

    def index(self, node: str) -> int:
        keys = [e["public_key"] for e in self.baseline["spec"]["certificate_overrides"]]
        return keys.index(self.hashes[node])

    def stored(self) -> Doc:
        data: Doc = json.loads(self.cluster.authctl("get", "ca_overrides/windows", "--format", "json").stdout)
        return data


def _csr(cluster: LocalCluster, node: str, out: Path, subject: str = "") -> bytes:
    args = ["auth", "create-override-csr", "--type=windows", "--local-only", "--out", f"{out}/"]
    result = cluster.authctl(*args, *(["--subject", subject] if subject else []), node=node)
    assert result.exit_code == 0, result.stderr
    (path,) = out.glob("*.pem")
    return path.read_bytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("writes")
    ca = init(tmp / "extca")
    with local_cluster(tmp / "c", nodes=3) as cluster:
        ca_doc = json.loads(cluster.authctl("get", "cas/windows", "--format", "json").stdout)
        active_host = ca_doc["spec"]["active_keys"]["tls"][0]["key"]["host_id"]
        active = next(n for n in cluster.node_names if cluster.host_id(n) == active_host)
        other = next(n for n in cluster.node_names if n != active)
        certs: dict[str, dict[str, str]] = {}
        hashes: dict[str, str] = {}
        for node in cluster.node_names:
            csr = _csr(cluster, node, tmp / "csr" / node)
            variants = {"good": ca.sign_csr(csr)}
            for defect in ("not-ca", "no-cert-sign", "no-crl-sign", "wrong-cluster", "outlive", "expired"):
                variants[defect] = ca.sign_csr(csr, defects=frozenset({defect}))
            oid_csr = _csr(cluster, node, tmp / "csr-oid" / node, "CN=My Windows CA,O=Example Corp")
            variants["oid-wrong-cluster"] = ca.sign_csr(oid_csr, defects=frozenset({"wrong-cluster"}))
            certs[node] = {k: v.public_bytes(Encoding.PEM).decode().strip() for k, v in variants.items()}
            good = tmp / f"{node}.pem"
            good.write_text(certs[node]["good"])
            added = cluster.authctl(
                "auth", "create-override", "--type=windows", str(good), str(ca.chain_path), node=node
            )
            assert added.exit_code == 0, added.stderr
            hashes[node] = cluster.authctl("auth", "pub-key-hash", "--cert", str(good)).stdout.strip()
        baseline = json.loads(cluster.authctl("get", "ca_overrides/windows", "--format", "json").stdout)
        yield World(cluster, ca, tmp, active, other, certs, hashes, baseline)


def _software_cert(world: World, subject: x509.Name) -> str:
    """An externally signed CA certificate for a key that is in no node's token."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return world.pem(world.ca.sign_csr(csr.public_bytes(Encoding.PEM)))


def _entry_of(node: str, world: World, doc: Doc) -> Doc:
    entry: Doc = doc["spec"]["certificate_overrides"][world.index(node)]
    return entry


def _with(change: Callable[[World, Doc], object]) -> Callable[[World], str]:
    def build(world: World) -> str:
        doc = copy.deepcopy(world.baseline)
        change(world, doc)
        return dump_yaml(doc)

    return build


def _set_cert(variant: str) -> Callable[[World], str]:
    return _with(lambda w, d: _entry_of(w.active, w, d).update(certificate=w.certs[w.active][variant]))


def _entries(w: World, d: Doc) -> list[Doc]:
    entries: list[Doc] = d["spec"]["certificate_overrides"]
    return entries


BILLION_LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

# (name, builder of the YAML text, expected message)
WHOLE_RESOURCE_CASES: list[tuple[str, Callable[[World], str], str]] = [
    ("malformed yaml", lambda w: "kind: [unclosed\n", "resource: malformed YAML"),
    ("alias bomb", lambda w: BILLION_LAUGHS, "resource: YAML aliases expand to more than"),
    (
        "depth bomb",
        lambda w: "a: " + "[" * 40 + "]" * 40 + "\n",
        "resource: YAML nested deeper than 32 levels",
    ),
    ("oversize", lambda w: "kind: x\n#" + "x" * (1 << 20) + "\n", "resource: larger than 1 MiB"),
    ("not a mapping", lambda w: "- 1\n- 2\n", "resource: must be a mapping"),
    (
        "wrong kind",
        _with(lambda w, d: d.update(kind="cert_authority")),
        "kind: must be cert_authority_override",
    ),
    ("wrong version", _with(lambda w, d: d.update(version="v2")), "version: must be v1, got 'v2'"),
    ("wrong sub_kind", _with(lambda w, d: d.update(sub_kind="linux")), "sub_kind: unknown CA type 'linux'"),
    (
        "wrong name",
        _with(lambda w, d: d["metadata"].update(name="other")),
        "metadata.name: must be the cluster name 'mycluster', got 'other'",
    ),
    ("spec a list", _with(lambda w, d: d.update(spec=[])), "spec: must be a mapping"),
    (
        "unknown field",
        _with(lambda w, d: _entries(w, d)[0].update(foo=1)),
        "spec.certificate_overrides[0].foo: unknown field",
    ),
    (
        "disabled not bool",
        _with(lambda w, d: _entries(w, d)[0].update(disabled="maybe")),
        "spec.certificate_overrides[0].disabled: must be true or false",
    ),
    (
        "two PEMs",
        _with(
            lambda w, d: _entry_of(w.active, w, d).update(
                certificate=w.certs[w.active]["good"] + "\n" + w.certs[w.other]["good"]
            )
        ),
        "contains 2 PEM blocks",
    ),
    (
        "trailing junk",
        _with(
            lambda w, d: _entry_of(w.active, w, d).update(certificate=w.certs[w.active]["good"] + "\njunk")
        ),
        "trailing data after the PEM block",
    ),
    (
        "garbage PEM",
        _with(
            lambda w, d: _entry_of(w.active, w, d).update(
                certificate="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
            )
        ),
        "not a valid X.509 certificate",
    ),
    ("not a CA", _set_cert("not-ca"), "certificate: BasicConstraints CA is false: not a CA certificate"),
    ("no keyCertSign", _set_cert("no-cert-sign"), "certificate: missing KeyUsage keyCertSign"),
    ("no cRLSign", _set_cert("no-crl-sign"), "certificate: missing KeyUsage cRLSign"),
    (
        "first O another cluster",
        _set_cert("wrong-cluster"),
        "certificate: subject's first O is 'wrong-cluster', not the cluster name 'mycluster'",
    ),
    (
        "OID another cluster",
        _set_cert("oid-wrong-cluster"),
        "certificate: subject OID 1.3.9999.4.1 is 'wrong-cluster', not the cluster name 'mycluster'",
    ),
    (
        "no cluster name",
        _with(
            lambda w, d: _entries(w, d).append(
                {
                    "certificate": _software_cert(
                        w, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no org")])
                    )
                }
            )
        ),
        "certificate: subject has no O or OID 1.3.9999.4.1 naming the cluster 'mycluster'",
    ),
    ("outlives its CA cert", _set_cert("outlive"), "an override must not outlive the CA certificate"),
    ("expired", _set_cert("expired"), "certificate: expired on"),
    (
        "public_key mismatch",
        _with(lambda w, d: _entry_of(w.active, w, d).update(public_key=w.hashes[w.other])),
        "public_key: does not match the certificate's public key",
    ),
    (
        "bad hex",
        _with(lambda w, d: _entry_of(w.active, w, d).update(public_key="xyz")),
        "public_key: must be 64 lower-case hex characters",
    ),
    (
        "enabled without certificate",
        _with(lambda w, d: _entries(w, d).__setitem__(w.index(w.active), {"public_key": w.hashes[w.active]})),
        "certificate: required for an enabled override",
    ),
    (
        "chain without certificate",
        _with(
            lambda w, d: _entries(w, d).__setitem__(
                w.index(w.active),
                {"public_key": w.hashes[w.active], "disabled": True, "chain": [w.pem(w.ca.intermediate)]},
            )
        ),
        "chain: requires a certificate",
    ),
    (
        "duplicate entry",
        _with(lambda w, d: _entries(w, d).append(dict(_entry_of(w.active, w, d)))),
        "duplicate entry for public key",
    ),
    (
        "chain out of order",
        _with(
            lambda w, d: _entry_of(w.active, w, d).update(chain=[w.pem(w.ca.root), w.pem(w.ca.intermediate)])
        ),
        "chain[0]: is not the issuer of the certificate",
    ),
    (
        "chain of 11",
        _with(lambda w, d: _entry_of(w.active, w, d).update(chain=[w.pem(w.ca.intermediate)] * 11)),
        "chain: 11 certificates, at most 10",
    ),
    (
        "unknown key",
        _with(
            lambda w, d: _entries(w, d).append(
                {
                    "certificate": _software_cert(
                        w, x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mycluster")])
                    )
                }
            )
        ),
        "is not a key of the windows CA",
    ),
    (
        "disable active",
        _with(lambda w, d: _entry_of(w.active, w, d).update(disabled=True)),
        "disabling the enabled override of the active key",
    ),
    (
        "remove active",
        _with(lambda w, d: _entries(w, d).pop(w.index(w.active))),
        "removing the enabled override of the active key",
    ),
    (
        "another node's key changed",
        _with(lambda w, d: _entry_of(w.other, w, d).pop("chain")),
        "is held by node",
    ),
    (
        "65 entries",
        _with(lambda w, d: _entries(w, d).extend([{"public_key": "0" * 64, "disabled": True}] * 62)),
        "spec.certificate_overrides: 65 entries, at most 64",
    ),
]


@pytest.mark.parametrize(
    ("name", "build", "expected"), WHOLE_RESOURCE_CASES, ids=[c[0] for c in WHOLE_RESOURCE_CASES]
)
def test_bad_whole_resource_write_changes_nothing(
    world: World, name: str, build: Callable[[World], str], expected: str
) -> None:
    path = world.tmp / f"bad-{name.replace(' ', '-')}.yaml"
    path.write_text(build(world))
    result = world.cluster.authctl("create", "-f", str(path), node=world.active)
    assert result.exit_code == 1, result.stdout
    assert expected in result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert world.stored() == world.baseline


def test_bad_entry_writes_change_nothing(world: World) -> None:
    active_key = world.hashes[world.active]
    other_cert = world.tmp / "other.pem"
    other_cert.write_text(world.certs[world.other]["good"])
    cases: list[tuple[tuple[str, ...], str | None, str]] = [
        (("create", str(world.tmp / f"{world.active}.pem")), None, "resource: must be a mapping"),
        (("rm", "ca_overrides/windows"), None, "removing the enabled override of the active key"),
        (
            ("auth", "delete-override", "--type=windows", "--public-key", active_key),
            world.active,
            "removing the enabled override of the active key",
        ),
        (
            (
                "auth",
                "update-override",
                "--type=windows",
                "--public-key",
                active_key,
                "--set-disabled",
                "true",
            ),
            world.active,
            "disabling the enabled override of the active key",
        ),
        (
            (
                "auth",
                "update-override",
                "--type=windows",
                "--public-key",
                world.hashes[world.other],
                "--clear-chain",
            ),
            world.active,
            f"is held by node {world.other}",
        ),
        (
            ("auth", "create-override", "--type=windows", str(other_cert), "--force"),
            world.active,
            "exists already",
        ),
        (
            ("auth", "delete-override", "--type=windows", "--public-key", "f" * 64),
            world.active,
            "public_key: no key of the windows CA or ca_overrides/windows starts with ffffffff",
        ),
    ]
    for args, node, expected in cases:
        result = world.cluster.authctl(*args, node=node)
        assert result.exit_code == 1, (args, result.stdout)
        assert expected in result.stderr, (args, result.stderr)
        assert world.stored() == world.baseline, args


def test_seed_yaml_create_requires_f_to_replace(world: World) -> None:
    path = world.tmp / "ca_override_windows.yaml"
    path.write_text(yaml.safe_dump(world.baseline))
    result = world.cluster.authctl("create", str(path))
    assert result.exit_code == 1 and "already exists" in result.stderr and "-f" in result.stderr
    assert world.stored() == world.baseline
