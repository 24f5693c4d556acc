"""Writes of the `cert_authority_override` resource: whole-resource and per-node entry edits (SPEC §7).

Every write is read → validate → modify → compare-and-swap, retried on conflict with the current
values from the Txn's failure branch. A rejected write changes nothing.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.cluster.errors import AlreadyExistsError, ConflictError, NotFoundError, ValidationError
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.override import MAX_RESOURCE_BYTES, CertAuthorityOverride, CertificateOverride
from authsim.cluster.resources.validation import OverrideContext, check_override
from authsim.cluster.store import DELETE, EtcdStore, Versioned
from authsim.cluster.store.addresses import node_names
from authsim.cluster.store.keys import cert_authority_key, override_key, override_prefix


class Removal(enum.Enum):
    REMOVE = "remove"


REMOVE = Removal.REMOVE  # what a change returns to delete the resource
Change = Callable[[CertAuthorityOverride | None, OverrideContext], CertAuthorityOverride | Removal | None]


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

    async def _context(self, force: bool) -> OverrideContext:
        """What a write is checked against, but for the CA, which each attempt reads with the resource:
        node names from the live view when it is current, else from etcd."""
        if self.view.ready.is_set():
            names = dict(self.view.node_names)
        else:
            names = await node_names(self.store, self.node.cluster_name)
        return OverrideContext(
            cluster_name=self.node.cluster_name,
            cert_authority=None,
            host_id=self.node.host_id,
            node_names=names,
            force=force,
        )

    async def create(self, resource: CertAuthorityOverride, force: bool) -> WriteResult:
        """Create; an existing resource is an error (use upsert or update)."""

        def create(previous: CertAuthorityOverride | None, ctx: OverrideContext) -> CertAuthorityOverride:
            if previous is not None:
                raise AlreadyExistsError(
                    f"ca_overrides/{resource.ca_type} already exists (revision {previous.revision}): "
                    f"use `authctl create -f` to replace it or `authctl edit ca_overrides/{resource.ca_type}`"
                )
            return self._checked(resource, None, ctx)

        return await self._update(resource.ca_type, create, force)

    async def upsert(self, resource: CertAuthorityOverride, force: bool) -> WriteResult:
        """Create or replace, validated against whatever is stored at the moment of the swap."""
        return await self._update(
            resource.ca_type, lambda previous, ctx: self._checked(resource, previous, ctx), force
        )

    async def update(self, resource: CertAuthorityOverride, force: bool) -> WriteResult:
        """Replace only if the stored revision is still `resource.revision` (the edit flow)."""

        def update(previous: CertAuthorityOverride | None, ctx: OverrideContext) -> CertAuthorityOverride:
            if previous is None:
                raise NotFoundError(f"ca_overrides/{resource.ca_type} no longer exists: create it again")
            if previous.revision != resource.revision:
                raise _stale(resource, previous.revision)
            return self._checked(resource, previous, ctx)

        return await self._update(resource.ca_type, update, force)

    async def delete(self, ca_type: str, force: bool) -> WriteResult:
        """Remove the resource; refused while it holds an enabled override of an active key."""

        def remove(previous: CertAuthorityOverride | None, ctx: OverrideContext) -> Removal:
            if previous is None:
                raise NotFoundError(f"ca_overrides/{ca_type} not found in cluster {self.node.cluster_name}")
            check_override(replace(previous, certificate_overrides=()), previous, ctx)
            return REMOVE

        return await self._update(ca_type, remove, force)

    async def create_entry(self, ca_type: str, entry: CertificateOverride, force: bool) -> WriteResult:
        """Append this node's entry; an identical entry already present is a no-op success."""
        entry = replace(entry, public_key=entry.key_hash)

        def append(
            previous: CertAuthorityOverride | None, ctx: OverrideContext
        ) -> CertAuthorityOverride | None:
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

        return replace(await self._update(ca_type, append, force), public_key=entry.key_hash)

    async def update_entry(
        self,
        ca_type: str,
        public_key: str,
        change: Callable[[CertificateOverride], CertificateOverride],
        force: bool,
    ) -> WriteResult:
        def modify(
            previous: CertAuthorityOverride | None, ctx: OverrideContext
        ) -> CertAuthorityOverride | None:
            index, entry = self._find(previous, ca_type, public_key)
            updated = change(entry)
            if updated == entry:
                return None
            assert previous is not None
            return self._checked(previous.replacing(index, updated), previous, ctx)

        return replace(await self._update(ca_type, modify, force), public_key=public_key)

    async def delete_entry(self, ca_type: str, public_key: str, force: bool) -> WriteResult:
        def remove(previous: CertAuthorityOverride | None, ctx: OverrideContext) -> CertAuthorityOverride:
            index, _ = self._find(previous, ca_type, public_key)
            assert previous is not None
            return self._checked(previous.without(index), previous, ctx)

        return replace(await self._update(ca_type, remove, force), public_key=public_key)

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

    async def _update(self, ca_type: str, change: Change, force: bool) -> WriteResult:
        """The compare-and-swap loop: `change` maps the stored resource to the new one (None: no-op,
        REMOVE: delete it), checked against the CA as stored at that moment: the Txn compares the CA's
        revision too, so a CA change (a rotation) between the checks and the write sends the write
        round again, never past the checks."""
        base = await self._context(force)
        attempts = 0

        def encode(current: Versioned | None, ca: Versioned | None) -> bytes | None:
            nonlocal attempts
            ctx = replace(base, cert_authority=self._cert_authority(ca_type, ca))
            new = change(self._decoded(ca_type, current), ctx)
            if new is None or new is REMOVE:
                return DELETE if new is REMOVE else None
            attempts += 1  # the Txn this value goes out in
            return self._encoded(new, attempts)

        known = None
        if self.view.ready.is_set():
            known = (self.view.stored_overrides.get(ca_type), self.view.stored_cas.get(ca_type))
        cluster = self.node.cluster_name
        result = await self.store.update_guarded(
            override_key(cluster, ca_type), cert_authority_key(cluster, ca_type), encode, known=known
        )
        return WriteResult(result.revision, result.attempts, result.changed)

    def _cert_authority(self, ca_type: str, found: Versioned | None) -> CertAuthority | None:
        """`found` as a CA; the view's copy when it is the same revision (no second decode)."""
        held = self.view.cert_authorities.get(ca_type)
        if found is not None and held is not None and held.revision == found.mod_revision:
            return held
        return None if found is None else CertAuthority.from_json(found.value, found.mod_revision)


def _stale(resource: CertAuthorityOverride, stored: int) -> ConflictError:
    return ConflictError(
        f"revision mismatch: ca_overrides/{resource.ca_type} is at revision {stored}, your copy is from "
        f"revision {resource.revision}: it changed meanwhile, work from the latest state "
        f"(`authctl get ca_overrides/{resource.ca_type}`)",
        expected_revision=resource.revision,
        actual_revision=stored,
    )
