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
