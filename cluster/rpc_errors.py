"""One table mapping domain errors to gRPC status codes, used by the node and by the CLI."""

from __future__ import annotations

import grpc

from authsim.cluster.errors import (
    AlreadyExistsError,
    AuthSimError,
    ConflictError,
    KeyAccessError,
    NotFoundError,
    OutcomeUnknownError,
    UnavailableError,
    ValidationError,
)

ERROR_MARKER = "authsim-error"  # trailing metadata key: the status came from a domain error
OWNER_HOST_ID = "authsim-owner-host-id"  # KeyAccessError's fields, as trailing metadata
ASKING_HOST_ID = "authsim-asking-host-id"
REQUEST_ID = (
    "authsim-request-id"  # a write's id: request metadata from the client, OutcomeUnknownError's field
)
Metadata = tuple[tuple[str, str], ...]

STATUS_CODES: dict[type[AuthSimError], grpc.StatusCode] = {
    ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    ConflictError: grpc.StatusCode.ABORTED,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    KeyAccessError: grpc.StatusCode.PERMISSION_DENIED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    # gRPC's own words: "may be returned even if the operation has completed successfully"
    OutcomeUnknownError: grpc.StatusCode.DEADLINE_EXCEEDED,
    AuthSimError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code_for(error: AuthSimError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (its nearest class in the table)."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.UNKNOWN


def error_metadata(error: AuthSimError) -> Metadata:
    """The trailing metadata that carries `error` to the client: its class and its fields."""
    fields: Metadata = ((ERROR_MARKER, type(error).__name__),)
    if isinstance(error, KeyAccessError) and error.owner_host_id:
        fields += ((OWNER_HOST_ID, error.owner_host_id), (ASKING_HOST_ID, error.asking_host_id))
    if isinstance(error, OutcomeUnknownError) and error.request_id:
        fields += ((REQUEST_ID, error.request_id),)
    return fields


def error_from_status(code: grpc.StatusCode, details: str, metadata: Metadata = ()) -> AuthSimError:
    """The domain error a node meant when it answered with `code`, `details` and trailing `metadata`."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValidationError([details], details)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        fields = dict(metadata)
        return KeyAccessError(details, fields.get(OWNER_HOST_ID, ""), fields.get(ASKING_HOST_ID, ""))
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return OutcomeUnknownError(details, dict(metadata).get(REQUEST_ID, ""))
    for cls, mapped in STATUS_CODES.items():
        if mapped == code:
            return cls(details)
    return AuthSimError(f"{code.name.lower()}: {details}")
