"""Tests of hsm/ against real SoftHSM2 tokens; token work runs in one process per node's conf."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from authsim.cluster.errors import ClusterError, KeyAccessError, ValidationError
from authsim.cluster.layout import NodeLayout
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.x509 import public_key_hash
from authsim.hsm import Pkcs11KeyStore, TokenConfig, TokenRSAPrivateKey, provision_token
from tests.certs import openssl_key_hash

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("_token_worker.py")


@dataclass(frozen=True)
class Node:
    """A provisioned node: its token config, host id and name."""

    config: TokenConfig
    host_id: str
    name: str


def provision_node(parent: Path, name: str) -> Node:
    config = provision_token(parent / name, f"authsim-{name}")
    return Node(config, str(uuid.uuid4()), name)


def run_worker(node: Node, action: str, conf: Path | None = None, **fields: Any) -> dict[str, Any]:
    """Run one action of _token_worker.py in a fresh process with the node's (or `conf`'s) SoftHSM conf."""
    request = {
        "node_dir": str(node.config.node_dir),
        "label": node.config.label,
        "host_id": node.host_id,
        "node_name": node.name,
        "action": action,
        **fields,
    }
    env = node.config.process_env()
    env["SOFTHSM2_CONF"] = str(conf or node.config.softhsm_conf)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(WORKER), json.dumps(request)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True, timeout=30)


def token_labels(config: TokenConfig) -> list[str]:
    out = subprocess.run(
        ["softhsm2-util", "--show-slots"],
        env=config.process_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    labels = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Label:")]
    return [label for label in labels if label]  # the free slot has an empty label


@pytest.fixture(scope="module")
def node1(tmp_path_factory: pytest.TempPathFactory) -> Node:
    return provision_node(tmp_path_factory.mktemp("nodes"), "node1")


@pytest.fixture(scope="module")
def key(node1: Node) -> KeyRef:
    """A key generated in node1's token by a process that has exited since."""
    return KeyRef.from_dict(run_worker(node1, "generate")["ref"])


def test_provision_creates_private_files_and_is_idempotent(tmp_path: Path) -> None:
    first = provision_token(tmp_path / "n", "authsim-n")
    second = provision_token(tmp_path / "n", "authsim-n")

    assert first == second
    assert stat.S_IMODE(first.tokens_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.pin_file.stat().st_mode) == 0o600
    so_pin = NodeLayout(first.node_dir).so_pin
    assert stat.S_IMODE(so_pin.stat().st_mode) == 0o600
    assert first.pin() == second.pin() != so_pin.read_text().strip()
    assert f"directories.tokendir = {first.tokens_dir}\n" in first.softhsm_conf.read_text()
    assert token_labels(first) == ["authsim-n"]


def test_provision_without_softhsm2_util_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match="apt-get install softhsm2"):
        provision_token(tmp_path / "n", "authsim-n")


def test_a_node_cannot_see_another_nodes_token(node1: Node, tmp_path: Path) -> None:
    node2 = provision_node(tmp_path, "node2")

    seen_from_node1 = run_worker(node1, "list", label=node2.config.label)
    node2_under_node1_conf = run_worker(node2, "list", conf=node1.config.softhsm_conf)
    own = run_worker(node2, "list")

    assert seen_from_node1 == {
        "error": "KeyAccessError",
        "message": f"node node1: no token labelled authsim-node2 "
        f"(SOFTHSM2_CONF={node1.config.softhsm_conf}, module {node1.config.module_path})",
    }
    assert node2_under_node1_conf["error"] == "KeyAccessError"
    assert "run one process per node" in node2_under_node1_conf["message"]
    assert own == {"keys": [], "holds": None, "public_key_hash": None}


def test_wrong_pin_is_refused_naming_node_and_token(node1: Node) -> None:
    result = run_worker(node1, "list", pin="not-the-pin")

    assert result == {
        "error": "KeyAccessError",
        "message": f"node node1: wrong PIN for token authsim-node1 (pin file {node1.config.pin_file})",
    }


def test_missing_module_is_named() -> None:
    store = Pkcs11KeyStore("/nonexistent/libpkcs11.so", "authsim-x", "1234", "host-x", "x")
    with (
        pytest.raises(KeyAccessError, match=r"PKCS#11 module /nonexistent/libpkcs11\.so does not exist"),
        store,
    ):
        store.connect()


def test_generated_key_stays_in_the_token(node1: Node, key: KeyRef) -> None:
    attrs = run_worker(node1, "inspect", ref=key.to_dict())
    listed = run_worker(node1, "list", ref=key.to_dict())

    assert attrs == {
        "private": {"SENSITIVE": True, "EXTRACTABLE": False, "TOKEN": True, "PRIVATE": True, "SIGN": True},
        "private_label": node1.host_id,
        "public_label": node1.host_id,
        "id_len": 16,
        "public_can_verify": True,
        "private_exponent": "AttributeSensitive",
    }
    assert key.host_id == node1.host_id
    assert listed["holds"] is True
    assert key.to_dict() in listed["keys"]


def test_another_hosts_key_is_refused_naming_both_hosts(node1: Node, key: KeyRef) -> None:
    other_host = str(uuid.uuid4())
    result = run_worker(node1, "use", ref={"host_id": other_host, "key_id": key.key_id})

    assert result["holds"] is False
    for attempt in ("private_key", "sign"):
        assert result[attempt].startswith(f"KeyAccessError: key {key.key_id} belongs to host {other_host}")
        assert f"this node is host {node1.host_id} (node1)" in result[attempt]


def test_a_refusal_carries_the_owning_and_the_asking_host_ids(node1: Node, key: KeyRef) -> None:
    other_host = str(uuid.uuid4())
    result = run_worker(node1, "use", ref={"host_id": other_host, "key_id": key.key_id})

    for attempt in ("private_key", "sign"):
        assert result[f"{attempt}_hosts"] == {"owner": other_host, "asking": node1.host_id}


def test_a_reference_matching_two_token_objects_is_refused_naming_them(tmp_path: Path) -> None:
    node = provision_node(tmp_path, "dup")
    result = run_worker(node, "duplicate")

    expected = (
        r"KeyAccessError: token authsim-dup of node dup holds more than one (private|public) key object "
        rf"with CKA_LABEL={node.host_id} and CKA_ID={'00' * 16}: a key reference must name exactly one key"
    )
    for attempt in ("holds", "private_key", "sign"):
        assert re.fullmatch(expected, result[attempt]), result[attempt]


def test_own_host_key_missing_from_token_is_not_found(node1: Node) -> None:
    missing = KeyRef(node1.host_id, "00" * 16)
    result = run_worker(node1, "use", ref=missing.to_dict())

    assert result["holds"] is False
    for attempt in ("private_key", "sign"):
        assert result[attempt].startswith(f"NotFoundError: key {missing.key_id}")
        assert "token authsim-node1" in result[attempt]


def test_deleted_key_is_gone(node1: Node, key: KeyRef) -> None:
    result = run_worker(node1, "delete")

    assert result["held_before"] is True
    assert result["held_after"] is False
    assert run_worker(node1, "list", ref=key.to_dict())["holds"] is True


def test_signing_from_many_threads_runs_on_the_one_token_thread(node1: Node, key: KeyRef) -> None:
    result = run_worker(node1, "threads", ref=key.to_dict())

    assert result["verified"] == 40
    assert len(result["token_threads"]) == 1
    assert result["token_threads"][0].startswith("token")


def test_ca_certificate_and_csr_signed_in_the_token_pass_openssl(
    node1: Node, key: KeyRef, tmp_path: Path
) -> None:
    result = run_worker(node1, "ca", ref=key.to_dict(), out_dir=str(tmp_path), cluster_name="example.com")
    cert, csr = tmp_path / "cert.pem", tmp_path / "csr.pem"

    assert openssl("verify", "-CAfile", str(cert), str(cert)).stdout.decode().strip() == f"{cert}: OK"
    text = openssl("x509", "-noout", "-text", "-in", str(cert)).stdout.decode()
    assert "Subject: O = example.com, CN = example.com" in text
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE" in text
    assert "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign" in text
    req = openssl("req", "-verify", "-noout", "-in", str(csr))
    assert "verify OK" in (req.stdout + req.stderr).decode()
    assert result["public_key_hash"] == openssl_key_hash(cert)


def test_token_key_refuses_what_the_token_cannot_do() -> None:
    store = Pkcs11KeyStore("/nonexistent/libpkcs11.so", "authsim-x", "1234", "host-x", "x")
    public = rsa.generate_private_key(65537, 2048).public_key()
    token_key = TokenRSAPrivateKey(store, KeyRef("host-x", "ab" * 16), public)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH)
    no_export = serialization.NoEncryption()

    with pytest.raises(ValueError, match="only with PKCS1v15 padding, not EMSA-PSS"):
        token_key.sign(b"x", pss, hashes.SHA256())
    with pytest.raises(ValueError, match="only with SHA256, not sha512"):
        token_key.sign(b"x", padding.PKCS1v15(), hashes.SHA512())
    with pytest.raises(ValueError, match="not Prehashed"):
        token_key.sign(b"x", padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    with pytest.raises(KeyAccessError, match="never leaves the token"):
        token_key.private_numbers()
    with pytest.raises(KeyAccessError, match="never leaves the token"):
        token_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, no_export)
    with pytest.raises(KeyAccessError, match="signing only"):
        token_key.decrypt(b"x", padding.PKCS1v15())
    assert token_key.key_size == 2048
    assert copy.deepcopy(token_key) is token_key
    assert public_key_hash(token_key.public_key()) == public_key_hash(public)
    store.close()


def test_key_ref_round_trips_and_rejects_bad_ids() -> None:
    ref = KeyRef("0b6c5d2e-host", "00ff" * 8)

    assert KeyRef.from_dict(ref.to_dict()) == ref
    with pytest.raises(ValidationError, match="key_id: must be lower-case hex"):
        KeyRef.from_dict({"host_id": "h", "key_id": "00FF"})
    with pytest.raises(ValidationError, match="host_id: must not be empty"):
        KeyRef.from_dict({"key_id": "00"})
