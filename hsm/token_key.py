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


class TokenRSAPrivateKey(rsa.RSAPrivateKey):
    """Signs with SHA256-RSA-PKCS#1 v1.5 in the node's token; usable by x509 CSR and certificate builders."""

    def __init__(self, store: KeyStore, ref: KeyRef, public_key: rsa.RSAPublicKey) -> None:
        self._store = store
        self._ref = ref
        self._public_key = public_key

    @property
    def ref(self) -> KeyRef:
        """The token key this object signs with."""
        return self._ref

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
            raise ValueError(
                f"token key {self._ref.key_id} signs only with PKCS1v15 padding, not {padding.name}"
            )
        if isinstance(algorithm, (Prehashed, NoDigestInfo)):
            raise ValueError(
                f"token key {self._ref.key_id} hashes in the token (SHA256_RSA_PKCS): "
                f"pass the message and hashes.SHA256(), not {type(algorithm).__name__}"
            )
        if not isinstance(algorithm, hashes.SHA256):
            raise ValueError(f"token key {self._ref.key_id} signs only with SHA256, not {algorithm.name}")
        return self._store.sign(self._ref, bytes(data))

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise KeyAccessError(f"token key {self._ref.key_id} is for signing only: it cannot decrypt")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise KeyAccessError(self._never_leaves())

    def private_bytes(
        self,
        encoding: Encoding,
        format: PrivateFormat,
        encryption_algorithm: KeySerializationEncryption,
    ) -> bytes:
        raise KeyAccessError(self._never_leaves())

    def __copy__(self) -> TokenRSAPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenRSAPrivateKey:
        return self

    def __repr__(self) -> str:
        return f"<TokenRSAPrivateKey host_id={self._ref.host_id} key_id={self._ref.key_id}>"

    def _never_leaves(self) -> str:
        return (
            f"private key material never leaves the token: key {self._ref.key_id} "
            f"of host {self._ref.host_id} stays in token {self._store.token_label}"
        )


class DraftRSAKey(rsa.RSAPrivateKey):
    """Signs nothing: it keeps what `cryptography` gives it to sign (a certificate's to-be-signed part)
    and returns zeros of a signature's length, so that the signature can be made elsewhere (the node's
    signing worker) and put in their place (`with_signature`)."""

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        self._public_key = public_key
        self.signed: bytes = b""

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
        if not isinstance(padding, PKCS1v15) or not isinstance(algorithm, hashes.SHA256):
            raise ValueError("token keys sign only SHA256 with PKCS1v15 padding")
        self.signed = bytes(data)
        return bytes(self.key_size // 8)

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise KeyAccessError("a draft key cannot decrypt")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise KeyAccessError("a draft key has no private numbers")

    def private_bytes(
        self,
        encoding: Encoding,
        format: PrivateFormat,
        encryption_algorithm: KeySerializationEncryption,
    ) -> bytes:
        raise KeyAccessError("a draft key has no private bytes")

    def __copy__(self) -> DraftRSAKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> DraftRSAKey:
        return self


def with_signature(der: bytes, signature: bytes) -> bytes:
    """The DER of a certificate (or CRL) signed with a DraftRSAKey, its zeros replaced by `signature`:
    the signature is the end of the DER (a BIT STRING of the key's length, so no length changes)."""
    if len(der) < len(signature) or any(der[-len(signature) :]):
        raise ValueError("not signed with a draft key of this signature's length")
    return der[: -len(signature)] + signature
