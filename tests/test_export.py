"""Effective CAs on a real 3-node cluster: `authctl get cas/TYPE` shows each key's override, and
`authctl auth export` gives exactly what downstream must trust, read back by openssl."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.resources.x509 import display_name
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.keys import override_key


@dataclass
class Setup:
    """windows: node1's key has an enabled override, node2's a disabled one, node3's no entry."""

    cluster: LocalCluster
    ca: ExternalCA
    tmp: Path
    keys: dict[str, str]  # node -> public key hash of its windows key, in the CA's order (active first)
    roles: dict[str, str]  # node -> active or additional
    self_signed: dict[str, bytes]  # node -> DER of its key's self-signed CA certificate
    overrides: dict[str, str]  # node -> PEM of its override certificate (node1, node2)

    def ok(self, *args: str, node: str | None = None) -> str:
        result = self.cluster.authctl(*args, node=node)
        assert result.exit_code == 0, (args, result.stderr)
        return result.stdout


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("export")
    ca = init(tmp / "extca")
    with local_cluster(tmp / "c", nodes=3) as cluster:
        cas = json.loads(cluster.authctl("get", "cas/windows", "--format", "json").stdout)
        pairs = cas["spec"]["active_keys"]["tls"] + cas["spec"]["additional_trusted_keys"]["tls"]
        holder = {cluster.host_id(n): n for n in cluster.node_names}
        keys = {holder[p["key"]["host_id"]]: p["public_key_hash"] for p in pairs}
        roles = {
            n: "active" if i < len(cas["spec"]["active_keys"]["tls"]) else "additional"
            for i, n in enumerate(keys)
        }
        self_signed = {holder[p["key"]["host_id"]]: _der(p["cert"]) for p in pairs}
        certs = cluster.override_certs(ca, "windows")
        overrides = {n: certs[n] for n in ("node1", "node2")}
        setup = Setup(cluster, ca, tmp, keys, roles, self_signed, overrides)
        for node, extra in (("node1", []), ("node2", ["--disabled"])):
            path = tmp / f"override-{node}.pem"
            path.write_text(certs[node] + "\n")
            setup.ok(
                "auth", "create-override", "--type=windows", str(path), str(ca.chain_path), *extra, node=node
            )
        yield setup


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)


def openssl_read(path: Path, der: bool) -> tuple[bytes, str]:
    """The certificate in `path` as openssl reads it (its DER) and its public key hash, both computed
    by openssl and hashlib only."""
    inform = ["-inform", "DER"] if der else []
    cert = subprocess.run(
        ["openssl", "x509", "-in", str(path), *inform, "-outform", "DER"], capture_output=True, check=True
    ).stdout
    pubkey = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-pubkey"],
        input=cert,
        capture_output=True,
        check=True,
    ).stdout
    spki = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"], input=pubkey, capture_output=True, check=True
    ).stdout
    return cert, hashlib.sha256(spki).hexdigest()


def exported(directory: Path, suffix: str) -> dict[str, bytes]:
    """key hash -> DER of each certificate file written with `suffix`, each read by openssl."""
    found = {}
    for path in sorted(directory.glob(f"*{suffix}")):
        if path.name.endswith("-chain.pem"):
            continue
        cert, key_hash = openssl_read(path, der=suffix == ".cer")
        assert path.name == f"windows-{key_hash[:8]}{suffix}"
        found[key_hash] = cert
    return found


@pytest.mark.parametrize("fmt", ["der", "pem"])
def test_export_writes_the_enabled_override_and_self_signed_for_the_others(setup: Setup, fmt: str) -> None:
    """One file per key: node1's enabled override certificate, the self-signed CA certificate for node2
    (override disabled) and node3 (no entry); node1's chain next to it; a certutil line per file."""
    out = setup.tmp / f"export-{fmt}"
    stdout = setup.ok("auth", "export", "--type=windows", "--format", fmt, "--out", f"{out}/")
    suffix = ".cer" if fmt == "der" else ".pem"
    files = exported(out, suffix)
    assert files == {
        setup.keys["node1"]: _der(setup.overrides["node1"]),
        setup.keys["node2"]: setup.self_signed["node2"],
        setup.keys["node3"]: setup.self_signed["node3"],
    }
    chain = out / f"windows-{setup.keys['node1'][:8]}-chain.pem"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"windows-{h[:8]}{suffix}" for h in setup.keys.values()] + [chain.name]
    )
    assert chain.read_bytes() == setup.ca.chain_pem
    pem_file = setup.tmp / f"exported-override-{fmt}.pem"
    pem_file.write_bytes(
        x509.load_der_x509_certificate(files[setup.keys["node1"]]).public_bytes(Encoding.PEM)
    )
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(chain), str(pem_file)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    certutil = re.findall(r"^  certutil -dspublish -f (\S+) NTAuthCA$", stdout, re.MULTILINE)
    assert sorted(certutil) == sorted(str(out / f"windows-{h[:8]}{suffix}") for h in setup.keys.values())
    for node, what in (
        ("node1", "override certificate"),
        ("node2", "self-signed CA certificate (override: disabled)"),
        ("node3", "self-signed CA certificate (override: none)"),
    ):
        path = out / f"windows-{setup.keys[node][:8]}{suffix}"
        assert f"{path}: key {setup.keys[node][:16]} ({node}, {setup.roles[node]}): {what}" in stdout
    assert f"chain in {chain}" in stdout


def test_export_to_stdout_is_three_pem_certificates(setup: Setup) -> None:
    certs = x509.load_pem_x509_certificates(setup.ok("auth", "export", "--type=windows").encode())
    trusted = {"node1": _der(setup.overrides["node1"])}
    assert [c.public_bytes(Encoding.DER) for c in certs] == [
        trusted.get(node, setup.self_signed[node]) for node in setup.keys
    ]


def test_export_self_signed_ignores_the_override(setup: Setup) -> None:
    out = setup.tmp / "self-signed"
    setup.ok("auth", "export", "--type=windows", "--self-signed", "--format", "der", "--out", f"{out}/")
    assert exported(out, ".cer") == {setup.keys[n]: setup.self_signed[n] for n in setup.keys}
    assert not list(out.glob("*-chain.pem"))
    certs = x509.load_pem_x509_certificates(
        setup.ok("auth", "export", "--type=windows", "--self-signed").encode()
    )
    assert [c.public_bytes(Encoding.DER) for c in certs] == list(setup.self_signed.values())


def test_export_of_a_type_without_override_resource_and_der_needs_out(setup: Setup) -> None:
    certs = x509.load_pem_x509_certificates(setup.ok("auth", "export", "--type=db_client").encode())
    assert len(certs) == 3
    assert all(c.subject == c.issuer for c in certs)
    refused = setup.cluster.authctl("auth", "export", "--type=windows", "--format", "der")
    assert refused.exit_code != 0 and "--format der writes one file per certificate" in refused.stderr


def test_get_cas_text_shows_each_keys_override_state(setup: Setup) -> None:
    text = setup.ok("get", "cas/windows", "--format", "text")
    states = {"node1": "enabled", "node2": "disabled", "node3": "none"}
    for node, state in states.items():
        row = next(line for line in text.splitlines() if setup.keys[node][:16] in line and node in line)
        assert row.rstrip(" │").endswith(state), row
    override = x509.load_pem_x509_certificate(setup.overrides["node1"].encode())
    row = next(line for line in text.splitlines() if line.startswith("│ " + setup.keys["node1"][:16]))
    assert "enabled" in row and override.not_valid_after_utc.strftime("%Y-%m-%d") in row
    assert display_name(override.subject) in row and "2" in row.split("│")[-2]  # chain: 2 certificates


def test_get_cas_yaml_and_json_carry_each_keys_override_and_certificates(setup: Setup) -> None:
    as_yaml = yaml.safe_load(setup.ok("get", "cas/windows", "--format", "yaml"))
    assert as_yaml == json.loads(setup.ok("get", "cas/windows", "--format", "json"))
    status = as_yaml["status"]
    overrides = json.loads(setup.ok("get", "ca_overrides/windows", "--format", "json"))
    assert status["override_revision"] == overrides["metadata"]["revision"]
    shown: dict[str, dict[str, Any]] = {k["public_key_hash"]: k for k in status["keys"]}
    assert set(shown) == set(setup.keys.values())
    chain = [c.public_bytes(Encoding.PEM).decode().strip() for c in (setup.ca.intermediate, setup.ca.root)]
    for node, state in (("node1", "enabled"), ("node2", "disabled")):
        key = shown[setup.keys[node]]
        cert = x509.load_pem_x509_certificate(setup.overrides[node].encode())
        assert key["node"] == node and key["host_id"] == setup.cluster.host_id(node)
        assert key["override"] == {
            "state": state,
            "subject": display_name(cert.subject),
            "issuer": display_name(setup.ca.intermediate.subject),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "chain_length": 2,
            "certificate": setup.overrides[node],
            "chain": chain,
        }
    assert shown[setup.keys["node3"]]["override"] == {"state": "none"}
    assert {n: shown[setup.keys[n]]["role"] for n in setup.keys} == setup.roles
    self_signed = {
        p["public_key_hash"]: _der(p["cert"])
        for p in as_yaml["spec"]["active_keys"]["tls"] + as_yaml["spec"]["additional_trusted_keys"]["tls"]
    }
    assert self_signed == {setup.keys[n]: setup.self_signed[n] for n in setup.keys}


def test_a_stored_override_that_breaks_a_rule_is_not_exported(setup: Setup) -> None:
    """Issuance under a broken override refuses, so its entries say nothing about downstream trust:
    export refuses naming the rule and the fix, `--self-signed` still exports, `get cas` warns."""
    state = setup.cluster.state
    key = override_key(state.cluster_name, "db_client")
    entry = {"certificate": "garbage", "public_key": "ab" * 32}
    broken = {
        "kind": "cert_authority_override",
        "sub_kind": "db_client",
        "version": "v1",
        "metadata": {"name": state.cluster_name},
        "spec": {"certificate_overrides": [entry]},
    }

    async def write(value: bytes | None) -> None:
        async with EtcdStore(list(state.etcd.endpoints), tls=state.etcd.tls) as store:
            if value is None:
                await store.delete_prefix(key)
            else:
                await store.update(key, lambda _: value)

    asyncio.run(write(json.dumps(broken).encode()))
    try:
        refused = setup.cluster.authctl("auth", "export", "--type=db_client")
        assert refused.exit_code == 1 and refused.stdout == ""
        assert refused.stderr.startswith("error: stored ca_overrides/db_client (revision ")
        assert "spec.certificate_overrides[0].certificate" in refused.stderr
        assert "authctl rm ca_overrides/db_client" in refused.stderr
        certs = x509.load_pem_x509_certificates(
            setup.ok("auth", "export", "--type=db_client", "--self-signed").encode()
        )
        assert len(certs) == 3 and all(c.subject == c.issuer for c in certs)
        shown = setup.cluster.authctl("get", "cas/db_client")
        assert shown.exit_code == 0
        assert shown.stderr.startswith("warning: stored ca_overrides/db_client breaks 1 rule")
    finally:
        asyncio.run(write(None))
