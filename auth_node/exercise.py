"""Exercising a downstream target: issue a credential, open a session with it, record the event (SPEC §8)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.auth_node.events import EventRecorder, session_start_event
from authsim.auth_node.issuance import Credential, CredentialRequest
from authsim.auth_node.target_sessions import SessionResult, open_db_session, open_desktop_session
from authsim.cluster.errors import NotFoundError
from authsim.cluster.resources.ca_types import CA_TYPES

TARGET_TIMEOUT = 20.0  # seconds for a session on a downstream target (logons at one server take turns)
Issue = Callable[[Sequence[CredentialRequest]], Awaitable[list[Credential]]]


async def exercise(
    node: NodeConfig, recorder: EventRecorder, view: ClusterView, issue: Issue, ca_type: str, user: str
) -> dict[str, Any]:
    """A session on the target of `ca_type` as `user` with a fresh credential; the event recorded."""
    key = ec.generate_private_key(ec.SECP256R1())
    [credential] = await issue([CredentialRequest(ca_type, user, key.public_key())])
    kind = CA_TYPES[ca_type].target
    address = view.targets.get(kind)  # the view is ready once issue() returned
    if address is None:
        raise NotFoundError(
            f"no {kind} target is registered in cluster {node.cluster_name}: `authsim up` "
            "registers the targets it starts (docker-compose: the targets-trust service)"
        )
    smartcard = CA_TYPES[ca_type].smartcard_logon
    result = await _open_session(node, address, smartcard, credential, key, user)
    event = session_start_event(
        node.cluster_name,
        ca_type,
        user,
        credential,
        result.success,
        result.reason,
        result.resource_name,
        node.name,
    )
    await recorder.record_now(event)
    return event


async def _open_session(
    node: NodeConfig,
    address: str,
    smartcard: bool,
    credential: Credential,
    key: ec.EllipticCurvePrivateKey,
    user: str,
) -> SessionResult:
    server_ca = node.layout.server_ca.read_bytes()
    chain = credential.issuer.chain
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    open_session = open_desktop_session if smartcard else open_db_session
    return await open_session(address, server_ca, user, credential.pem, key_pem, chain, TARGET_TIMEOUT)
