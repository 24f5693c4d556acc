"""One table mapping domain errors to gRPC status codes, used by the node and by the CLI."""

from __future__ import annotations

import grpc

from authsim.cluster.errors import (
    AlreadyExistsError,
    AuthSimError,
    ConflictError,
    KeyAccessError,
    NotFoundError,
    StoreUnavailableError,
    ValidationError,
)

ERROR_MARKER = "authsim-error"  # trailing metadata key: the status came from a domain error

STATUS_CODES: dict[type[AuthSimError], grpc.StatusCode] = {
    ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    ConflictError: grpc.StatusCode.ABORTED,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    KeyAccessError: grpc.StatusCode.PERMISSION_DENIED,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    AuthSimError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code_for(error: AuthSimError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (its nearest class in the table)."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.UNKNOWN


def error_from_status(code: grpc.StatusCode, details: str) -> AuthSimError:
    """The domain error a node meant when it answered with `code` and `details`."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValidationError([details])
    for cls, mapped in STATUS_CODES.items():
        if mapped == code:
            return cls(details)
    return AuthSimError(f"{code.name.lower()}: {details}")
