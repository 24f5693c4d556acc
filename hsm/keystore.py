"""The key-store interface a node is written against: generate, use and delete keys in its own token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import rsa

from authsim.cluster.resources.key_ref import KeyRef

T = TypeVar("T")


class KeyStore(Protocol):
    """The keys of one node (`host_id`) in its own token. Another host's key is refused with a
    KeyAccessError naming both hosts; a reference that matches two token objects is an error."""

    host_id: str
    node_name: str
    token_label: str

    def generate_rsa_key(self) -> tuple[KeyRef, rsa.RSAPublicKey]:
        """A new RSA-2048 key pair made in the token; the private half never leaves it."""
        ...

    def holds(self, ref: KeyRef) -> bool:
        """True if `ref` is this node's and its private key is in the token."""
        ...

    def public_key(self, ref: KeyRef) -> rsa.RSAPublicKey: ...

    def private_key(self, ref: KeyRef) -> rsa.RSAPrivateKey:
        """A `cryptography` private key whose signatures are made in the token."""
        ...

    def sign(self, ref: KeyRef, data: bytes) -> bytes:
        """SHA256-RSA-PKCS#1 v1.5 signature of `data`, made in the token."""
        ...

    def list_keys(self) -> list[KeyRef]: ...

    def delete_key(self, ref: KeyRef) -> None: ...

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` where the token may be used (signing with `private_key` keys needs it)."""
        ...

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T: ...

    def close(self) -> None: ...


@runtime_checkable
class HsmProbe(Protocol):
    """A key store whose HSM can be checked, and reconnected once it answers again (a node's health)."""

    reconnects: int  # how many times `probe` reconnected (sessions opened before it are gone)

    @property
    def available(self) -> bool:
        """False from a token call that failed or ran past its deadline until `probe` reconnected."""
        ...

    def failed(self, why: str) -> None:
        """A token call made elsewhere (a signing worker) failed or missed its deadline: unavailable
        until `probe` reconnects."""
        ...

    def probe(self) -> None:
        """Return when the HSM answers (reconnecting first if it did not); HsmUnavailableError if not."""
        ...
