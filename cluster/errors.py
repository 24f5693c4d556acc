"""The one exception tree of authsim: every domain error is an AuthSimError."""

from __future__ import annotations


class AuthSimError(Exception):
    """Base of every error authsim raises on purpose; its message is one line for the user."""


class ValidationError(AuthSimError):
    """Input breaks a rule; `problems` lists every broken rule as `field.path: rule`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class ConflictError(AuthSimError):
    """A conditional write lost: the stored revision is not the one the caller read."""

    def __init__(self, message: str, expected_revision: int = 0, actual_revision: int = 0) -> None:
        self.expected_revision = expected_revision
        self.actual_revision = actual_revision
        super().__init__(message)


class AlreadyExistsError(AuthSimError):
    """A create found the resource already there."""


class NotFoundError(AuthSimError):
    """The named resource, key or token does not exist."""


class KeyAccessError(AuthSimError):
    """A key cannot be used here: another node's key, a locked or missing token, a wrong PIN.

    For another node's key, `owner_host_id` is the host whose token holds it and `asking_host_id`
    the host that tried to use it.
    """

    def __init__(self, message: str, owner_host_id: str = "", asking_host_id: str = "") -> None:
        self.owner_host_id = owner_host_id
        self.asking_host_id = asking_host_id
        super().__init__(message)


class UnavailableError(AuthSimError):
    """A part of the cluster (etcd, a node) did not answer: retrying later may succeed."""


class StoreUnavailableError(UnavailableError):
    """The etcd cluster cannot be reached or did not answer in time."""


class NodeUnavailableError(UnavailableError):
    """An Auth node cannot be reached or did not answer in time."""


class StoreAccessError(AuthSimError):
    """etcd refused this client identity the key it asked for (etcd RBAC: outside its role's prefixes)."""


class ClusterError(AuthSimError):
    """The local cluster cannot be set up, started or stopped (missing binary, port, state dir)."""
