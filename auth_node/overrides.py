"""Writes of the `cert_authority_override` resource: whole-resource and per-node entry edits (SPEC §7).

Every write is read → validate → modify → compare-and-swap; entry edits retry on conflict with the
current value from the Txn's failure branch. A rejected write changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace

from auth_node.ca_keys import load_cert_authority
from auth_node.cluster_view import ClusterView
from auth_node.config import NodeConfig
from auth_node.registry import node_names
from cluster.ca_override import MAX_RESOURCE_BYTES, CertAuthorityOverride, CertificateOverride
from cluster.errors import AlreadyExistsError, ConflictError, NotFoundError, ValidationError
from cluster.etcd_keys import override_key, override_prefix
from cluster.override_validation import OverrideContext, check_override
from cluster.store import DELETE, EtcdStore, Versioned


@dataclass(frozen=True)
class WriteResult:
    revision: int
    attempts: int
    changed: bool
    public_key: str = ""


def _decode(found: Versioned | None) -> CertAuthorityOverride | None:
    return None if found is None else CertAuthorityOverride.from_json(found.value, found.mod_revision)


class Overrides:
    """The override resources of one cluster, as seen and written by one node."""

    def __init__(self, store: EtcdStore, node: NodeConfig, view: ClusterView) -> None:
        self.store = store
        self.node = node
        self.view = view

    async def get(self, ca_type: str) -> CertAuthorityOverride:
        found = _decode(await self.store.get(override_key(self.node.cluster_name, ca_type)))
        if found is None:
            raise NotFoundError(f"ca_overrides/{ca_type} not found in cluster {self.node.cluster_name}")
        return found

    async def list(self) -> list[CertAuthorityOverride]:
        found = await self.store.get_prefix(override_prefix(self.node.cluster_name))
        return [o for _, v in found if (o := _decode(v)) is not None]

    async def _context(self, ca_type: str, force: bool) -> OverrideContext:
        """What a write is checked against: the CA and node names from the live view when it is
        current, else read from etcd."""
        if self.view.ready.is_set():
            ca, names = self.view.cert_authorities.get(ca_type), dict(self.view.node_names)
        else:
            ca = await load_cert_authority(self.store, self.node.cluster_name, ca_type)
            names = await node_names(self.store, self.node.cluster_name)
        return OverrideContext(
            cluster_name=self.node.cluster_name,
            cert_authority=ca,
            host_id=self.node.host_id,
            node_names=names,
            force=force,
        )

    async def create(self, resource: CertAuthorityOverride, force: bool) -> WriteResult:
        """Create; an existing resource is an error (use upsert or update)."""
        key = override_key(self.node.cluster_name, resource.ca_type)
        existing = await self.store.get(key)
        if existing is None:
            ctx = await self._context(resource.ca_type, force)
            checked = self._encoded(self._checked(resource, None, ctx), 1)
            result = await self.store.compare_and_swap(key, 0, checked)
            if result.succeeded:
                return WriteResult(result.revision, 1, True)
            existing = result.current
        revision = existing.mod_revision if existing else 0
        raise AlreadyExistsError(
            f"ca_overrides/{resource.ca_type} already exists (revision {revision}): "
            f"use `authctl create -f` to replace it or `authctl edit ca_overrides/{resource.ca_type}`"
        )

    async def upsert(self, resource: CertAuthorityOverride, force: bool) -> WriteResult:
        """Create or replace, validated against whatever is stored at the moment of the swap."""
        ctx = await self._context(resource.ca_type, force)
        return await self._update(resource.ca_type, lambda previous: self._checked(resource, previous, ctx))

    async def update(self, resource: CertAuthorityOverride, force: bool) -> WriteResult:
        """Replace only if the stored revision is still `resource.revision` (the edit flow)."""
        ctx = await self._context(resource.ca_type, force)
        key = override_key(self.node.cluster_name, resource.ca_type)
        current = _decode(await self.store.get(key))
        if current is None:
            raise NotFoundError(f"ca_overrides/{resource.ca_type} no longer exists: create it again")
        if current.revision != resource.revision:
            raise _stale(resource, current.revision)
        result = await self.store.compare_and_swap(
            key, resource.revision, self._encoded(self._checked(resource, current, ctx), 1)
        )
        if not result.succeeded:
            raise _stale(resource, result.current.mod_revision if result.current else 0)
        return WriteResult(result.revision, 1, True)

    async def delete(self, ca_type: str, force: bool) -> WriteResult:
        """Remove the resource; refused while it holds an enabled override of an active key."""
        ctx = await self._context(ca_type, force)

        def remove(current: Versioned | None) -> bytes:
            resource = _decode(current)
            if resource is None:
                raise NotFoundError(f"ca_overrides/{ca_type} not found in cluster {self.node.cluster_name}")
            check_override(replace(resource, certificate_overrides=()), resource, ctx)
            return DELETE

        result = await self.store.update(override_key(self.node.cluster_name, ca_type), remove)
        return WriteResult(result.revision, result.attempts, result.changed)

    async def create_entry(self, ca_type: str, entry: CertificateOverride, force: bool) -> WriteResult:
        """Append this node's entry; an identical entry already present is a no-op success."""
        ctx = await self._context(ca_type, force)
        entry = replace(entry, public_key=entry.key_hash)

        def append(previous: CertAuthorityOverride | None) -> CertAuthorityOverride | None:
            base = previous or CertAuthorityOverride(self.node.cluster_name, ca_type)
            found = base.entry(entry.key_hash)
            if found is not None and found[1] == entry:
                return None
            if found is not None:
                raise ValidationError(
                    [
                        f"spec.certificate_overrides[{found[0]}]: an entry for public key {entry.key_hash} "
                        "exists already: change it with `authctl auth update-override`"
                    ]
                )
            return self._checked(base.with_entry(entry), previous, ctx)

        return replace(await self._update(ca_type, append), public_key=entry.key_hash)

    async def update_entry(
        self,
        ca_type: str,
        public_key: str,
        change: Callable[[CertificateOverride], CertificateOverride],
        force: bool,
    ) -> WriteResult:
        ctx = await self._context(ca_type, force)

        def modify(previous: CertAuthorityOverride | None) -> CertAuthorityOverride | None:
            index, entry = self._find(previous, ca_type, public_key)
            updated = change(entry)
            if updated == entry:
                return None
            assert previous is not None
            return self._checked(previous.replacing(index, updated), previous, ctx)

        return replace(await self._update(ca_type, modify), public_key=public_key)

    async def delete_entry(self, ca_type: str, public_key: str, force: bool) -> WriteResult:
        ctx = await self._context(ca_type, force)

        def remove(previous: CertAuthorityOverride | None) -> CertAuthorityOverride | None:
            index, _ = self._find(previous, ca_type, public_key)
            assert previous is not None
            return self._checked(previous.without(index), previous, ctx)

        return replace(await self._update(ca_type, remove), public_key=public_key)

    def _find(
        self, resource: CertAuthorityOverride | None, ca_type: str, public_key: str
    ) -> tuple[int, CertificateOverride]:
        found = None if resource is None else resource.entry(public_key)
        if found is None:
            raise NotFoundError(f"ca_overrides/{ca_type} has no entry for public key {public_key}")
        return found

    @staticmethod
    def _checked(
        new: CertAuthorityOverride, previous: CertAuthorityOverride | None, ctx: OverrideContext
    ) -> CertAuthorityOverride:
        """`new` once it passes every rule, each entry's public_key filled in from its certificate."""
        check_override(new, previous, ctx)
        entries = tuple(
            e if e.public_key == e.key_hash else replace(e, public_key=e.key_hash)
            for e in new.certificate_overrides
        )
        return replace(new, certificate_overrides=entries)

    def _encoded(self, resource: CertAuthorityOverride, attempts: int) -> bytes:
        """The stored form of a checked `resource`, with status.last_write: which node wrote it, when,
        and the attempt that landed; refused past the size limit."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        record = {"node": self.node.name, "host_id": self.node.host_id, "attempts": attempts, "time": now}
        data = replace(resource, last_write=record).to_json()
        if len(data) > MAX_RESOURCE_BYTES:
            raise ValidationError([f"resource: larger than 1 MiB once stored ({len(data)} bytes)"])
        return data

    def _decoded(self, ca_type: str, found: Versioned | None) -> CertAuthorityOverride | None:
        """`found` as a resource; the view's copy when it is the same revision (no second decode)."""
        held = self.view.stored_overrides.get(ca_type)
        if found is not None and held is not None and held.mod_revision == found.mod_revision:
            return self.view.override(ca_type)
        return _decode(found)

    async def _update(
        self,
        ca_type: str,
        change: Callable[[CertAuthorityOverride | None], CertAuthorityOverride | None],
    ) -> WriteResult:
        """The compare-and-swap loop: `change` maps the current resource to the new one (None = no-op)."""

        attempts = 0

        def encode(current: Versioned | None) -> bytes | None:
            nonlocal attempts
            attempts += 1
            new = change(self._decoded(ca_type, current))
            return None if new is None else self._encoded(new, attempts)

        known = (self.view.stored_overrides.get(ca_type),) if self.view.ready.is_set() else None
        result = await self.store.update(override_key(self.node.cluster_name, ca_type), encode, known=known)
        return WriteResult(result.revision, result.attempts, result.changed)


def _stale(resource: CertAuthorityOverride, stored: int) -> ConflictError:
    return ConflictError(
        f"revision mismatch: ca_overrides/{resource.ca_type} is at revision {stored}, your copy is from "
        f"revision {resource.revision}: it changed meanwhile, work from the latest state "
        f"(`authctl get ca_overrides/{resource.ca_type}`)",
        expected_revision=resource.revision,
        actual_revision=stored,
    )
