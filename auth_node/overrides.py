"""Writes of the `cert_authority_override` resource: whole-resource and per-node entry edits (SPEC §7).

Every write is read → validate → modify → compare-and-swap, retried on conflict with the current
values from the Txn's failure branch. A rejected write changes nothing. A stored resource that breaks a
rule is never a base for an entry edit; a whole-resource write replaces it, checked as a create.
Each write carries a request id, stored in status.last_write: when etcd's answer to a write is lost,
finding that id stored is how the write knows it landed (else its outcome is reported unknown).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.cluster.errors import (
    AlreadyExistsError,
    AuthSimError,
    ConflictError,
    NotFoundError,
    OutcomeUnknownError,
    ValidationError,
    quoted,
)
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.key_prefix import resolve_key_hash
from authsim.cluster.resources.override import MAX_RESOURCE_BYTES, CertAuthorityOverride, CertificateOverride
from authsim.cluster.resources.stored import StoredOverride, read_cert_authority, read_override
from authsim.cluster.resources.validation import OverrideContext, check_override
from authsim.cluster.store import DELETE, Companion, EtcdStore, UpdateResult, Versioned
from authsim.cluster.store.addresses import node_names
from authsim.cluster.store.keys import (
    cert_authority_key,
    override_key,
    override_prefix,
    override_tickets_prefix,
)
from authsim.cluster.store.queue import Session, WriteQueue, writer_queue


class Removal(enum.Enum):
    REMOVE = "remove"


REMOVE = Removal.REMOVE  # what a change returns to delete the resource
Change = Callable[[StoredOverride | None, OverrideContext], CertAuthorityOverride | Removal | None]
# the CRL resource with a new entry's CRL, to write in the entry's Txn (`CRLs.entry_crl`); None: none
EntryCRL = Callable[[str, CertificateOverride], Awaitable[Companion | None]]
log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def _request_id_or_new(sent: str) -> str:
    """The caller's request id once it passes the rule, or a new one (uuid4 hex) when none was sent."""
    if not sent:
        return uuid.uuid4().hex
    if not _REQUEST_ID.fullmatch(sent):
        raise ValidationError(
            [f"request_id: must be 1 to 64 letters, digits, '-' or '_', got {quoted(sent)}"]
        )
    return sent


@dataclass
class WriteProgress:
    """What a write has done so far, whatever its outcome (its audit event says it): its request id
    (the caller's, checked, or made by the write) and the compare-and-swaps it sent."""

    request_id: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class WriteResult:
    revision: int
    attempts: int
    changed: bool
    public_key: str = ""
    problems: tuple[str, ...] = ()  # a check-only write: every problem found (none: it would land)
    request_id: str = ""  # the write's id, in status.last_write where it landed
    in_view: bool = False  # whether this node's view already holds the write (no wait for its watch)


def _trusted(stored: StoredOverride | None) -> CertAuthorityOverride | None:
    """What a replacement of `stored` is checked against: nothing when it breaks a rule."""
    return stored.resource if stored is not None and stored.valid else None


def _base(stored: StoredOverride | None) -> CertAuthorityOverride | None:
    """The resource an entry edit starts from; StoredDataError when it breaks a rule."""
    if stored is not None and not stored.valid:
        raise stored.error()
    return None if stored is None else stored.resource


class Overrides:
    """The override resources of one cluster, as seen and written by one node. With the node's
    `session`, a write whose compare-and-swap failed waits its turn in the key's queue (shown by the
    view's watch) instead of retrying at random. With `entry_crl`, an appended entry of this node's
    key lands with its CRL, in one Txn."""

    def __init__(
        self,
        store: EtcdStore,
        node: NodeConfig,
        view: ClusterView,
        session: Session | None = None,
        entry_crl: EntryCRL | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self.view = view
        self.session = session
        self.entry_crl = entry_crl

    async def get(self, ca_type: str) -> StoredOverride:
        found = await self.store.get(override_key(self.node.cluster_name, ca_type))
        if found is None:
            raise NotFoundError(f"ca_overrides/{ca_type} not found in cluster {self.node.cluster_name}")
        return self._read(ca_type, found)

    async def list(self) -> list[StoredOverride]:
        prefix = override_prefix(self.node.cluster_name)
        found = await self.store.get_prefix(prefix)
        return [self._read(key[len(prefix) :], value) for key, value in found]

    def _read(self, ca_type: str, found: Versioned) -> StoredOverride:
        previous = self.view.last_read_override(ca_type)
        return read_override(found.value, found.mod_revision, self.node.cluster_name, ca_type, previous)

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

    async def create(
        self,
        resource: CertAuthorityOverride,
        force: bool,
        check_only: bool = False,
        progress: WriteProgress | None = None,
    ) -> WriteResult:
        """Create; an existing resource is an error (use upsert or update)."""

        def create(previous: StoredOverride | None, ctx: OverrideContext) -> CertAuthorityOverride:
            if previous is not None:
                raise AlreadyExistsError(
                    f"ca_overrides/{resource.ca_type} already exists "
                    f"(revision {previous.resource.revision}): "
                    f"use `authctl create -f` to replace it or `authctl edit ca_overrides/{resource.ca_type}`"
                )
            return self._checked(resource, None, ctx)

        return await self._update(resource.ca_type, create, force, check_only, progress)

    async def upsert(
        self,
        resource: CertAuthorityOverride,
        force: bool,
        check_only: bool = False,
        progress: WriteProgress | None = None,
    ) -> WriteResult:
        """Create or replace, validated against whatever is stored at the moment of the swap."""

        def upsert(previous: StoredOverride | None, ctx: OverrideContext) -> CertAuthorityOverride:
            return self._checked(resource, _trusted(previous), ctx)

        return await self._update(resource.ca_type, upsert, force, check_only, progress)

    async def update(
        self,
        resource: CertAuthorityOverride,
        force: bool,
        check_only: bool = False,
        progress: WriteProgress | None = None,
    ) -> WriteResult:
        """Replace only if the stored revision is still `resource.revision` (the edit flow)."""

        def update(previous: StoredOverride | None, ctx: OverrideContext) -> CertAuthorityOverride:
            if previous is None:
                raise NotFoundError(f"ca_overrides/{resource.ca_type} no longer exists: create it again")
            if previous.resource.revision != resource.revision:
                raise _stale(resource, previous.resource.revision)
            return self._checked(resource, _trusted(previous), ctx)

        return await self._update(resource.ca_type, update, force, check_only, progress)

    async def delete(self, ca_type: str, force: bool, progress: WriteProgress | None = None) -> WriteResult:
        """Remove the resource; refused while it holds an enabled override of an active key."""

        def remove(previous: StoredOverride | None, ctx: OverrideContext) -> Removal:
            if previous is None:
                raise NotFoundError(f"ca_overrides/{ca_type} not found in cluster {self.node.cluster_name}")
            trusted = _trusted(previous)
            if trusted is not None:
                check_override(replace(trusted, certificate_overrides=()), trusted, ctx)
            return REMOVE

        return await self._update(ca_type, remove, force, progress=progress)

    async def create_entry(
        self, ca_type: str, entry: CertificateOverride, force: bool, progress: WriteProgress | None = None
    ) -> WriteResult:
        """Append this node's entry; an identical entry already present is a no-op success."""
        entry = replace(entry, public_key=entry.key_hash)

        def append(previous: StoredOverride | None, ctx: OverrideContext) -> CertAuthorityOverride | None:
            before = _base(previous)
            base = before or CertAuthorityOverride(self.node.cluster_name, ca_type)
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
            return self._checked(base.with_entry(entry), before, ctx)

        crl = None
        if self.entry_crl is not None and entry.certificate:
            try:
                crl = await self.entry_crl(ca_type, entry)
            except AuthSimError as e:  # the token away: the keeper signs it once it answers
                log.warning("the CRL of the new %s entry is left to the keeper: %s", ca_type, e)
        written = await self._update(ca_type, append, force, progress=progress, companion=crl)
        return replace(written, public_key=entry.key_hash)

    async def update_entry(
        self,
        ca_type: str,
        public_key: str,
        change: Callable[[CertificateOverride], CertificateOverride],
        force: bool,
        progress: WriteProgress | None = None,
    ) -> WriteResult:
        found_key = ""

        def modify(previous: StoredOverride | None, ctx: OverrideContext) -> CertAuthorityOverride | None:
            nonlocal found_key
            before = _base(previous)
            index, entry = self._find(before, ctx, ca_type, public_key)
            found_key = entry.key_hash
            updated = change(entry)
            if updated == entry:
                return None
            assert before is not None
            return self._checked(before.replacing(index, updated), before, ctx)

        return replace(await self._update(ca_type, modify, force, progress=progress), public_key=found_key)

    async def delete_entry(
        self, ca_type: str, public_key: str, force: bool, progress: WriteProgress | None = None
    ) -> WriteResult:
        found_key = ""

        def remove(previous: StoredOverride | None, ctx: OverrideContext) -> CertAuthorityOverride:
            nonlocal found_key
            before = _base(previous)
            index, entry = self._find(before, ctx, ca_type, public_key)
            found_key = entry.key_hash
            assert before is not None
            return self._checked(before.without(index), before, ctx)

        return replace(await self._update(ca_type, remove, force, progress=progress), public_key=found_key)

    async def prune_entries(self, ca_type: str) -> WriteResult:
        """Remove the entries of keys no longer in the CA (after a rotation's standby or rollback);
        checked against the CA as stored at the swap, like every write; no entry to remove: no write."""

        def prune(previous: StoredOverride | None, ctx: OverrideContext) -> CertAuthorityOverride | None:
            before = _base(previous)
            if before is None or ctx.cert_authority is None:
                return None
            keys = {pair.public_key_hash for _, pair in ctx.cert_authority.all_keys()}
            kept = tuple(e for e in before.certificate_overrides if e.key_hash in keys)
            if len(kept) == len(before.certificate_overrides):
                return None
            return self._checked(replace(before, certificate_overrides=kept), before, ctx)

        return await self._update(ca_type, prune, force=False)

    @staticmethod
    def _find(
        resource: CertAuthorityOverride | None, ctx: OverrideContext, ca_type: str, public_key: str
    ) -> tuple[int, CertificateOverride]:
        """The entry `public_key` names: a hash or a unique prefix of one (≥ 8 hex characters, any case)
        among the keys of the CA and of the entries, as stored at this attempt."""
        entries = () if resource is None else resource.certificate_overrides
        ca_keys = () if ctx.cert_authority is None else ctx.cert_authority.all_keys()
        known = [e.key_hash for e in entries] + [pair.public_key_hash for _, pair in ca_keys]
        where = f"the {ca_type} CA or ca_overrides/{ca_type}"
        key = resolve_key_hash(public_key, filter(None, known), where)
        found = None if resource is None else resource.entry(key)
        if found is None:
            raise NotFoundError(f"ca_overrides/{ca_type} has no entry for public key {key}")
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

    def _encoded(self, resource: CertAuthorityOverride, attempts: int, request_id: str) -> bytes:
        """The stored form of a checked `resource`, with status.last_write: which node wrote it, when,
        the attempt that landed and the request's id; refused past the size limit."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        record = {
            "node": self.node.name,
            "host_id": self.node.host_id,
            "attempts": attempts,
            "time": now,
            "request_id": request_id,
        }
        data = replace(resource, last_write=record).to_json()
        if len(data) > MAX_RESOURCE_BYTES:
            raise ValidationError([f"resource: larger than 1 MiB once stored ({len(data)} bytes)"])
        return data

    def _decoded(self, ca_type: str, found: Versioned | None) -> StoredOverride | None:
        """`found` read and checked; the view's copy when it is the same revision (no second decode)."""
        if found is None:
            return None
        held = self.view.stored_overrides.get(ca_type)
        if held is not None and held.mod_revision == found.mod_revision:
            return self.view.stored_override(ca_type)
        return self._read(ca_type, found)

    async def _update(
        self,
        ca_type: str,
        change: Change,
        force: bool,
        check_only: bool = False,
        progress: WriteProgress | None = None,
        companion: Companion | None = None,
    ) -> WriteResult:
        """The compare-and-swap loop: `change` maps the stored resource to the new one (None: no-op,
        REMOVE: delete it), checked against the CA as stored at that moment: the Txn compares the CA's
        revision too, so a CA change (a rotation) between the checks and the write sends the write
        round again, never past the checks. A write whose answer etcd lost succeeds when the stored
        resource carries its request id (`progress.request_id`, made here when empty); else its outcome is
        unknown. `progress` follows the write, also when it is refused (its audit event tells it). A
        `companion` (a new entry's CRL) is written along when it still applies (`Companion`)."""
        done = progress or WriteProgress()
        request_id = done.request_id = _request_id_or_new(done.request_id)
        base = await self._context(force)
        cluster = self.node.cluster_name
        if check_only:
            return await self._check(ca_type, change, base)
        removing = False
        sent: tuple[Versioned | None, bytes] | None = None  # the last value sent, and what it replaced

        def encode(current: Versioned | None, ca: Versioned | None) -> bytes | None:
            nonlocal removing, sent
            ctx = replace(base, cert_authority=self._cert_authority(ca_type, ca))
            new = change(self._decoded(ca_type, current), ctx)
            removing = new is REMOVE
            if new is None:
                return None
            done.attempts += 1  # the Txn this goes out in
            data = DELETE if new is REMOVE else self._encoded(new, done.attempts, request_id)
            sent = (current, data)
            return data

        def mine(found: Versioned) -> bool:
            stored = self._decoded(ca_type, found)
            return stored is not None and (stored.resource.last_write or {}).get("request_id") == request_id

        known = None
        if self.view.ready.is_set():
            known = (self.view.stored_overrides.get(ca_type), self.view.stored_cas.get(ca_type))
        try:
            result = await self.store.update_guarded(
                override_key(cluster, ca_type),
                cert_authority_key(cluster, ca_type),
                encode,
                known=known,
                mine=mine,
                queue=self._queue(ca_type, request_id),
                companion=companion,
            )
        except OutcomeUnknownError as e:
            raise OutcomeUnknownError(
                f"{e}; {_how_to_check(ca_type, request_id, removing)}", request_id
            ) from e
        in_view = result.changed and sent is not None and self._show(ca_type, *sent, result)
        return WriteResult(
            result.revision, result.attempts, result.changed, request_id=request_id, in_view=in_view
        )

    def _show(self, ca_type: str, replaced: Versioned | None, data: bytes, landed: UpdateResult) -> bool:
        """Put this node's write (with the CRLs it wrote along), landed, in its view; whether the view
        took it."""
        revision = landed.revision
        created = revision if replaced is None else replaced.create_revision
        value = None if data is DELETE else Versioned(data, revision, created)
        crls = None
        if landed.companion is not None:  # created before: an entry's CRL needs its key's CRLs stored
            held = self.view.stored_crls.get(ca_type)
            crls = Versioned(landed.companion, revision, held.create_revision if held else revision)
        return self.view.wrote(ca_type, value, revision, crls)

    def _queue(self, ca_type: str, request_id: str) -> WriteQueue | None:
        """The write's place in the queue of `ca_type`'s writers: a ticket named by node and request."""
        tickets = override_tickets_prefix(self.node.cluster_name, ca_type)
        return writer_queue(self.store, self.session, self.view, tickets, f"{self.node.host_id}/{request_id}")

    async def _check(self, ca_type: str, change: Change, base: OverrideContext) -> WriteResult:
        """Every problem `change` finds with the stored state, nothing written."""
        cluster = self.node.cluster_name
        current, ca = await self.store.get_both(
            override_key(cluster, ca_type), cert_authority_key(cluster, ca_type)
        )
        revision = 0 if current is None else current.mod_revision
        try:
            change(
                self._decoded(ca_type, current),
                replace(base, cert_authority=self._cert_authority(ca_type, ca)),
            )
        except ValidationError as e:
            return WriteResult(revision, 0, False, problems=tuple(e.problems))
        return WriteResult(revision, 0, False)

    def _cert_authority(self, ca_type: str, found: Versioned | None) -> CertAuthority | None:
        """`found` as a CA; the view's copy when it is the same revision (no second decode)."""
        held = self.view.cert_authorities.get(ca_type)
        if found is not None and held is not None and held.revision == found.mod_revision:
            return held
        if found is None:
            return None
        return read_cert_authority(found.value, found.mod_revision, self.node.cluster_name, ca_type).require()


def _how_to_check(ca_type: str, request_id: str, removing: bool) -> str:
    """What an admin checks to learn whether a write whose outcome is unknown landed."""
    get = f"`authctl get ca_overrides/{ca_type}`"
    if removing:  # nothing stored carries the id of a removal
        return f"check {get}: not found means it is removed (by this request, {request_id}, or another)"
    return (
        f"check {get}: status.last_write.request_id {request_id} there means this write landed "
        "and nothing changed the resource since"
    )


def _stale(resource: CertAuthorityOverride, stored: int) -> ConflictError:
    return ConflictError(
        f"revision mismatch: ca_overrides/{resource.ca_type} is at revision {stored}, your copy is from "
        f"revision {resource.revision}: it changed meanwhile, work from the latest state "
        f"(`authctl get ca_overrides/{resource.ca_type}`)",
        expected_revision=resource.revision,
        actual_revision=stored,
    )
