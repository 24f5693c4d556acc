"""Phased, override-aware rotation of a CA across the nodes' tokens (issue 14; RFD 0237 "rotation").

A phase change is one compare-and-swap of the `cert_authority` resource (its `rotation` block), made
by the node an admin asks. Each node then does its own part from its watch of the CA, in its own token,
and records it done in the block (another compare-and-swap):
- init: make a new key, add it as an additional trusted key;
- update_clients / update_servers: the phase write already made the new keys the signing keys: the
  node acknowledges it;
- standby: the phase write removed the old keys from the CA; the node destroys its old key objects and
  removes the override entries of keys no longer in the CA;
- rollback: the phase write restored the old keys; the node destroys its new key objects and removes
  the override entries of keys no longer in the CA.
A node that restarts finds its part undone in the stored block and does it then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import replace

from authsim.auth_node.ca_keys import adopt_rotation_key, forget_rotation_key, rotation_key_pair
from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.auth_node.overrides import Overrides
from authsim.cluster.errors import AuthSimError, NotFoundError, ValidationError
from authsim.cluster.resources.cert_authority import (
    ROTATING_PHASES,
    ROTATION_PHASES,
    CAKeyPair,
    CertAuthority,
    NodeRotation,
    Rotation,
    RotationKey,
)
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.stored import read_cert_authority, read_override
from authsim.cluster.store import EtcdStore, UpdateResult, Versioned
from authsim.cluster.store.keys import cert_authority_key, override_key
from authsim.hsm import KeyStore

log = logging.getLogger(__name__)
RETRY_DELAY = 1.0  # seconds before a node looks again at a part that failed (or at no change)

# phase -> the phases it may follow
PREVIOUS: dict[str, tuple[str, ...]] = {
    "init": ("standby", "rollback"),
    "update_clients": ("init",),
    "update_servers": ("update_clients",),
    "standby": ("update_servers",),
    "rollback": ROTATING_PHASES,
}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _named(host_id: str, names: dict[str, str]) -> str:
    return f"node {names[host_id]}" if host_id in names else f"host {host_id}"


# --- the phase change, made by the node an admin asks ---------------------------------------------------


async def request_phase(
    store: EtcdStore, cluster_name: str, ca_type: str, phase: str, names: dict[str, str]
) -> UpdateResult:
    """Move the rotation of `ca_type` to `phase` in one compare-and-swap of the CA, guarded by the
    override resource (the gating reads it); asking for the current phase again changes nothing."""
    if phase not in ROTATION_PHASES:
        raise ValidationError([f"phase: must be one of {', '.join(ROTATION_PHASES)}, got {phase!r}"])

    def transition(current: Versioned | None, override: Versioned | None) -> bytes | None:
        if current is None:
            raise NotFoundError(f"cert_authority {ca_type} of cluster {cluster_name} not found")
        ca = read_cert_authority(current.value, current.mod_revision, cluster_name, ca_type).require()
        if ca.rotation.phase == phase:
            return None
        if ca.rotation.phase not in PREVIOUS[phase]:
            allowed = " or ".join(PREVIOUS[phase])
            raise AuthSimError(
                f"rotation of {ca_type}: phase {phase} follows {allowed}, the CA is in {ca.rotation.phase}"
            )
        return _next(ca, phase, override, names).to_json()

    return await store.update_guarded(
        cert_authority_key(cluster_name, ca_type), override_key(cluster_name, ca_type), transition
    )


def _next(ca: CertAuthority, phase: str, override: Versioned | None, names: dict[str, str]) -> CertAuthority:
    rotation = ca.rotation
    if phase == "init":
        _require_done(ca, "the previous rotation's", names)
        return _init(ca)
    if phase == "rollback":
        return _rollback(ca)
    if phase == "update_clients":
        _require_done(ca, "its part of init (a new key)", names)
        _check_overrides(ca, override, names)
        new = _new_keys(ca)
        old = tuple(p for _, p in ca.all_keys() if p not in new)
        return replace(
            ca, active_keys=new, additional_trusted_keys=old, rotation=replace(rotation, phase=phase)
        )
    if phase == "update_servers":
        return replace(ca, rotation=replace(rotation, phase=phase))
    # standby: the old keys leave the CA; each node then destroys its own and prunes the override
    leaving = {k.public_key_hash for part in rotation.nodes.values() for k in part.old}
    kept = tuple(p for p in ca.additional_trusted_keys if p.public_key_hash not in leaving)
    return replace(ca, additional_trusted_keys=kept, rotation=replace(rotation, phase=phase))


def _require_done(ca: CertAuthority, what: str, names: dict[str, str]) -> None:
    pending = ca.rotation.pending()
    if pending:
        waiting = ", ".join(_named(h, names) for h in pending)
        raise AuthSimError(
            f"rotation of {ca.ca_type}: {waiting} has not finished {what} {ca.rotation.phase} yet "
            f"(a stopped node finishes it when it starts again; `authctl auth rotate --type {ca.ca_type} "
            f"--phase {ca.rotation.phase}` waits for it)"
        )


def _init(ca: CertAuthority) -> CertAuthority:
    nodes: dict[str, NodeRotation] = {}
    for _, pair in ca.all_keys():
        part = nodes.get(pair.key.host_id, NodeRotation())
        nodes[pair.key.host_id] = replace(part, old=(*part.old, RotationKey.of(pair)))
    old_active = tuple(p.public_key_hash for p in ca.active_keys)
    return replace(ca, rotation=Rotation("init", _now(), old_active, nodes))


def _new_keys(ca: CertAuthority) -> tuple[CAKeyPair, ...]:
    new = {part.new.public_key_hash for part in ca.rotation.nodes.values() if part.new is not None}
    return tuple(p for _, p in ca.all_keys() if p.public_key_hash in new)


def _rollback(ca: CertAuthority) -> CertAuthority:
    """The keys from before the rotation, in their roles then; the new keys leave the CA."""
    old = {k.public_key_hash for part in ca.rotation.nodes.values() for k in part.old}
    kept = [p for _, p in ca.all_keys() if p.public_key_hash in old]
    active = tuple(p for p in kept if p.public_key_hash in ca.rotation.old_active)
    additional = tuple(p for p in kept if p.public_key_hash not in ca.rotation.old_active)
    return replace(
        ca,
        active_keys=active,
        additional_trusted_keys=additional,
        rotation=replace(ca.rotation, phase="rollback"),
    )


def _check_overrides(ca: CertAuthority, found: Versioned | None, names: dict[str, str]) -> None:
    """RFD 0237's gating: with an enabled override, every new key needs an entry (enabled, or disabled
    to mark it not overridden) before clients move to the new keys."""
    if found is None:
        return
    stored = read_override(found.value, found.mod_revision, ca.cluster_name, ca.ca_type)
    if not stored.valid:
        raise stored.error()
    override = stored.resource
    if not any(not e.disabled for e in override.certificate_overrides):
        return
    missing = [
        (host, part.new.public_key_hash)
        for host, part in sorted(ca.rotation.nodes.items())
        if part.new is not None and override.entry(part.new.public_key_hash) is None
    ]
    if not missing:
        return
    commands = "; ".join(
        f"key {key} of {_named(host, names)}: `authctl --node {names.get(host, 'NODE')} auth "
        f"create-override-csr --type {ca.ca_type} --public-key {key}`"
        for host, key in missing
    )
    raise AuthSimError(
        f"rotation of {ca.ca_type}: update_clients refused: ca_overrides/{ca.ca_type} has an enabled "
        f"override and {len(missing)} new key(s) have no entry (add one per key, enabled, or disabled to "
        f"leave the key not overridden): {commands}"
    )


# --- each node's part, from its watch of the CA ----------------------------------------------------------


class RotationParts:
    """What one node does in its own token for each phase, resumed from the stored block."""

    def __init__(
        self, node: NodeConfig, store: EtcdStore, keystore: KeyStore, view: ClusterView, overrides: Overrides
    ) -> None:
        self.node = node
        self.store = store
        self.keystore = keystore
        self.view = view
        self.overrides = overrides

    async def run(self) -> None:
        """Forever: do every part of this node that the view shows undone, then wait for a change."""
        while True:
            await self.view.ready.wait()
            seen = self.view.revision
            for ca in list(self.view.cert_authorities.values()):
                part = ca.rotation.nodes.get(self.node.host_id)
                if part is None or part.done == ca.rotation.phase:
                    continue
                try:
                    await self.do_part(ca, part)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # a token or etcd failure: tried again on the next round
                    log.warning("rotation of %s, phase %s: %s", ca.ca_type, ca.rotation.phase, e)
            await self.view.next_change(seen, RETRY_DELAY)

    async def do_part(self, ca: CertAuthority, part: NodeRotation) -> None:
        phase = ca.rotation.phase
        new_pair = None
        if phase == "init":
            new_pair = await asyncio.to_thread(rotation_key_pair, self.keystore, self.node, ca.ca_type)
        elif phase == "standby":
            await self._destroy(ca, part.old)
            await self.overrides.prune_entries(ca.ca_type)
            await asyncio.to_thread(adopt_rotation_key, self.node, ca.ca_type)
        elif phase == "rollback":
            await self._destroy(ca, () if part.new is None else (part.new,))
            await asyncio.to_thread(forget_rotation_key, self.keystore, self.node, ca.ca_type, ca)
            await self.overrides.prune_entries(ca.ca_type)
        result = await self._record_done(ca.ca_type, phase, new_pair)
        log.info("rotation of %s: own part of %s done (revision %d)", ca.ca_type, phase, result.revision)

    async def _destroy(self, ca: CertAuthority, keys: tuple[RotationKey, ...]) -> None:
        """Destroy these token objects of this node; never a key the CA still holds."""
        in_ca = {p.public_key_hash for _, p in ca.all_keys()}
        for key in keys:
            ref = KeyRef(self.node.host_id, key.key_id)
            if key.public_key_hash in in_ca or not await asyncio.to_thread(self.keystore.holds, ref):
                continue
            await asyncio.to_thread(self.keystore.delete_key, ref)
            log.info(
                "rotation of %s: destroyed key %s in token %s",
                ca.ca_type,
                key.key_id,
                self.keystore.token_label,
            )

    async def _record_done(self, ca_type: str, phase: str, new_pair: CAKeyPair | None) -> UpdateResult:
        """Mark this node's part of `phase` done (at init: with its new key, added as additional)."""
        cluster, host = self.node.cluster_name, self.node.host_id

        def done(current: Versioned | None) -> bytes | None:
            if current is None:
                raise NotFoundError(f"cert_authority {ca_type} of cluster {cluster} not found")
            ca = read_cert_authority(current.value, current.mod_revision, cluster, ca_type).require()
            part = ca.rotation.nodes.get(host)
            if ca.rotation.phase != phase or part is None or part.done == phase:
                return None  # the phase moved on meanwhile: the next round does that part
            if new_pair is not None:
                if all(p.public_key_hash != new_pair.public_key_hash for _, p in ca.all_keys()):
                    ca = ca.with_additional_key(new_pair)
                part = replace(part, new=RotationKey.of(new_pair))
            nodes = {**ca.rotation.nodes, host: replace(part, done=phase)}
            return replace(ca, rotation=replace(ca.rotation, nodes=nodes)).to_json()

        return await self.store.update(cert_authority_key(cluster, ca_type), done)
