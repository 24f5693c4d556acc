"""CSRs for the CA keys this node holds, signed inside its token (SPEC §6)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import uuid
from dataclasses import asdict, dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from authsim.auth_node.cluster_view import ClusterView
from authsim.cluster.errors import (
    AuthSimError,
    NotFoundError,
    StoreUnavailableError,
    ValidationError,
    cut,
    node_command,
    quoted,
)
from authsim.cluster.resources.cert_authority import CAKeyPair, CertAuthority
from authsim.cluster.resources.key_prefix import resolve_key_hash
from authsim.cluster.resources.subject import with_cluster_name
from authsim.cluster.resources.validation import key_hash_problems
from authsim.cluster.resources.x509 import public_key_hash as spki_hash
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.keys import csr_answer_key, csr_answers_prefix, csr_request_key
from authsim.hsm import KeyStore

log = logging.getLogger(__name__)
DEFAULT_GATHER_TIMEOUT = 30.0  # seconds a cluster-wide CSR request waits for the nodes' answers
MAX_GATHER_TIMEOUT = 600.0
LEASE_MARGIN = 5  # seconds a request's lease outlives its deadline: a late answer still finds it

MAX_SUBJECT_CHARS = 1024  # far above any real distinguished name; bounds what a request makes us parse
# Attributes cryptography encodes as PrintableString, and what that string type may hold (X.680 §41.4)
_PRINTABLE_STRING_OIDS = (
    NameOID.COUNTRY_NAME,
    NameOID.JURISDICTION_COUNTRY_NAME,
    NameOID.SERIAL_NUMBER,
    NameOID.DN_QUALIFIER,
)
_PRINTABLE_STRING = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]*")


@dataclass(frozen=True)
class OverrideCSR:
    ca_type: str
    role: str
    public_key_hash: str
    pem: str
    node_name: str = ""


def csr_subject(ca_cert_subject: x509.Name, cluster_name: str, custom: str = "") -> x509.Name:
    """The CSR subject: the CA's subject without serialNumber, or `custom` made to name the cluster
    (`subject.with_cluster_name`)."""
    if not custom:
        return x509.Name(
            [rdn for rdn in ca_cert_subject.rdns if not any(a.oid == NameOID.SERIAL_NUMBER for a in rdn)]
        )
    if len(custom) > MAX_SUBJECT_CHARS:
        raise ValidationError([f"subject: longer than {MAX_SUBJECT_CHARS} characters (got {len(custom)})"])
    try:
        name = x509.Name.from_rfc4514_string(custom)
    except ValueError as e:
        raise ValidationError([f"subject: not an RFC 4514 distinguished name: {cut(str(e), 200)}"]) from None
    for attribute in name:
        if attribute.oid in _PRINTABLE_STRING_OIDS and not _PRINTABLE_STRING.fullmatch(str(attribute.value)):
            raise ValidationError(
                [
                    f"subject: {attribute.rfc4514_attribute_name} may hold only A-Z a-z 0-9 space and "
                    f"'()+,-./:=? (a PrintableString), got {quoted(attribute.value)}"
                ]
            )
    return with_cluster_name(name, cluster_name)


def _resolved(ca: CertAuthority, public_key_hash: str) -> str:
    """The full hash of the CA key that `public_key_hash` (a hash or a unique prefix of one) names; ""
    for none."""
    if not public_key_hash:
        return ""
    known = (pair.public_key_hash for _, pair in ca.all_keys())
    return resolve_key_hash(public_key_hash, known, f"the {ca.ca_type} CA", "public_key_hash")


async def create_override_csrs(
    ca: CertAuthority,
    keystore: KeyStore,
    node_names: dict[str, str],
    subject: str = "",
    public_key_hash: str = "",
) -> tuple[list[OverrideCSR], list[str]]:
    """One CSR per key of `ca` in this node's token (active first), and warnings for the keys skipped;
    `public_key_hash`, a hash or a unique prefix of one, picks one key."""
    public_key_hash = _resolved(ca, public_key_hash)
    own = [(role, pair) for role, pair in ca.all_keys() if pair.key.host_id == keystore.host_id]
    others = [(role, pair) for role, pair in ca.all_keys() if pair.key.host_id != keystore.host_id]
    if public_key_hash:
        own = [(r, p) for r, p in own if p.public_key_hash == public_key_hash]
        if not own:  # a key of the CA, so another node's
            holder_pair = next(p for _, p in others if p.public_key_hash == public_key_hash)
            holder = _holder(holder_pair, node_names)
            raise ValidationError(
                [
                    f"public_key: key {public_key_hash[:16]} is held by {holder}: "
                    f"run create-override-csr on that node{_command(holder_pair, node_names)}"
                ]
            )
        others = []
    if not own:
        raise NotFoundError(f"node {keystore.node_name} holds no key of the {ca.ca_type} CA")
    if subject and len(own) > 1:
        raise ValidationError(
            [f"subject: a custom subject would apply to {len(own)} keys: pick one with --public-key"]
        )
    warnings = [
        f"skipped {role} key {p.public_key_hash[:16]}: held by {_holder(p, node_names)}, "
        f"run create-override-csr on that node{_command(p, node_names)}"
        for role, p in others
    ]
    csrs = []
    for role, pair in own:
        pem = await asyncio.to_thread(_sign_csr, keystore, pair, ca.cluster_name, subject)
        csrs.append(OverrideCSR(ca.ca_type, role, pair.public_key_hash, pem, keystore.node_name))
    return csrs, warnings


def _command(pair: CAKeyPair, node_names: dict[str, str]) -> str:
    """` (authctl --node NAME …)` for the node holding `pair`, "" when its name is not known."""
    name = node_names.get(pair.key.host_id)
    return f" ({node_command(name)})" if name else ""


def _holder(pair: CAKeyPair, node_names: dict[str, str]) -> str:
    name = node_names.get(pair.key.host_id, "another node")
    return f"node {name} (host {pair.key.host_id})"


def _sign_csr(keystore: KeyStore, pair: CAKeyPair, cluster_name: str, subject: str) -> str:
    ca_cert = x509.load_pem_x509_certificate(pair.cert_pem.encode())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        csr_subject(ca_cert.subject, cluster_name, subject)
    )
    key = keystore.private_key(pair.key)
    csr = keystore.run(lambda: builder.sign(key, hashes.SHA256()))
    return csr.public_bytes(Encoding.PEM).decode()


@dataclass(frozen=True)
class CSRRequest:
    """A pending cluster-wide CSR request as stored in etcd, under `lease` (its answers go under it too)."""

    ca_type: str
    subject: str
    public_key_hash: str
    lease: int
    requested_by: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> CSRRequest:
        """ValueError, KeyError or TypeError when `data` is not a request."""
        found = json.loads(data)
        return cls(
            str(found["ca_type"]),
            str(found["subject"]),
            str(found["public_key_hash"]),
            int(found["lease"]),
            str(found["requested_by"]),
        )


def targeted_keys(ca: CertAuthority, subject: str, public_key_hash: str) -> list[tuple[str, CAKeyPair]]:
    """The keys of `ca` a cluster-wide request asks CSRs for (active first), checked as a node checks
    its own: a well-formed hash naming a key of the CA, a custom subject for one key only."""
    if public_key_hash and (problems := key_hash_problems(public_key_hash, "public_key_hash")):
        raise ValidationError(problems)
    keys = _keys_of(ca, public_key_hash)
    if not keys:
        which = f" with public key {public_key_hash}" if public_key_hash else ""
        raise NotFoundError(f"the {ca.ca_type} CA has no key{which}")
    if subject:
        if len(keys) > 1:
            raise ValidationError(
                [f"subject: a custom subject would apply to {len(keys)} keys: pick one with --public-key"]
            )
        ca_cert = x509.load_pem_x509_certificate(keys[0][1].cert_pem.encode())
        csr_subject(ca_cert.subject, ca.cluster_name, subject)  # refuses a bad subject before asking
    return keys


async def gather_override_csrs(
    store: EtcdStore,
    ca: CertAuthority,
    requested_by: str,
    node_names: dict[str, str],
    subject: str = "",
    public_key_hash: str = "",
    timeout: float = DEFAULT_GATHER_TIMEOUT,
) -> tuple[list[OverrideCSR], list[str]]:
    """Ask every node through etcd for the CSRs of its own keys of `ca`; wait up to `timeout` seconds.

    The request is a key under a lease (so an abandoned one vanishes); each node answers for the keys of
    its own token (`answer_csr_requests`). Returns the CSRs that arrived (CA order, active first) and a
    warning per targeted key without one, naming its node.
    """
    if not 0 <= timeout <= MAX_GATHER_TIMEOUT:
        raise ValidationError(
            [f"timeout_seconds: must be between 0 and {MAX_GATHER_TIMEOUT:g}, got {timeout:g}"]
        )
    timeout = timeout or DEFAULT_GATHER_TIMEOUT
    public_key_hash = _resolved(ca, public_key_hash)  # the request names the full hash
    keys = targeted_keys(ca, subject, public_key_hash)
    lease = await store.grant_lease(math.ceil(timeout) + LEASE_MARGIN)
    request_id = uuid.uuid4().hex
    try:
        request = CSRRequest(ca.ca_type, subject, public_key_hash, lease, requested_by)
        revision = await store.put_leased(
            csr_request_key(ca.cluster_name, request_id), request.encode(), lease
        )
        hosts = {p.key.host_id for _, p in keys}
        answers = await _answers(
            store, csr_answers_prefix(ca.cluster_name, request_id), hosts, revision, timeout
        )
    finally:
        try:
            await store.revoke_lease(lease)  # the request and its answers go; else the lease ends them
        except StoreUnavailableError as e:
            log.warning("CSR request %s left to its lease: %s", request_id, e)
    return _merged(keys, answers, node_names, timeout)


async def _answers(
    store: EtcdStore, prefix: str, hosts: set[str], after_revision: int, timeout: float
) -> dict[str, bytes]:
    """host id -> answer, from the watch until every host in `hosts` answered or `timeout` passed; then
    one read, which also finds answers a broken watch missed."""
    answers: dict[str, bytes] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def watch() -> None:
        async with contextlib.aclosing(store.watch_prefix(prefix, after_revision + 1)) as changes:
            async for key, value, _ in changes:
                if value is not None:
                    answers[key[len(prefix) :]] = value.value
                if hosts <= answers.keys():
                    return

    try:
        await asyncio.wait_for(watch(), timeout)
    except TimeoutError:
        pass
    except StoreUnavailableError as e:
        log.warning("watch of CSR answers broke (%s); reading them once at the deadline", e)
        await asyncio.sleep(max(0.0, deadline - loop.time()))
    if not hosts <= answers.keys():
        for key, value in await store.get_prefix(prefix):
            answers.setdefault(key[len(prefix) :], value.value)
    return answers


def _merged(
    keys: list[tuple[str, CAKeyPair]], answers: dict[str, bytes], node_names: dict[str, str], timeout: float
) -> tuple[list[OverrideCSR], list[str]]:
    """The answered CSRs in the order of `keys`, and one warning per key without a usable CSR."""
    csrs: list[OverrideCSR] = []
    warnings: list[str] = []
    for role, pair in keys:
        holder = _holder(pair, node_names)
        missing = f"no CSR for {role} key {pair.public_key_hash[:16]}: {holder}"
        raw = answers.get(pair.key.host_id)
        if raw is None:
            warnings.append(
                f"{missing} did not answer within {timeout:g}s (stopped, or cut off from etcd): "
                f"run create-override-csr on that node when it is back{_command(pair, node_names)}"
            )
            continue
        try:
            answer = json.loads(raw)
            error = str(answer.get("error") or "")
            found = [c for c in answer.get("csrs", []) if c.get("public_key_hash") == pair.public_key_hash]
        except (ValueError, AttributeError, TypeError):
            error, found = "its answer is not readable", []
        if error:
            warnings.append(f"{missing} answered: {cut(error, 300)}")
        elif not found or not _csr_matches(str(found[0].get("pem", "")), pair.public_key_hash):
            warnings.append(f"{missing} answered without a CSR for that key signed by it")
        else:
            name = node_names.get(pair.key.host_id, "")
            csrs.append(
                OverrideCSR(str(found[0]["ca_type"]), role, pair.public_key_hash, found[0]["pem"], name)
            )
    return csrs, warnings


def _csr_matches(pem: str, key_hash: str) -> bool:
    """True when `pem` is a CSR for the key `key_hash` whose signature verifies (made by that key)."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        return False
    return csr.is_signature_valid and spki_hash(csr.public_key()) == key_hash


async def answer_csr_requests(view: ClusterView, store: EtcdStore, keystore: KeyStore) -> None:
    """Answer each cluster-wide CSR request the view sees with the CSRs of this node's keys it targets
    (nothing when it targets none). Runs until cancelled; a failed answer is logged, the requester warns."""
    answered: set[str] = set()
    while True:
        request_id, raw = await view.csr_requests.get()
        if request_id in answered:
            continue
        answered.add(request_id)
        try:
            await _answer(view, store, keystore, request_id, raw)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the requester names this node in a warning
            log.warning("CSR request %s not answered: %s", request_id, e)


async def _answer(
    view: ClusterView, store: EtcdStore, keystore: KeyStore, request_id: str, raw: bytes
) -> None:
    try:
        request = CSRRequest.decode(raw)
    except (ValueError, KeyError, TypeError) as e:
        log.error("ignoring unreadable CSR request %s: %s", request_id, e)
        return
    ca = view.cert_authorities.get(request.ca_type)
    if ca is None:
        return
    wanted = request.public_key_hash
    if not any(p.key.host_id == keystore.host_id for _, p in _keys_of(ca, wanted)):
        return
    answer: dict[str, object] = {"node": keystore.node_name, "host_id": keystore.host_id, "error": ""}
    try:
        csrs, _ = await create_override_csrs(ca, keystore, {}, request.subject, wanted)
        answer["csrs"] = [asdict(c) for c in csrs]
    except AuthSimError as e:
        answer["error"] = str(e)
    key = csr_answer_key(ca.cluster_name, request_id, keystore.host_id)
    try:
        await store.put_leased(key, json.dumps(answer, sort_keys=True).encode(), request.lease)
    except NotFoundError:
        log.info("CSR request %s ended before this node answered", request_id)


def _keys_of(ca: CertAuthority, public_key_hash: str) -> list[tuple[str, CAKeyPair]]:
    """The keys of `ca` (active first) with this public key hash; every key when it is ""."""
    return [(r, p) for r, p in ca.all_keys() if not public_key_hash or p.public_key_hash == public_key_hash]
