"""The AuthService servicer: each method decodes, calls the domain, encodes; errors map in one table."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from authsim.auth_node.ca_keys import (
    delete_invalid_cert_authority,
    load_cert_authority,
    promote_additional_keys,
    read_stored_cert_authority,
)
from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.auth_node.crls import CRLs
from authsim.auth_node.csr import OverrideCSR, create_override_csrs, gather_override_csrs
from authsim.auth_node.events import (
    EventFilter,
    EventQuery,
    EventRecorder,
    OverrideWriteOutcome,
    follow_events,
    list_events,
    override_write_event,
)
from authsim.auth_node.exercise import exercise
from authsim.auth_node.expiry_alerts import cluster_alerts
from authsim.auth_node.issuance import (
    DEFAULT_TTL,
    KEY_RULE,
    Credential,
    CredentialRequest,
    Issuer,
    issue_credentials,
    resolve_issuer,
)
from authsim.auth_node.overrides import Overrides, WriteProgress, WriteResult
from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.auth_node.pb import authsim_pb2_grpc as pb_grpc
from authsim.auth_node.request_log import CallRecord, caller
from authsim.auth_node.rotation import request_phase
from authsim.auth_node.token_signer import TokenSigner
from authsim.cluster.errors import (
    MAX_MESSAGE_CHARS,
    MAX_QUOTED,
    AuthSimError,
    NotFoundError,
    ValidationError,
    cut,
)
from authsim.cluster.resources import clock
from authsim.cluster.resources.ca_types import CA_TYPES, desktop_domain, resolve_ca_type
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.crl import CertAuthorityCRL, KeyCRLs
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride
from authsim.cluster.rpc_errors import ERROR_MARKER, REQUEST_ID, error_metadata, status_code_for
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.addresses import node_names
from authsim.cluster.store.queue import Session
from authsim.hsm import KeyStore
from authsim.hsm.pkcs11_store import Pkcs11KeyStore

Req = TypeVar("Req")
Resp = TypeVar("Resp")
log = logging.getLogger(__name__)
VIEW_TIMEOUT = 5.0  # seconds a request waits for the first listing of the cluster
MAX_SIGN_BATCH = 256  # credentials in one SignBatch call
Method = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]
Write = Callable[[WriteProgress], Awaitable[WriteResult]]
RESOURCE_WRITES = {pb.CREATE: "create", pb.UPSERT: "upsert", pb.UPDATE: "update"}  # mode -> operation
CANCELLED = "cancelled: the caller went away before the write finished; it may or may not have landed"


def _domain_errors(method: Method[Req, Resp]) -> Method[Req, Resp]:
    """Answer a domain error with its status code and one-line message; log the call as it ends."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        call = CallRecord(method.__name__, context)
        outcome = "OK"
        try:
            return await method(self, request, context)
        except AuthSimError as e:
            outcome = status_code_for(e).name
            message = _error_message(e, method.__name__)
            await context.abort(status_code_for(e), message, trailing_metadata=error_metadata(e))
            raise AssertionError("unreachable") from e
        except grpc.aio.AbortError:  # the method aborted the call itself (it is still running)
            code = context.code()
            outcome = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            raise
        except Exception as e:  # a bug: one line to the caller, the traceback in the node's log
            outcome = "INTERNAL"
            log.exception("%s failed", method.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                _error_message(e, method.__name__),
                trailing_metadata=((ERROR_MARKER, "AuthSimError"),),
            )
            raise AssertionError("unreachable") from e
        finally:
            call.done(outcome)

    return wrapper


def _error_message(e: Exception, method: str) -> str:
    """The one line a caller gets for `e`: a domain error's message, else an internal error naming it."""
    if isinstance(e, AuthSimError):
        return cut(str(e), MAX_MESSAGE_CHARS)
    return cut(f"internal error in {method}: {type(e).__name__}: {e}", MAX_MESSAGE_CHARS)


class AuthService(pb_grpc.AuthServiceServicer):  # type: ignore[misc]
    """One node's API: reads through to etcd, signs only with keys in this node's token."""

    def __init__(
        self,
        node: NodeConfig,
        store: EtcdStore,
        keystore: KeyStore,
        view: ClusterView,
        recorder: EventRecorder,
        crls: CRLs,
        session: Session,
    ) -> None:
        self.node = node
        self.store = store
        self.keystore = keystore
        self.view = view
        self.recorder = recorder  # override writes' audit events
        self.crls = crls
        self.overrides = Overrides(store, node, view, session, crls.entry_crl)
        worker = keystore.signing_process() if isinstance(keystore, Pkcs11KeyStore) else None
        self.signer = TokenSigner(keystore, worker)
        self.domain = desktop_domain(node.cluster_name)  # windows leaves' UPN suffix

    async def issuer(self, ca_type: str) -> Issuer:
        """This node's active key of `ca_type`, under the override the view holds for it."""
        await self.view.wait_ready(VIEW_TIMEOUT)
        ca = self.view.cert_authority(ca_type)
        return resolve_issuer(
            ca, self.view.override(ca_type), self.node.host_id, self.node.name, self.view.node_names
        )

    async def issue(self, requests: Sequence[CredentialRequest]) -> list[Credential]:
        """Credentials from this node's active keys, one issuer lookup per CA type."""
        issuers = {t: await self.issuer(t) for t in dict.fromkeys(r.ca_type for r in requests)}
        work = [(issuers[r.ca_type], r) for r in requests]
        crl_dir = Path(self.node.crl_dir) if self.node.crl_dir else None
        return await issue_credentials(self.signer, work, self.domain, crl_dir)

    async def _cert_authority(self, type_name: str) -> CertAuthority:
        ca_type = resolve_ca_type(type_name).name
        ca = await load_cert_authority(self.store, self.node.cluster_name, ca_type)
        if ca is None:
            raise NotFoundError(f"cert_authority {ca_type} of cluster {self.node.cluster_name} not found")
        return ca

    @_domain_errors
    async def GetCertAuthority(
        self, request: pb.GetCertAuthorityRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CertAuthority:
        ca_type = resolve_ca_type(request.type).name
        stored = await read_stored_cert_authority(self.store, self.node.cluster_name, ca_type)
        if stored is None:
            raise NotFoundError(f"cert_authority {ca_type} of cluster {self.node.cluster_name} not found")
        if stored.cert_authority is not None:
            return stored.cert_authority.to_proto(await node_names(self.store, self.node.cluster_name))
        return pb.CertAuthority(
            cluster_name=self.node.cluster_name,
            type=ca_type,
            revision=stored.revision,
            problems=stored.problems,
        )

    @_domain_errors
    async def DeleteCertAuthority(
        self, request: pb.DeleteCertAuthorityRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WriteResponse:
        ca_type = resolve_ca_type(request.type).name
        result = await delete_invalid_cert_authority(self.store, self.node.cluster_name, ca_type)
        return await self._written(WriteResult(result.revision, result.attempts, result.changed))

    @_domain_errors
    async def GetNodeStatus(
        self, request: pb.NodeStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.NodeStatus:
        status = pb.NodeStatus(
            node_name=self.node.name,
            host_id=self.node.host_id,
            cluster_name=self.node.cluster_name,
            token_label=self.node.token_label,
        )
        for ca_type in CA_TYPES:
            stored = await read_stored_cert_authority(self.store, self.node.cluster_name, ca_type)
            if stored is not None and stored.cert_authority is None:
                status.problems.append(str(stored.error()))
            ca = None if stored is None else stored.cert_authority
            for role, pair in [] if ca is None else ca.keys_of_host(self.node.host_id):
                if await asyncio.to_thread(self.keystore.holds, pair.key):
                    status.keys.append(
                        pb.HeldKey(
                            ca_type=ca_type,
                            role=role,
                            public_key_hash=pair.public_key_hash,
                            key_id=pair.key.key_id,
                        )
                    )
        status.problems.extend(str(o.error()) for o in await self.overrides.list() if not o.valid)
        status.expiry_alerts.extend(await self._expiry_alerts())
        return status

    async def _expiry_alerts(self) -> list[pb.ExpiryAlert]:
        """The override certificates at an alert level by this node's clock, in the view's state."""
        await self.view.wait_ready(VIEW_TIMEOUT)
        return [
            pb.ExpiryAlert(
                ca_type=alert.ca_type,
                public_key_hash=alert.public_key_hash,
                level=alert.level.label,
                not_after=alert.not_after.isoformat(),
                node_name=self.view.node_names.get(host_id, ""),
                message=alert.describe(),
                disabled=alert.disabled,
            )
            for alert, host_id in cluster_alerts(self.view, clock.now())
        ]

    @_domain_errors
    async def CreateOverrideCSR(
        self, request: pb.CreateOverrideCSRRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateOverrideCSRResponse:
        ca = await self._cert_authority(request.type)
        names = await node_names(self.store, self.node.cluster_name)
        csrs: list[OverrideCSR]
        if request.gather:  # every node answers for its own keys, through etcd
            csrs, warnings = await gather_override_csrs(
                self.store,
                ca,
                self.node.name,
                names,
                request.subject,
                request.public_key_hash,
                request.timeout_seconds,
            )
        else:
            csrs, warnings = await create_override_csrs(
                ca, self.keystore, names, request.subject, request.public_key_hash
            )
        return pb.CreateOverrideCSRResponse(
            csrs=[
                pb.OverrideCSR(
                    ca_type=c.ca_type,
                    role=c.role,
                    public_key_hash=c.public_key_hash,
                    pem=c.pem,
                    node_name=c.node_name,
                )
                for c in csrs
            ],
            warnings=warnings,
        )

    @_domain_errors
    async def ListOverrides(
        self, request: pb.GetOverrideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListOverridesResponse:
        if request.type:
            found = [await self.overrides.get(resolve_ca_type(request.type).name)]
        else:
            found = await self.overrides.list()
        replies = []
        for stored in found:
            reply = stored.resource.to_proto()
            if not stored.valid:  # shown with the rules it breaks; issuance under it refuses
                reply.problems.extend(stored.problems)
            replies.append(reply)
        return pb.ListOverridesResponse(overrides=replies)

    @_domain_errors
    async def WriteOverrideResource(
        self, request: pb.WriteOverrideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WriteResponse:
        writes = {
            pb.CREATE: self.overrides.create,
            pb.UPSERT: self.overrides.upsert,
            pb.UPDATE: self.overrides.update,
        }
        if request.mode not in writes:  # names no write: nothing to audit
            known = ", ".join(pb.WriteMode.Name(m) for m in writes)
            raise ValidationError([f"mode: unknown write mode {request.mode} (known: {known})"])

        async def write(progress: WriteProgress) -> WriteResult:
            resource = CertAuthorityOverride.from_proto(request.resource)
            resource = replace(resource, ca_type=resolve_ca_type(resource.ca_type, "sub_kind").name)
            return await writes[request.mode](resource, request.force, request.check_only, progress)

        if request.check_only:  # changes nothing: not audited
            result = await write(WriteProgress(_request_id(context)))
            return pb.WriteResponse(revision=result.revision, problems=result.problems)
        operation = RESOURCE_WRITES[request.mode]
        return await self._audited(context, operation, request.resource.type, "", write)

    @_domain_errors
    async def DeleteOverrideResource(
        self, request: pb.DeleteOverrideResourceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WriteResponse:
        async def write(progress: WriteProgress) -> WriteResult:
            return await self.overrides.delete(resolve_ca_type(request.type).name, request.force, progress)

        return await self._audited(context, "delete", request.type, "", write)

    @_domain_errors
    async def CreateOverride(
        self, request: pb.CreateOverrideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WriteResponse:
        entry = CertificateOverride(
            certificate=request.certificate.strip(),
            chain=tuple(c.strip() for c in request.chain),
            disabled=request.disabled,
        )

        async def write(progress: WriteProgress) -> WriteResult:
            ca_type = resolve_ca_type(request.type).name
            return await self.overrides.create_entry(ca_type, entry, request.force, progress)

        return await self._audited(context, "create_override", request.type, entry.key_hash, write)

    @_domain_errors
    async def UpdateOverride(
        self, request: pb.UpdateOverrideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WriteResponse:
        def change(entry: CertificateOverride) -> CertificateOverride:
            if request.HasField("set_disabled"):
                entry = replace(entry, disabled=request.set_disabled)
            if request.set_certificate:
                entry = replace(entry, certificate=request.set_certificate.strip())
            if request.set_chain or request.clear_chain:
                entry = replace(entry, chain=tuple(c.strip() for c in request.set_chain))
            return entry

        async def write(progress: WriteProgress) -> WriteResult:
            ca_type = resolve_ca_type(request.type).name
            return await self.overrides.update_entry(
                ca_type, request.public_key, change, request.force, progress
            )

        return await self._audited(context, "update_override", request.type, request.public_key, write)

    @_domain_errors
    async def DeleteOverride(
        self, request: pb.DeleteOverrideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WriteResponse:
        async def write(progress: WriteProgress) -> WriteResult:
            ca_type = resolve_ca_type(request.type).name
            return await self.overrides.delete_entry(ca_type, request.public_key, request.force, progress)

        return await self._audited(context, "delete_override", request.type, request.public_key, write)

    @_domain_errors
    async def Sign(
        self, request: pb.SignRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SignResponse:
        [credential] = await self.issue([_credential_request(request)])
        return self._sign_response(credential)

    @_domain_errors
    async def SignBatch(
        self, request: pb.SignBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SignBatchResponse:
        count = len(request.requests)
        if not 0 < count <= MAX_SIGN_BATCH:
            raise ValidationError([f"requests: must hold 1 to {MAX_SIGN_BATCH} requests, got {count}"])
        problems, wanted = [], []
        for i, one in enumerate(request.requests):
            try:
                wanted.append(_credential_request(one))
            except ValidationError as e:
                problems += [f"requests[{i}].{p}" for p in e.problems]
        if problems:
            raise ValidationError(problems)
        credentials = await self.issue(wanted)
        return pb.SignBatchResponse(credentials=[self._sign_response(c) for c in credentials])

    def _sign_response(self, credential: Credential) -> pb.SignResponse:
        cert = credential.certificate
        return pb.SignResponse(
            certificate=credential.pem,
            chain=credential.issuer.chain,
            ca_override=pb.CAOverrideInfo(
                active=credential.issuer.override_active,
                public_key_hash=credential.issuer.key.public_key_hash,
            ),
            serial=format(cert.serial_number, "x"),
            issuer=credential.issuer.subject,
            not_after=cert.not_valid_after_utc.isoformat(),
            node_name=self.node.name,
            not_after_clipped=credential.not_after_clipped,
        )

    @_domain_errors
    async def Exercise(
        self, request: pb.ExerciseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExerciseResponse:
        """Issue a credential, open a session on the downstream target with it, record the event."""
        ca_type = resolve_ca_type(request.type).name
        event = await exercise(self.node, self.recorder, self.view, self.issue, ca_type, request.user)
        return pb.ExerciseResponse(event=json.dumps(event, sort_keys=True))

    @_domain_errors
    async def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListEventsResponse:
        only = EventFilter(request.kind, request.code)
        query = EventQuery(request.since_unix_ns, request.limit, request.after, request.revision, only)
        page = await list_events(self.store, self.node.cluster_name, query, request.page_size)
        return pb.ListEventsResponse(events=page.events, next=page.next, revision=page.revision)

    async def FollowEvents(
        self, request: pb.FollowEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ListEventsResponse]:
        """Each event as it is recorded, one per reply, until the caller cancels."""
        call = CallRecord("FollowEvents", context)
        outcome = "CANCELLED"  # also when the caller's going away closes this generator
        try:
            if request.after_revision < 0:
                raise ValidationError([f"after_revision: must not be negative, got {request.after_revision}"])
            only = EventFilter(request.kind, request.code)
            async for event, revision in follow_events(
                self.store, self.node.cluster_name, request.after_revision, only
            ):
                yield pb.ListEventsResponse(events=[event], revision=revision)
            outcome = "OK"
        except AuthSimError as e:
            outcome = status_code_for(e).name
            await context.abort(status_code_for(e), str(e), trailing_metadata=error_metadata(e))
        finally:
            call.done(outcome)

    @_domain_errors
    async def RotateCertAuthority(
        self, request: pb.RotateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WriteResponse:
        ca_type = resolve_ca_type(request.type).name
        if request.phase:
            names = await node_names(self.store, self.node.cluster_name)
            result = await request_phase(self.store, self.node.cluster_name, ca_type, request.phase, names)
        else:
            result = await promote_additional_keys(self.store, self.node.cluster_name, ca_type)
        return pb.WriteResponse(revision=result.revision, attempts=result.attempts, changed=result.changed)

    async def _audited(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        operation: str,
        type_name: str,
        public_key: str,
        write: Write,
    ) -> pb.WriteResponse:
        """The reply to override write `write`, whose audit event (success or refusal) is recorded on the
        side: the caller gets what the write did, whatever becomes of the event."""
        progress = WriteProgress(_request_id(context))
        admin = caller(context)  # read now: a cancelled call's context may point at a freed call

        def audit(outcome: OverrideWriteOutcome, key: str = public_key) -> None:
            try:
                shown_type = _shown_type(type_name)
                event = override_write_event(
                    self.node.cluster_name,
                    self.node.name,
                    admin,
                    operation,
                    shown_type,
                    key,
                    outcome,
                )
                self.recorder.record(event)
            except Exception:  # a bug here must not turn the write's outcome into an error
                log.exception("the audit event of a %s write was not recorded", operation)

        try:
            result = await write(progress)
        except asyncio.CancelledError:
            audit(OverrideWriteOutcome(progress.request_id, progress.attempts, error=CANCELLED))
            raise
        except Exception as e:
            message = _error_message(e, operation)
            audit(OverrideWriteOutcome(progress.request_id, progress.attempts, error=message))
            raise
        written = OverrideWriteOutcome(result.request_id, result.attempts, result.revision, result.changed)
        audit(written, result.public_key or public_key)
        return await self._written(result)

    @_domain_errors
    async def ListCRLs(
        self, request: pb.ListCRLsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListCRLsResponse:
        ca = await self._cert_authority(request.type)
        stored = await self.crls.stored(ca.ca_type)
        return pb.ListCRLsResponse(
            keys=[self._key_crl(pair.public_key_hash, pair.key.host_id, stored) for _, pair in ca.all_keys()]
        )

    @_domain_errors
    async def SignCRLs(
        self, request: pb.SignCRLsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.KeyCRL:
        await self.view.wait_ready(VIEW_TIMEOUT)
        ca_type = resolve_ca_type(request.type).name
        key_hash, signed = await self.crls.sign_now(ca_type, request.public_key)
        return self._key_crl(key_hash, signed.host_id, await self.crls.stored(ca_type))

    @_domain_errors
    async def RevokeCredential(
        self, request: pb.RevokeCredentialRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeCredentialResponse:
        await self.view.wait_ready(VIEW_TIMEOUT)
        ca_type = resolve_ca_type(request.type).name
        if bool(request.certificate) == bool(request.serial):
            raise ValidationError(["serial: give a serial or a certificate, not both or neither"])
        key_hash, serial, already, revision = await self.crls.revoke(
            ca_type, request.serial, request.public_key, request.certificate, _request_id(context)
        )
        keys = self.view.cert_authority(ca_type).all_keys()
        holder = next(p.key.host_id for _, p in keys if p.public_key_hash == key_hash)
        return pb.RevokeCredentialResponse(
            public_key_hash=key_hash,
            serial=serial,
            already_revoked=already,
            revision=revision,
            holder=self.view.node_names.get(holder, holder),
        )

    def _key_crl(self, key_hash: str, host_id: str, stored: CertAuthorityCRL) -> pb.KeyCRL:
        crls = stored.crls.get(key_hash) or KeyCRLs(0, "")
        return pb.KeyCRL(
            public_key_hash=key_hash,
            host_id=host_id,
            node_name=self.view.node_names.get(host_id, ""),
            crl_number=crls.crl_number,
            crl=crls.crl,
            overrides=[pb.OverrideCRL(fingerprint=f, crl=c) for f, c in sorted(crls.overrides.items())],
            revoked_serials=[r.serial for r in stored.revoked.get(key_hash, ())],
        )

    async def _written(self, result: WriteResult) -> pb.WriteResponse:
        """The reply to a write, sent once this node's view has it (read-your-writes on this node)."""
        if result.changed and not result.in_view:
            await self.view.caught_up(result.revision, VIEW_TIMEOUT)
        return pb.WriteResponse(
            revision=result.revision,
            attempts=result.attempts,
            changed=result.changed,
            public_key=result.public_key,
            request_id=result.request_id,
        )


def _shown_type(type_name: str) -> str:
    """The CA type an event names: the type `type_name` resolves to, else the name as sent (cut)."""
    try:
        return resolve_ca_type(type_name).name
    except ValidationError:
        return cut(type_name, MAX_QUOTED)


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The request id the caller sent in its metadata ("" when none: the write makes one)."""
    return next((value for key, value in context.invocation_metadata() or () if key == REQUEST_ID), "")


def _credential_request(request: pb.SignRequest) -> CredentialRequest:
    """A Sign request decoded and checked: the client's public key, the CA type, the user and ttl."""
    try:
        public_key = load_der_public_key(request.public_key)
    except (ValueError, UnsupportedAlgorithm):
        raise ValidationError(["public_key: not a DER SubjectPublicKeyInfo"]) from None
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValidationError([f"{KEY_RULE}, got {type(public_key).__name__.removeprefix('_')}"])
    ttl = dt.timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else DEFAULT_TTL
    return CredentialRequest(resolve_ca_type(request.type).name, request.user, public_key, ttl)
