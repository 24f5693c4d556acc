"""The PKCS#11 key store: one session and one thread per node process, keys found by their KeyRef."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from authsim.cluster.errors import KeyAccessError, NotFoundError
from authsim.cluster.resources.key_ref import KeyRef
from authsim.hsm.provision import TokenConfig
from authsim.hsm.token_key import TokenRSAPrivateKey

T = TypeVar("T")
_KIND = {ObjectClass.PRIVATE_KEY: "private", ObjectClass.PUBLIC_KEY: "public"}

RSA_KEY_BITS = 2048
_KEY_ID_BYTES = 16


class Pkcs11KeyStore:  # implements authsim.hsm.keystore.KeyStore
    """The keys in this node's token. All token calls run on one thread, over one rw user session."""

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: str,
        host_id: str,
        node_name: str,
        *,
        pin_file: Path | None = None,
    ) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.host_id = host_id
        self.node_name = node_name
        self._pin = pin
        self._pin_file = pin_file
        self._session: Any = None
        self._found: dict[tuple[ObjectClass, KeyRef], Any] = {}  # token thread only
        self._public_keys: dict[KeyRef, rsa.RSAPublicKey] = {}
        self._token_thread: int | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="token", initializer=self._mark_token_thread
        )

    @classmethod
    def open(cls, config: TokenConfig, host_id: str, node_name: str) -> Pkcs11KeyStore:
        """Open the token of a provisioned node; sets SOFTHSM2_CONF for this process if it is unset."""
        conf = os.environ.setdefault("SOFTHSM2_CONF", str(config.softhsm_conf))
        if Path(conf).resolve() != config.softhsm_conf.resolve():
            raise KeyAccessError(
                f"node {node_name}: this process uses SOFTHSM2_CONF={conf}, not the node's "
                f"{config.softhsm_conf}: SoftHSM reads it once per process, so run one process per node"
            )
        pin = config.pin()
        store = cls(config.module_path, config.label, pin, host_id, node_name, pin_file=config.pin_file)
        try:
            store.connect()
        except BaseException:
            store.close()
            raise
        return store

    def connect(self) -> None:
        """Load the PKCS#11 module, find the token and log in, all on the token thread."""
        self._call(self._connect)

    def close(self) -> None:
        """Close the session and stop the token thread; the store cannot be used afterwards."""
        if self._closed:
            return
        if self._session is not None:
            self.run(self._session.close)
            self._session = None
        self._closed = True
        self._executor.shutdown(wait=True)
        self._token_thread = None

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the token thread and return its result (directly if already there)."""
        if self._closed:
            raise KeyAccessError(f"node {self.node_name}: key store for token {self.token_label} is closed")
        if threading.get_ident() == self._token_thread:
            return fn(*args)
        return self._executor.submit(fn, *args).result()

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T:
        """`run` for event-loop code: awaits the token thread without tying up another thread."""
        if self._closed:
            raise KeyAccessError(f"node {self.node_name}: key store for token {self.token_label} is closed")
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """`run`, with PKCS#11 failures translated into KeyAccessError at this boundary."""
        try:
            return self.run(fn, *args)
        except pkcs11.PKCS11Error as e:
            self.run(self._found.clear)  # a handle may be stale (token gone): search again next time
            detail = f"{type(e).__name__} {e}".strip()
            raise KeyAccessError(
                f"node {self.node_name}: token {self.token_label}: {detail} (was the token removed? "
                "restart the node once it is back)"
            ) from e

    def generate_rsa_key(self) -> tuple[KeyRef, rsa.RSAPublicKey]:
        """Generate an RSA-2048 key pair inside the token; the private half never leaves it."""
        return self._call(self._generate_rsa_key)

    def holds(self, ref: KeyRef) -> bool:
        """True if `ref` is this node's and its private key is in the token."""
        if ref.host_id != self.host_id:
            return False
        return self._call(lambda: self._one(ObjectClass.PRIVATE_KEY, ref) is not None)

    def public_key(self, ref: KeyRef) -> rsa.RSAPublicKey:
        """The public half of a key in this node's token."""
        self._check_own(ref)
        return self._call(self._public_key, ref)

    def private_key(self, ref: KeyRef) -> TokenRSAPrivateKey:
        """A `cryptography` private key whose signing happens in this node's token."""
        return TokenRSAPrivateKey(self, ref, self.public_key(ref))

    def sign(self, ref: KeyRef, data: bytes) -> bytes:
        """SHA256-RSA-PKCS#1 v1.5 signature of `data`, made in the token."""
        self._check_own(ref)
        return self._call(self._sign, ref, data)

    def list_keys(self) -> list[KeyRef]:
        """References to every private key of this host in the token."""
        return self._call(self._list_keys)

    def delete_key(self, ref: KeyRef) -> None:
        """Destroy both halves of a key in this node's token."""
        self._check_own(ref)
        self._call(self._delete_key, ref)

    # Everything below runs on the token thread.

    def _mark_token_thread(self) -> None:
        self._token_thread = threading.get_ident()

    def _connect(self) -> None:
        conf = os.environ.get("SOFTHSM2_CONF", "<unset>")
        where = f"node {self.node_name}: token {self.token_label}"
        if not Path(self.module_path).exists():
            raise KeyAccessError(f"{where}: PKCS#11 module {self.module_path} does not exist")
        try:
            lib = pkcs11.lib(self.module_path)
        except pkcs11.PKCS11Error as e:
            raise KeyAccessError(f"{where}: cannot load PKCS#11 module {self.module_path}: {e}") from e
        try:
            token = lib.get_token(token_label=self.token_label)
        except pkcs11.NoSuchToken:
            raise KeyAccessError(
                f"node {self.node_name}: no token labelled {self.token_label} "
                f"(SOFTHSM2_CONF={conf}, module {self.module_path})"
            ) from None
        except pkcs11.MultipleTokensReturned:
            raise KeyAccessError(f"{where}: several tokens carry this label (SOFTHSM2_CONF={conf})") from None
        try:
            self._session = token.open(rw=True, user_pin=self._pin)
        except (pkcs11.PinIncorrect, pkcs11.PinLenRange, pkcs11.PinInvalid):
            pin_from = f"pin file {self._pin_file}" if self._pin_file else "PIN given by the caller"
            raise KeyAccessError(
                f"node {self.node_name}: wrong PIN for token {self.token_label} ({pin_from})"
            ) from None
        except pkcs11.PinLocked:
            raise KeyAccessError(f"{where}: the user PIN is locked") from None

    def _check_own(self, ref: KeyRef) -> None:
        if ref.host_id != self.host_id:
            raise KeyAccessError(
                f"key {ref.key_id} belongs to host {ref.host_id}, this node is host {self.host_id} "
                f"({self.node_name}): a node signs only with keys in its own token",
                owner_host_id=ref.host_id,
                asking_host_id=self.host_id,
            )

    def _objects(self, object_class: ObjectClass, ref: KeyRef) -> Iterator[Any]:
        return iter(self._session.get_objects(self._template(object_class, ref)))

    def _template(self, object_class: ObjectClass, ref: KeyRef) -> dict[Attribute, Any]:
        return {
            Attribute.CLASS: object_class,
            Attribute.KEY_TYPE: KeyType.RSA,
            Attribute.LABEL: self.host_id,
            Attribute.ID: bytes.fromhex(ref.key_id),
        }

    def _one(self, object_class: ObjectClass, ref: KeyRef) -> Any:
        """The one token object matching `ref`, None if there is none; two or more is an error."""
        found = list(itertools.islice(self._objects(object_class, ref), 2))
        if len(found) > 1:
            raise KeyAccessError(
                f"token {self.token_label} of node {self.node_name} holds more than one "
                f"{_KIND[object_class]} key object with CKA_LABEL={self.host_id} and CKA_ID={ref.key_id}: "
                "a key reference must name exactly one key"
            )
        return found[0] if found else None

    def _find(self, object_class: ObjectClass, ref: KeyRef) -> Any:
        """The token object, found once and then kept (a search costs as much as a signature)."""
        cached = self._found.get((object_class, ref))
        if cached is not None:
            return cached
        key = self._one(object_class, ref)
        if key is None:
            raise NotFoundError(
                f"key {ref.key_id} ({_KIND[object_class]} half) is not in token {self.token_label} "
                f"of node {self.node_name}"
            )
        self._found[(object_class, ref)] = key
        return key

    def _generate_rsa_key(self) -> tuple[KeyRef, rsa.RSAPublicKey]:
        key_id = os.urandom(_KEY_ID_BYTES)
        public, _ = self._session.generate_keypair(
            KeyType.RSA,
            RSA_KEY_BITS,
            id=key_id,
            label=self.host_id,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            private_template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.PRIVATE: True,
            },
        )
        return KeyRef(self.host_id, key_id.hex()), _rsa_public_key(public)

    def _public_key(self, ref: KeyRef) -> rsa.RSAPublicKey:
        if ref not in self._public_keys:
            self._public_keys[ref] = _rsa_public_key(self._find(ObjectClass.PUBLIC_KEY, ref))
        return self._public_keys[ref]

    def _sign(self, ref: KeyRef, data: bytes) -> bytes:
        key = self._find(ObjectClass.PRIVATE_KEY, ref)
        return bytes(key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))

    def _list_keys(self) -> list[KeyRef]:
        template = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.KEY_TYPE: KeyType.RSA,
            Attribute.LABEL: self.host_id,
        }
        key_ids = sorted(bytes(key[Attribute.ID]).hex() for key in self._session.get_objects(template))
        return [KeyRef(self.host_id, key_id) for key_id in key_ids]

    def _delete_key(self, ref: KeyRef) -> None:
        self._find(ObjectClass.PRIVATE_KEY, ref).destroy()
        self._found.clear()
        for public in list(self._objects(ObjectClass.PUBLIC_KEY, ref)):
            public.destroy()


def _rsa_public_key(key: Any) -> rsa.RSAPublicKey:
    """A `cryptography` public key from a token public-key object's modulus and exponent."""
    n = int.from_bytes(key[Attribute.MODULUS], "big")
    e = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(e, n).public_key()
