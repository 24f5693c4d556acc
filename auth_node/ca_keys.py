"""Node start-up: make sure this node holds a key of every CA type (SPEC §5)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.ca_cert import self_signed_ca_cert
from authsim.auth_node.config import NodeConfig
from authsim.cluster.errors import AuthSimError, NotFoundError, StoredDataError
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.resources.cert_authority import CAKeyPair, CertAuthority
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.stored import StoredCertAuthority, read_cert_authority
from authsim.cluster.resources.x509 import public_key_hash
from authsim.cluster.store import DELETE, EtcdStore, UpdateResult, Versioned
from authsim.cluster.store.keys import cert_authority_key
from authsim.hsm import KeyStore

log = logging.getLogger(__name__)


async def read_stored_cert_authority(
    store: EtcdStore, cluster_name: str, ca_type: str
) -> StoredCertAuthority | None:
    """The stored CA of `ca_type` with the rules it breaks; None when absent."""
    found = await store.get(cert_authority_key(cluster_name, ca_type))
    return (
        None if found is None else read_cert_authority(found.value, found.mod_revision, cluster_name, ca_type)
    )


async def load_cert_authority(store: EtcdStore, cluster_name: str, ca_type: str) -> CertAuthority | None:
    """The stored CA of `ca_type` (None when absent); StoredDataError when it breaks a rule."""
    stored = await read_stored_cert_authority(store, cluster_name, ca_type)
    return None if stored is None else stored.require()


async def delete_invalid_cert_authority(store: EtcdStore, cluster_name: str, ca_type: str) -> UpdateResult:
    """Remove the stored CA of `ca_type` when it breaks a rule; a sound CA is never removed."""

    def remove(current: Versioned | None) -> bytes:
        if current is None:
            raise NotFoundError(f"cert_authority {ca_type} of cluster {cluster_name} not found")
        if read_cert_authority(current.value, current.mod_revision, cluster_name, ca_type).problems:
            return DELETE
        raise AuthSimError(
            f"cas/{ca_type} passes every rule: only a stored CA that breaks one is removed "
            "(its keys sign and are trusted downstream)"
        )

    return await store.update(cert_authority_key(cluster_name, ca_type), remove)


async def ensure_ca_keys(store: EtcdStore, keystore: KeyStore, node: NodeConfig) -> None:
    """For each CA type: create the CA with this node's key active, or add the key as additional."""
    for ca_type in CA_TYPES:
        try:
            await _ensure_ca_key(store, keystore, node, ca_type)
        except StoredDataError as e:  # the node serves; issuance under this type refuses with the fix
            log.error("%s", e)


async def _ensure_ca_key(store: EtcdStore, keystore: KeyStore, node: NodeConfig, ca_type: str) -> None:
    ca = await load_cert_authority(store, node.cluster_name, ca_type)
    if ca is not None and ca.keys_of_host(node.host_id):
        return
    pair = await asyncio.to_thread(_own_key_pair, keystore, node, ca_type)

    def add_own_key(current: Versioned | None) -> bytes | None:
        if current is None:
            return CertAuthority(node.cluster_name, ca_type, active_keys=(pair,)).to_json()
        ca = read_cert_authority(current.value, current.mod_revision, node.cluster_name, ca_type).require()
        if ca.keys_of_host(node.host_id):
            return None
        return ca.with_additional_key(pair).to_json()

    result = await store.update(cert_authority_key(node.cluster_name, ca_type), add_own_key)
    log.info(
        "CA %s: own key %s recorded at revision %d after %d attempt(s)",
        ca_type,
        pair.key.key_id,
        result.revision,
        result.attempts,
    )


def _own_key_pair(keystore: KeyStore, node: NodeConfig, ca_type: str) -> CAKeyPair:
    """This node's key for `ca_type`: the one made earlier if the token still holds it, else a new one."""
    return _recorded_key_pair(keystore, node, ca_type)


def rotation_key_pair(keystore: KeyStore, node: NodeConfig, ca_type: str) -> CAKeyPair:
    """This node's new key for a rotation of `ca_type` (made once, reused when the node resumes)."""
    return _recorded_key_pair(keystore, node, _rotation_record(ca_type))


def adopt_rotation_key(node: NodeConfig, ca_type: str) -> None:
    """At standby: the rotation's new key becomes this node's recorded key of `ca_type`."""
    records = _read_records(node.layout.ca_keys)
    if _rotation_record(ca_type) in records:
        records[ca_type] = records.pop(_rotation_record(ca_type))
        _write_records(node.layout.ca_keys, records)


def forget_rotation_key(keystore: KeyStore, node: NodeConfig, ca_type: str, ca: CertAuthority) -> None:
    """At rollback: destroy the rotation's new key if the CA does not hold it, and forget it."""
    records = _read_records(node.layout.ca_keys)
    known = records.pop(_rotation_record(ca_type), None)
    if known is None:
        return
    ref = KeyRef(node.host_id, known["key_id"])
    in_ca = any(p.public_key_hash == known["public_key_hash"] for _, p in ca.all_keys())
    if not in_ca and keystore.holds(ref):
        keystore.delete_key(ref)
    _write_records(node.layout.ca_keys, records)


def _rotation_record(ca_type: str) -> str:
    return f"{ca_type}:rotation"


def _recorded_key_pair(keystore: KeyStore, node: NodeConfig, name: str) -> CAKeyPair:
    """The key recorded under `name` if the token still holds it, else a new one, recorded.

    The pending key is recorded in `ca-keys.json` before it is offered to etcd, so a node that dies
    between key generation and its compare-and-swap reuses the key instead of leaving an orphan.
    """
    record_path = node.layout.ca_keys
    records = _read_records(record_path)
    known = records.get(name)
    if known is not None:
        ref = KeyRef(node.host_id, known["key_id"])
        if keystore.holds(ref):
            return CAKeyPair(known["cert"], ref, known["public_key_hash"])
    ref, public_key = keystore.generate_rsa_key()
    cert = keystore.run(lambda: self_signed_ca_cert(keystore.private_key(ref), node.cluster_name))
    pair = CAKeyPair(cert.public_bytes(Encoding.PEM).decode().strip(), ref, public_key_hash(public_key))
    records[name] = {"key_id": ref.key_id, "cert": pair.cert_pem, "public_key_hash": pair.public_key_hash}
    _write_records(record_path, records)
    return pair


def _write_records(path: Path, records: dict[str, dict[str, str]]) -> None:
    pending = path.with_suffix(".tmp")
    pending.write_text(json.dumps(records, indent=2, sort_keys=True))
    pending.replace(path)  # atomic: a crash never leaves half a record


def _read_records(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    data: dict[str, dict[str, str]] = json.loads(path.read_text())
    return data


async def promote_additional_keys(store: EtcdStore, cluster_name: str, ca_type: str) -> UpdateResult:
    """A minimal rotation: every additional trusted key becomes active, so each node signs with its own.

    Already-trusted keys only: nothing downstream trusts changes, and no key leaves its token.
    """

    def promote(current: Versioned | None) -> bytes | None:
        if current is None:
            raise NotFoundError(f"cert_authority {ca_type} of cluster {cluster_name} not found")
        ca = read_cert_authority(current.value, current.mod_revision, cluster_name, ca_type).require()
        if ca.rotation.state == "in_progress":
            raise AuthSimError(
                f"rotation of {ca_type} is in phase {ca.rotation.phase}: its additional keys are the "
                f"rotation's new keys; continue with `authctl auth rotate --type {ca_type} --phase PHASE`"
            )
        if not ca.additional_trusted_keys:
            return None
        keys = (*ca.active_keys, *ca.additional_trusted_keys)
        return replace(ca, active_keys=keys, additional_trusted_keys=()).to_json()

    return await store.update(cert_authority_key(cluster_name, ca_type), promote)
