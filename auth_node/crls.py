"""CRLs of this node's CA keys, signed inside its token, and revocations of credentials (SPEC §CRL).

Each key of a CA has a CRL issued by its self-signed CA certificate and one per override entry, issued
by that entry's certificate (enabled or disabled). Only the node that holds a key signs them: the
keeper (`CRLs.run`) signs what is missing or stale for this node's own keys, on every change of the
cluster's CAs, overrides and CRLs, and on a timer. A revocation (any node) adds a serial to the spec of
the key that issued it; the holder's keeper then signs new CRLs listing it. A node appending its own
key's entry writes that entry's CRL in the append's Txn (`entry_crl`): the entry never shows without
its CRL, and the append costs the cluster one write, not two. The keeper signs that CRL ahead, for
the certificate the key's CSR asks for (`sign_ahead`), so the append does not wait for the token; an
entry whose certificate differs (another name, another key identifier) has its CRL signed then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.auth_node.csr import csr_subject
from authsim.cluster.errors import (
    AuthSimError,
    KeyAccessError,
    NotFoundError,
    StoredDataError,
    ValidationError,
    node_command,
)
from authsim.cluster.layout import published_crl
from authsim.cluster.resources.cert_authority import CAKeyPair, CertAuthority
from authsim.cluster.resources.crl import (
    CertAuthorityCRL,
    KeyCRLs,
    Revocation,
    ahead_builder,
    ahead_problem,
    checked_serial,
    crl_builder,
    crl_problem,
    fingerprint,
    key_identifier,
)
from authsim.cluster.resources.key_prefix import SHOWN, resolve_key_hash
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride
from authsim.cluster.store import Companion, EtcdStore, Versioned
from authsim.cluster.store.keys import crl_key, crl_tickets_prefix
from authsim.cluster.store.queue import Session, WriteQueue, writer_queue
from authsim.hsm import KeyStore

log = logging.getLogger(__name__)
CHECK_INTERVAL = 60.0  # seconds between checks when nothing changes (CRLs age)
RETRY_INTERVAL = 1.0  # seconds before a check that failed (the token or etcd away) runs again


@dataclass(frozen=True)
class KeyIssuers:
    """The certificates that issue CRLs for one CA key: its self-signed one and its override entries'."""

    pair: CAKeyPair
    ca_cert: x509.Certificate
    overrides: dict[str, x509.Certificate]  # fingerprint -> override certificate

    @property
    def key_hash(self) -> str:
        return self.pair.public_key_hash

    def all(self) -> list[x509.Certificate]:
        return [self.ca_cert, *self.overrides.values()]


def key_issuers(
    ca: CertAuthority, override: CertAuthorityOverride | None, host_id: str = ""
) -> dict[str, KeyIssuers]:
    """Per key hash of `ca` (with `host_id`, of that node's keys only), the certificates that issue its
    CRLs. An override certificate that has expired issues none (nothing it signed is still valid)."""
    now = dt.datetime.now(dt.timezone.utc)
    found = {}
    for _, pair in ca.keys_of_host(host_id) if host_id else ca.all_keys():
        overrides = {}
        entry = None if override is None else override.entry(pair.public_key_hash)
        if entry is not None and entry[1].certificate:
            cert = _certificate(entry[1].certificate)
            if cert.not_valid_after_utc > now:
                overrides[fingerprint(cert)] = cert
        ca_cert = _certificate(pair.cert_pem)
        found[pair.public_key_hash] = KeyIssuers(pair, ca_cert, overrides)
    return found


@functools.lru_cache(maxsize=1024)
def _certificate(pem: str) -> x509.Certificate:
    """A CA or override certificate, parsed once: the CRL check runs on every change of its CA type."""
    return x509.load_pem_x509_certificate(pem.encode())


def stale_reason(issuers: KeyIssuers, stored: CertAuthorityCRL | None, now: dt.datetime) -> str | None:
    """Why the CRLs of a key must be signed again, or None when every one is current."""
    crls = None if stored is None else stored.crls.get(issuers.key_hash)
    if stored is None or crls is None:
        return "missing"
    serials = stored.serials(issuers.key_hash)
    problem = crl_problem(crls.crl, issuers.ca_cert, serials, now)
    if problem is not None:
        return f"self-signed CRL: {problem}"
    if set(crls.overrides) != set(issuers.overrides):
        return "override CRLs do not match the override entries"
    for print_, cert in issuers.overrides.items():
        problem = crl_problem(crls.overrides[print_], cert, serials, now)
        if problem is not None:
            return f"override CRL {print_[:16]}: {problem}"
    return None


def sign_crl(
    keystore: KeyStore, key: KeyRef, issuer: x509.Certificate, number: int, revoked: tuple[Revocation, ...]
) -> str:
    """The CRL of `issuer`, a certificate of token key `key`, number `number`, signed in the token
    (blocking: call it off the loop)."""
    builder = crl_builder(issuer, number, _serials(revoked), dt.datetime.now(dt.timezone.utc))
    return _signed(keystore, key, builder)


@dataclass(frozen=True)
class AheadCRL:
    """The CRL of a key's next override entry, signed before the entry exists (`sign_ahead`): the
    append of that entry writes it without waiting for a signature (`CRLs.entry_crl`)."""

    number: int
    revoked: tuple[Revocation, ...]
    pem: str


def sign_ahead(
    keystore: KeyStore, issuers: KeyIssuers, cluster_name: str, number: int, revoked: tuple[Revocation, ...]
) -> AheadCRL:
    """The CRL that the key of `issuers` signs as the certificate its CSR asks for by default
    (`csr_subject`), number `number`, signed in the token (blocking: call it off the loop)."""
    subject = csr_subject(issuers.ca_cert.subject, cluster_name)
    now = dt.datetime.now(dt.timezone.utc)
    builder = ahead_builder(subject, issuers.ca_cert.public_key(), number, _serials(revoked), now)
    return AheadCRL(number, revoked, _signed(keystore, issuers.pair.key, builder))


def _serials(revoked: tuple[Revocation, ...]) -> dict[int, dt.datetime]:
    return {int(r.serial, 16): dt.datetime.fromisoformat(r.revoked_at) for r in revoked}


def _signed(keystore: KeyStore, key: KeyRef, builder: x509.CertificateRevocationListBuilder) -> str:
    crl = keystore.run(lambda: builder.sign(keystore.private_key(key), hashes.SHA256()))
    return crl.public_bytes(Encoding.PEM).decode()


def sign_key_crls(
    keystore: KeyStore, issuers: KeyIssuers, number: int, revoked: tuple[Revocation, ...]
) -> KeyCRLs:
    """Every CRL of one key, number `number`, signed in the token (blocking: call it off the loop)."""

    def signed(issuer: x509.Certificate) -> str:
        return sign_crl(keystore, issuers.pair.key, issuer, number, revoked)

    overrides = {print_: signed(cert) for print_, cert in issuers.overrides.items()}
    return KeyCRLs(number, signed(issuers.ca_cert), overrides, issuers.pair.key.host_id)


def decoded(found: Versioned | None, cluster_name: str, ca_type: str) -> CertAuthorityCRL:
    """The stored CRL resource (an empty one when there is none); StoredDataError when unreadable."""
    if found is None:
        return CertAuthorityCRL(cluster_name, ca_type)
    try:
        return CertAuthorityCRL.from_json(found.value, found.mod_revision)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StoredDataError(
            f"ca_crls/{ca_type} (revision {found.mod_revision}) is unreadable ({e}): "
            "nothing is signed or revoked under it until it is repaired"
        ) from None


def pick_key(ca: CertAuthority, public_key: str) -> CAKeyPair:
    """The key of `ca` named by `public_key` (`resolve_key_hash`: a unique prefix of at least 8 hex
    characters, any case); with no prefix, the CA's only key."""
    keys = {pair.public_key_hash: pair for _, pair in ca.all_keys()}
    if not public_key:
        if len(keys) != 1:
            listing = ", ".join(h[:SHOWN] for h in keys)
            raise ValidationError(
                [
                    f"public_key: the {ca.ca_type} CA has {len(keys)} keys ({listing}): "
                    "pick one with --public-key"
                ]
            )
        return next(iter(keys.values()))
    return keys[resolve_key_hash(public_key, keys, f"the {ca.ca_type} CA")]


def issuing_key(ca: CertAuthority, override: CertAuthorityOverride | None, cert: x509.Certificate) -> str:
    """The hash of the key of `ca` that issued `cert`: its AKI is the SKI of the key's self-signed CA
    certificate or of the key's override certificate, and that certificate's key verifies it."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    for key_hash, issuers in key_issuers(ca, override).items():
        for issuer in issuers.all():
            if aki is not None and key_identifier(issuer) != aki:
                continue
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):  # not this issuer
                continue
            return key_hash
    raise NotFoundError(
        f"certificate serial {cert.serial_number:x} was not issued by a key of the {ca.ca_type} CA"
    )


def unpublished(
    crl_dir: Path, crls: dict[str, CertAuthorityCRL], host_id: str, published: dict[Path, str]
) -> dict[Path, str]:
    """The files of the CRLs that node `host_id` signed (its keys') whose PEM differs from what
    `published` says was written there: each holder publishes its own keys' CRLs, so one change costs
    one node one file, not every node every file."""
    files = {}
    for ca_type, resource in crls.items():
        for key_hash, key_crls in resource.crls.items():
            if key_crls.host_id != host_id:
                continue
            files[published_crl(crl_dir, ca_type, key_hash, False)] = key_crls.crl
            for pem in key_crls.overrides.values():  # one override entry per key
                files[published_crl(crl_dir, ca_type, key_hash, True)] = pem
    return {path: pem for path, pem in files.items() if published.get(path) != pem}


def publish(files: dict[Path, str]) -> None:
    """Write each CRL to its file at the publication point, DER, replaced atomically when its content
    changed (blocking: call it off the loop)."""
    for path, pem in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace(path, x509.load_pem_x509_crl(pem.encode()).public_bytes(Encoding.DER))


def _replace(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class CRLs:
    """The CRLs of one cluster as one node sees, signs and revokes them."""

    def __init__(
        self,
        node: NodeConfig,
        store: EtcdStore,
        keystore: KeyStore,
        view: ClusterView,
        session: Session | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.keystore = keystore
        self.view = view
        self.session = session  # with it, writers of a CRL resource take turns (queue.py)
        self._ahead: dict[str, AheadCRL] = {}  # key hash -> the CRL of its next entry, signed ahead

    async def run(self) -> None:
        """Keep this node's keys' CRLs current: after every change the view sees of what they depend on
        (a CA type's CA, override entries, CRLs), and on a timer (CRLs age); a check that failed (the
        token or etcd away) runs again within RETRY_INTERVAL, changes or not. A change of anything else
        (another resource, an override's status) costs no check: with N nodes appending, each change
        reaches every node."""
        checked: dict[str, tuple[object, ...]] = {}  # CA type -> what its CRLs were last found current for
        published: dict[Path, str] = {}  # the PEM of each file published
        published_from: dict[str, int] = {}  # the revisions of the CRL resources those files came from
        while True:
            await self.view.ready.wait()
            seen = self.view.revision
            failed = False
            for ca_type in sorted(self.view.cert_authorities):
                inputs = self._inputs(ca_type)
                if checked.get(ca_type) == inputs:
                    continue
                try:
                    await self.keep(ca_type)
                    checked[ca_type] = inputs
                except AuthSimError as e:  # etcd or the token away, a broken stored resource: next round
                    log.warning("CRLs of %s not kept: %s", ca_type, e)
                    failed = True
                except Exception:  # a bug here must not stop the node from issuing: logged, next round
                    log.exception("CRLs of %s not kept", ca_type)
                    failed = True
            revisions = {t: found.mod_revision for t, found in self.view.stored_crls.items()}
            if self.node.crl_dir and revisions != published_from:
                source = {t: crl for t in revisions if (crl := self.view.crl(t)) is not None}
                files = unpublished(Path(self.node.crl_dir), source, self.node.host_id, published)
                try:
                    if files:
                        await asyncio.to_thread(publish, files)
                        published.update(files)
                    published_from = revisions
                except OSError as e:
                    log.warning("CRLs not published to %s: %s", self.node.crl_dir, e)
                    failed = True
            if failed:
                await self.view.next_change(seen, RETRY_INTERVAL)
            elif not await self.view.next_change(seen, CHECK_INTERVAL):  # the timer: check everything
                checked.clear()
                published.clear()
                published_from.clear()

    def _inputs(self, ca_type: str) -> tuple[object, ...]:
        """What the CRLs of this node's keys of `ca_type` depend on in the view: the CA, the override
        entries of these keys, and their CRLs and revocations (another node's entry or CRL changing
        costs no check)."""
        ca = self.view.cert_authorities.get(ca_type)
        own = sorted({pair.public_key_hash for _, pair in ca.keys_of_host(self.node.host_id)}) if ca else []
        stored = self.view.stored_override(ca_type)
        entries = None
        if stored is not None and stored.valid:
            entries = tuple(e for e in stored.resource.certificate_overrides if e.key_hash in own)
        crls = self.view.crl(ca_type)
        held = None if crls is None else tuple((k, crls.crls.get(k), crls.revoked.get(k)) for k in own)
        return (ca, entries, held)

    def _issuers(self, ca_type: str) -> dict[str, KeyIssuers]:
        """This node's keys of `ca_type` with their CRL issuers, from the view."""
        ca = self.view.cert_authority(ca_type)
        stored = self.view.stored_override(ca_type)
        override = stored.resource if stored is not None and stored.valid else None
        return key_issuers(ca, override, self.node.host_id)

    async def keep(self, ca_type: str, force_key: str = "") -> dict[str, KeyCRLs]:
        """Sign the stale CRLs of this node's keys of `ca_type` (and those of `force_key`, its own, in
        any case), and store them; what was stored."""
        own = self._issuers(ca_type)
        current = self.view.crl(ca_type)
        now = dt.datetime.now(dt.timezone.utc)
        todo = [i for h, i in own.items() if h == force_key or stale_reason(i, current, now) is not None]
        stored = await self._sign(ca_type, todo, current) if todo else {}
        await self._sign_ahead(own, current, stored)
        return stored

    async def _sign(
        self, ca_type: str, todo: list[KeyIssuers], current: CertAuthorityCRL | None
    ) -> dict[str, KeyCRLs]:
        """Sign every CRL of the keys `todo` with the next CRL number, and store them; what was stored."""
        signed: dict[str, tuple[KeyCRLs, set[int]]] = {}
        for issuers in todo:
            revoked = current.revoked.get(issuers.key_hash, ()) if current is not None else ()
            before = current.crls.get(issuers.key_hash) if current is not None else None
            number = (before.crl_number if before else 0) + 1
            crls = await asyncio.to_thread(sign_key_crls, self.keystore, issuers, number, revoked)
            signed[issuers.key_hash] = (crls, {int(r.serial, 16) for r in revoked})
            log.info("signed CRL %d of %s key %s", number, ca_type, issuers.key_hash[:16])
        stored: dict[str, KeyCRLs] = {}

        def merge(found: Versioned | None) -> bytes | None:
            resource = self._decoded(ca_type, found)
            stored.clear()
            for key_hash, (crls, serials) in signed.items():
                held = resource.crls.get(key_hash)
                # a revocation landed since we signed, or another signature got there: the next round
                if resource.serials(key_hash) != serials or (held and held.crl_number >= crls.crl_number):
                    continue
                resource = resource.with_crls(key_hash, crls)
                stored[key_hash] = crls
            return resource.to_json() if stored else None

        known = (self.view.stored_crls.get(ca_type),) if self.view.ready.is_set() else None
        key = crl_key(self.node.cluster_name, ca_type)
        await self.store.update(key, merge, known=known, queue=self._queue(ca_type))
        return stored

    async def _sign_ahead(
        self, own: dict[str, KeyIssuers], current: CertAuthorityCRL | None, stored: dict[str, KeyCRLs]
    ) -> None:
        """Sign ahead the CRL of the next override entry of each key of `own` that has none, at the
        CRL number the key's CRLs have after this round (`stored`, else `current`). A token that fails
        it costs nothing but the wait: the append then signs the entry's CRL itself."""
        for key_hash, issuers in own.items():
            held = stored.get(key_hash) or (current.crls.get(key_hash) if current is not None else None)
            if issuers.overrides or held is None:
                continue
            revoked = current.revoked.get(key_hash, ()) if current is not None else ()
            ahead = self._ahead.get(key_hash)
            if ahead is not None and (ahead.number, ahead.revoked) == (held.crl_number, revoked):
                continue
            try:
                self._ahead[key_hash] = await asyncio.to_thread(
                    sign_ahead, self.keystore, issuers, self.node.cluster_name, held.crl_number, revoked
                )
            except AuthSimError as e:
                log.warning("the CRL ahead of key %s's next entry is not signed: %s", key_hash[:16], e)

    async def sign_now(self, ca_type: str, public_key: str) -> tuple[str, KeyCRLs]:
        """Sign the CRLs of the key picked by `public_key` now; refused when another node holds it."""
        issuers = self._issuers(ca_type)
        pair = pick_key(self.view.cert_authority(ca_type), public_key)
        if pair.key.host_id != self.node.host_id:
            holder = self.view.node_names.get(pair.key.host_id, "another node")
            raise KeyAccessError(
                f"key {pair.public_key_hash[:16]} of the {ca_type} CA is held by node {holder} "
                f"(host {pair.key.host_id}): only that node signs its CRLs, in its token"
                + (f" ({node_command(holder)})" if pair.key.host_id in self.view.node_names else ""),
                owner_host_id=pair.key.host_id,
                asking_host_id=self.node.host_id,
            )
        assert pair.public_key_hash in issuers
        stored = await self.keep(ca_type, force_key=pair.public_key_hash)
        if pair.public_key_hash not in stored:
            raise AuthSimError(
                f"the CRLs of key {pair.public_key_hash[:16]} changed while they were signed: try again"
            )
        return pair.public_key_hash, stored[pair.public_key_hash]

    async def revoke(
        self, ca_type: str, serial: str, public_key: str, certificate: str, request_id: str
    ) -> tuple[str, str, bool, int]:
        """Add a serial to the revoked list of the key that issued it: (key hash, serial, whether it was
        revoked already, revision)."""
        ca = self.view.cert_authority(ca_type)
        if certificate:
            try:
                cert = x509.load_pem_x509_certificate(certificate.encode())
            except ValueError:
                raise ValidationError(["certificate: not a PEM certificate"]) from None
            stored = self.view.stored_override(ca_type)
            override = stored.resource if stored is not None and stored.valid else None
            key_hash = issuing_key(ca, override, cert)
            serial = format(cert.serial_number, "x")
        else:
            key_hash = pick_key(ca, public_key).public_key_hash
            serial = checked_serial(serial)
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        revocation = Revocation(serial, now, request_id, self.node.name)
        already = False

        def add(found: Versioned | None) -> bytes | None:
            nonlocal already
            resource = self._decoded(ca_type, found)
            already = resource.revocation(key_hash, serial) is not None
            return None if already else resource.with_revocation(key_hash, revocation).to_json()

        key = crl_key(self.node.cluster_name, ca_type)
        result = await self.store.update(key, add, queue=self._queue(ca_type))
        return key_hash, serial, already, result.revision

    async def entry_crl(self, ca_type: str, entry: CertificateOverride) -> Companion | None:
        """The CRL resource with the CRL of `entry`, a new override entry of a key this node holds,
        signed now, to be written in the entry's own Txn; None when the keeper is to sign it (another
        node's key, an expired certificate, or no CRLs of the key yet). It keeps the key's CRL number
        (a new issuer's first CRL; the number still rises with each CRL that issuer signs) and takes
        effect only while the key's CRLs and revocations are still those it was signed for."""
        ca = self.view.cert_authorities.get(ca_type)
        current = self.view.crl(ca_type)
        own = {pair.public_key_hash: pair for _, pair in ca.keys_of_host(self.node.host_id)} if ca else {}
        held = None if current is None else current.crls.get(entry.key_hash)
        if entry.key_hash not in own or held is None or current is None:
            return None
        try:
            cert = _certificate(entry.certificate)
        except ValueError:  # the append refuses it
            return None
        print_ = fingerprint(cert)
        if cert.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc) or print_ in held.overrides:
            return None
        revoked = current.revoked.get(entry.key_hash, ())
        ahead = self._ahead.get(entry.key_hash)
        serials = current.serials(entry.key_hash)
        if (
            ahead is not None
            and (ahead.number, ahead.revoked) == (held.crl_number, revoked)
            and ahead_problem(ahead.pem, cert, serials, dt.datetime.now(dt.timezone.utc)) is None
        ):
            pem = ahead.pem
        else:
            key = own[entry.key_hash].key
            pem = await self.keystore.run_async(sign_crl, self.keystore, key, cert, held.crl_number, revoked)
        crls = replace(held, overrides={print_: pem})

        def merge(found: Versioned | None) -> bytes | None:
            try:
                resource = self._decoded(ca_type, found)
            except StoredDataError:
                return None
            if (
                resource.crls.get(entry.key_hash) != held
                or resource.revoked.get(entry.key_hash, ()) != revoked
            ):
                return None  # signed or revoked since: the keeper signs again
            return resource.with_crls(entry.key_hash, crls).to_json()

        return Companion(
            crl_key(self.node.cluster_name, ca_type), merge, lambda: self.view.stored_crls.get(ca_type)
        )

    def _decoded(self, ca_type: str, found: Versioned | None) -> CertAuthorityCRL:
        """`found` decoded (`decoded`); the view's copy when it is the same revision (no second decode)."""
        held = self.view.stored_crls.get(ca_type)
        if found is not None and held is not None and held.mod_revision == found.mod_revision:
            crl = self.view.crl(ca_type)
            if crl is not None:
                return crl
        return decoded(found, self.node.cluster_name, ca_type)

    def _queue(self, ca_type: str) -> WriteQueue | None:
        """A write's place in the queue of `ca_type`'s CRL writers."""
        tickets = crl_tickets_prefix(self.node.cluster_name, ca_type)
        return writer_queue(
            self.store, self.session, self.view, tickets, f"{self.node.host_id}/{uuid.uuid4().hex}"
        )

    async def stored(self, ca_type: str) -> CertAuthorityCRL:
        """The CRL resource of `ca_type` as etcd holds it now."""
        found = await self.store.get(crl_key(self.node.cluster_name, ca_type))
        return decoded(found, self.node.cluster_name, ca_type)
