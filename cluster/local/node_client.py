"""A blocking gRPC client for one node, authenticated with the cluster's admin identity."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.auth_node.pb import authsim_pb2_grpc as pb_grpc
from authsim.cluster.errors import ClusterError, NodeUnavailableError
from authsim.cluster.mtls import NODE_TLS_NAME, TLSIdentity
from authsim.cluster.rpc_errors import ERROR_MARKER, REQUEST_ID, error_from_status

DEFAULT_TIMEOUT = 20.0  # seconds; every RPC has a deadline, longer than a node's own etcd retries


class NodeClient:
    """Talks to the node at `address`; refuses a node whose certificate does not chain to the cluster."""

    def __init__(self, address: str, identity: TLSIdentity, name: str = "", timeout: float = DEFAULT_TIMEOUT):
        self.address = address
        self.name = name or address
        self.timeout = timeout
        key, cert, server_ca = identity.read()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=server_ca, private_key=key, certificate_chain=cert
        )
        self._channel = grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", NODE_TLS_NAME)]
        )
        self._stub = pb_grpc.AuthServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn an RPC failure into the domain error the node meant, or a one-line transport error."""
        try:
            yield
        except grpc.RpcError as e:
            code: grpc.StatusCode = e.code()
            details: str = e.details() or ""
            if _from_node(e):
                raise error_from_status(code, details, tuple(e.trailing_metadata() or ())) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise NodeUnavailableError(
                    f"node {self.name} at {self.address} did not answer within {self.timeout:g}s; "
                    "if this was a write, its outcome is unknown: check with `authctl get`"
                ) from None
            unavailable = code == grpc.StatusCode.UNAVAILABLE
            error = NodeUnavailableError if unavailable else ClusterError
            raise error(f"node {self.name} at {self.address}: {code.name}: {details}") from None

    def health(self) -> str:
        """SERVING, NOT_SERVING or UNREACHABLE."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(), timeout=min(self.timeout, 3.0))
        except grpc.RpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def call(self, method: str, request: Any, request_id: str = "") -> Any:
        """Call AuthService.`method` with the deadline and a request id (a write records it in the
        resource's status.last_write; "" sends a fresh one); failures come back as domain errors."""
        metadata = ((REQUEST_ID, request_id or uuid.uuid4().hex),)
        with self._errors():
            return getattr(self._stub, method)(request, timeout=self.timeout, metadata=metadata)
        raise AssertionError("unreachable")

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        """Call the server-streaming AuthService.`method` without a deadline (it runs until the caller
        stops iterating, which cancels it) and yield its replies; failures come back as domain errors."""
        with self._errors():
            replies = getattr(self._stub, method)(request)
            try:
                yield from replies
            finally:
                replies.cancel()

    def get_cert_authority(self, ca_type: str) -> pb.CertAuthority:
        reply: pb.CertAuthority = self.call("GetCertAuthority", pb.GetCertAuthorityRequest(type=ca_type))
        return reply

    def node_status(self) -> pb.NodeStatus:
        reply: pb.NodeStatus = self.call("GetNodeStatus", pb.NodeStatusRequest())
        return reply


def _from_node(error: Any) -> bool:
    """True when our servicer set the status (it marks domain errors in the trailing metadata)."""
    trailers = error.trailing_metadata() or ()
    return any(key == ERROR_MARKER for key, _ in trailers)
