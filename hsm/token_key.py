"""A `cryptography` RSA private key whose private half stays in the token: it can only sign."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding, PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, KeySerializationEncryption, PrivateFormat

from authsim.cluster.errors import KeyAccessError
from authsim.cluster.resources.key_ref import KeyRef
from authsim.hsm.keystore import KeyStore


class _SignOnlyRSAKey(rsa.RSAPrivateKey):
    """An RSA private-key object that only signs, SHA256-RSA-PKCS#1 v1.5 (what x509 CSR and certificate
    builders ask for); `_sign` makes the signature, `_name` names the key in errors."""

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        self._public_key = public_key

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    def sign(
        self,
        data: bytes,
        padding: AsymmetricPadding,
        algorithm: Prehashed | hashes.HashAlgorithm | NoDigestInfo,
    ) -> bytes:
        if not isinstance(padding, PKCS1v15):
            raise ValueError(f"{self._name()} signs only with PKCS1v15 padding, not {padding.name}")
        if isinstance(algorithm, (Prehashed, NoDigestInfo)):
            raise ValueError(
                f"{self._name()} hashes in the token (SHA256_RSA_PKCS): "
                f"pass the message and hashes.SHA256(), not {type(algorithm).__name__}"
            )
        if not isinstance(algorithm, hashes.SHA256):
            raise ValueError(f"{self._name()} signs only with SHA256, not {algorithm.name}")
        return self._sign(bytes(data))

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise KeyAccessError(f"{self._name()} is for signing only: it cannot decrypt")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise KeyAccessError(self._no_private_half())

    def private_bytes(
        self,
        encoding: Encoding,
        format: PrivateFormat,
        encryption_algorithm: KeySerializationEncryption,
    ) -> bytes:
        raise KeyAccessError(self._no_private_half())

    def __copy__(self) -> _SignOnlyRSAKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _SignOnlyRSAKey:
        return self

    def _name(self) -> str:
        raise NotImplementedError

    def _sign(self, data: bytes) -> bytes:
        raise NotImplementedError

    def _no_private_half(self) -> str:
        raise NotImplementedError


class TokenRSAPrivateKey(_SignOnlyRSAKey):
    """Signs with SHA256-RSA-PKCS#1 v1.5 in the node's token; usable by x509 CSR and certificate builders."""

    def __init__(self, store: KeyStore, ref: KeyRef, public_key: rsa.RSAPublicKey) -> None:
        super().__init__(public_key)
        self._store = store
        self._ref = ref

    @property
    def ref(self) -> KeyRef:
        """The token key this object signs with."""
        return self._ref

    def __repr__(self) -> str:
        return f"<TokenRSAPrivateKey host_id={self._ref.host_id} key_id={self._ref.key_id}>"

    def _name(self) -> str:
        return f"token key {self._ref.key_id}"

    def _sign(self, data: bytes) -> bytes:
        return self._store.sign(self._ref, data)

    def _no_private_half(self) -> str:
        return (
            f"private key material never leaves the token: key {self._ref.key_id} "
            f"of host {self._ref.host_id} stays in token {self._store.token_label}"
        )


class DraftRSAKey(_SignOnlyRSAKey):
    """Signs nothing: it keeps what `cryptography` gives it to sign (a certificate's to-be-signed part)
    and returns zeros of a signature's length, so that the signature can be made elsewhere (the node's
    signing worker) and put in their place (`with_signature`)."""

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        super().__init__(public_key)
        self.signed = b""

    def _name(self) -> str:
        return "draft key"

    def _sign(self, data: bytes) -> bytes:
        self.signed = data
        return bytes(self.key_size // 8)

    def _no_private_half(self) -> str:
        return "a draft key has no private half"


def with_signature(der: bytes, signature: bytes) -> bytes:
    """The DER of a certificate (or CRL) signed with a DraftRSAKey, its zeros replaced by `signature`:
    the signature is the end of the DER (a BIT STRING of the key's length, so no length changes)."""
    if len(der) < len(signature) or any(der[-len(signature) :]):
        raise ValueError("not signed with a draft key of this signature's length")
    return der[: -len(signature)] + signature
