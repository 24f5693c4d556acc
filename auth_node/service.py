"""The AuthService servicer: each method decodes, calls the domain, encodes; errors map in one table."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from auth_node.ca_keys import load_cert_authority
from auth_node.config import NodeConfig
from auth_node.pb import authsim_pb2 as pb
from auth_node.pb import authsim_pb2_grpc as pb_grpc
from cluster.ca_types import CA_TYPES, resolve_ca_type
from cluster.errors import AuthSimError, NotFoundError
from cluster.rpc_errors import ERROR_MARKER, status_code_for
from cluster.store import EtcdStore
from hsm import Pkcs11KeyStore

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def _domain_errors(method: Method[Req, Resp]) -> Method[Req, Resp]:
    """Answer a domain error with its status code and one-line message."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await method(self, request, context)
        except AuthSimError as e:
            await context.abort(
                status_code_for(e), str(e), trailing_metadata=((ERROR_MARKER, type(e).__name__),)
            )
            raise AssertionError("unreachable") from e

    return wrapper


class AuthService(pb_grpc.AuthServiceServicer):  # type: ignore[misc]
    """One node's API: reads through to etcd, signs only with keys in this node's token."""

    def __init__(self, node: NodeConfig, store: EtcdStore, keystore: Pkcs11KeyStore) -> None:
        self.node = node
        self.store = store
        self.keystore = keystore

    @_domain_errors
    async def GetCertAuthority(
        self, request: pb.GetCertAuthorityRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CertAuthority:
        ca_type = resolve_ca_type(request.type).name
        ca = await load_cert_authority(self.store, self.node.cluster_name, ca_type)
        if ca is None:
            raise NotFoundError(f"cert_authority {ca_type} of cluster {self.node.cluster_name} not found")
        return ca.to_proto()

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
            ca = await load_cert_authority(self.store, self.node.cluster_name, ca_type)
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
        return status
