"""The PKCS#11 key store: one session and one thread per node process, keys found by their KeyRef.

Every token call has a deadline (`call_timeout`). A call that runs past it means the HSM hangs: the
store counts it unavailable, cuts the hung call through the HSM process's socket (shutdown, so the
call returns with an error), and fails calls at once until `probe` reconnects: old session and key
objects dropped without closing them (a restarted server reuses their handle numbers), the library
re-initialised, the token opened again with the PIN, keys found again on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from authsim.cluster.errors import AuthSimError, HsmUnavailableError, KeyAccessError, NotFoundError
from authsim.cluster.resources.key_ref import KeyRef
from authsim.hsm.provision import SERVER_ADDRESS_ENV, TokenConfig
from authsim.hsm.signing_process import SigningProcess
from authsim.hsm.token_key import TokenRSAPrivateKey

T = TypeVar("T")
_KIND = {ObjectClass.PRIVATE_KEY: "private", ObjectClass.PUBLIC_KEY: "public"}

RSA_KEY_BITS = 2048
_KEY_ID_BYTES = 16
DEFAULT_CALL_TIMEOUT = 3.0  # seconds a token call may take before the HSM counts as not answering


class Pkcs11KeyStore:  # implements authsim.hsm.keystore.KeyStore and HsmProbe
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
        server_socket: Path | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.host_id = host_id
        self.node_name = node_name
        self.server_socket = server_socket  # the HSM process's socket; None: the module runs in-process
        self.call_timeout = call_timeout
        self._pin = pin
        self._pin_file = pin_file
        self._lib: Any = None
        self._session: Any = None
        self._found: dict[tuple[ObjectClass, KeyRef], Any] = {}  # token thread only
        self._public_keys: dict[KeyRef, rsa.RSAPublicKey] = {}
        self._token_thread: int | None = None
        self._running_since: float | None = None  # when the call now on the token thread started
        self._unavailable: str | None = None  # why the HSM counts as unavailable; None while it answers
        self.reconnects = 0  # how many times `probe` reconnected: sessions opened before are gone
        self._closed = False
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="token", initializer=self._mark_token_thread
        )

    @classmethod
    def open(
        cls, config: TokenConfig, host_id: str, node_name: str, *, call_timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> Pkcs11KeyStore:
        """Open the token of a provisioned node: through its HSM process when `config` names one
        (sets P11_KIT_SERVER_ADDRESS for this process if unset), else in-process (sets SOFTHSM2_CONF)."""
        if config.server_socket is None:
            _claim_env("SOFTHSM2_CONF", str(config.softhsm_conf), node_name, "SoftHSM reads it")
        else:
            _claim_env(SERVER_ADDRESS_ENV, config.server_address(), node_name, "p11-kit's client reads it")
        pin = config.pin()
        store = cls(
            config.node_module,
            config.label,
            pin,
            host_id,
            node_name,
            pin_file=config.pin_file,
            server_socket=config.server_socket,
            call_timeout=call_timeout,
        )
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
        if self._session is not None and self._unavailable is None:
            with contextlib.suppress(AuthSimError, pkcs11.PKCS11Error):
                self.run(self._session.close)
        self._session = None
        self._closed = True
        self._cut()  # a call that still hangs returns
        self._executor.shutdown(wait=self._running_since is None)
        self._token_thread = None

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def available(self) -> bool:
        """False from a call that failed or ran past its deadline until `probe` reconnected."""
        return self._unavailable is None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the token thread and return its result (directly if already there).
        HsmUnavailableError when it does not finish within `call_timeout`, or at once while the HSM
        counts as unavailable."""
        self._check_open()
        if threading.get_ident() == self._token_thread:
            return fn(*args)
        self._check_available()
        return self._within_deadline(fn, *args)

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T:
        """`run` for event-loop code: awaits the token thread without tying up another thread."""
        self._check_open()
        self._check_available()
        future = self._executor.submit(self._timed, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.call_timeout)
        except asyncio.TimeoutError:
            raise self._not_answering(future) from None

    def failed(self, why: str) -> None:
        """A token call made elsewhere (the signing worker) failed or missed its deadline: the HSM
        counts as unavailable until `probe` reconnects."""
        if self._unavailable is None:
            self._unavailable = why

    def signing_process(self) -> SigningProcess:
        """A signing worker of this token (started on first use): its own process, session and GIL."""
        return SigningProcess(
            self.module_path, self.token_label, self._pin, self.host_id, self.node_name, self.call_timeout
        )

    def probe(self) -> None:
        """Check that the HSM answers (a key search); while it counts as unavailable, reconnect
        instead. HsmUnavailableError when it does not answer."""
        self._check_open()
        if self._unavailable is None:
            self._call(self._ping)
            return
        if self._running_since is not None:  # a call still hangs: cut it before re-initialising
            self._cut()
        try:
            self._within_deadline(self._reconnect)
        except HsmUnavailableError:
            raise
        except (AuthSimError, pkcs11.PKCS11Error) as e:
            detail = f"{type(e).__name__} {e}".strip()
            raise HsmUnavailableError(f"{self._hsm} is unavailable: reconnecting failed: {detail}") from e
        self.reconnects += 1
        self._unavailable = None

    @property
    def _hsm(self) -> str:
        return f"{self.node_name}'s HSM"

    def _check_open(self) -> None:
        if self._closed:
            raise KeyAccessError(f"node {self.node_name}: key store for token {self.token_label} is closed")

    def _check_available(self) -> None:
        if self._unavailable is not None:
            raise HsmUnavailableError(
                f"{self._hsm} is unavailable ({self._unavailable}); the node reconnects once it answers"
            )

    def _within_deadline(self, fn: Callable[..., T], *args: Any) -> T:
        future = self._executor.submit(self._timed, fn, *args)
        try:
            return future.result(timeout=self.call_timeout)
        except concurrent.futures.TimeoutError:
            raise self._not_answering(future) from None

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        """On the token thread: `fn(*args)`, its start time kept while it runs."""
        self._running_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self._running_since = None

    def _not_answering(self, future: concurrent.futures.Future[Any]) -> HsmUnavailableError:
        """The error for a caller whose call missed its deadline. Its call never runs if it still waits;
        when the call on the token thread has run for half the deadline or more, the HSM hangs: it counts
        as unavailable and the call is cut through the socket."""
        future.cancel()
        since = self._running_since
        if since is not None and time.monotonic() - since >= self.call_timeout / 2:
            self._unavailable = f"did not answer within {self.call_timeout:g} s"
            self._cut()
        return HsmUnavailableError(f"{self._hsm} did not answer within {self.call_timeout:g} s")

    def _cut(self) -> None:
        """Shut down this process's connections to the HSM process: a call waiting on one returns."""
        if self.server_socket is not None:
            shut_connections(self.server_socket)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """`run`, with PKCS#11 failures (the HSM gone, a session lost) making the HSM unavailable and
        raising HsmUnavailableError at this boundary."""
        try:
            return self.run(fn, *args)
        except pkcs11.PKCS11Error as e:
            if self._unavailable is None:  # else it was cut after a hang: that is the story to tell
                self._unavailable = f"failed: {type(e).__name__} {e}".strip()
            raise HsmUnavailableError(
                f"{self._hsm} {self._unavailable} (node {self.node_name}, token {self.token_label}); "
                "the node reconnects once it answers"
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
        where = f"node {self.node_name}: token {self.token_label}"
        if not Path(self.module_path).exists():
            raise KeyAccessError(f"{where}: PKCS#11 module {self.module_path} does not exist")
        try:
            self._lib = pkcs11.lib(self.module_path)
        except pkcs11.PKCS11Error as e:
            raise KeyAccessError(f"{where}: cannot load PKCS#11 module {self.module_path}: {e}") from e
        self._log_in()

    def _reconnect(self) -> None:
        """The recovery sequence: cut what is left of the old connection, drop the old session and key
        objects without closing them, re-initialise the library, open the token again with the PIN."""
        self._cut()
        self._session = None
        self._found.clear()
        self._lib.reinitialize()
        self._log_in()

    def _ping(self) -> None:
        """A key search in the token: answers only when the HSM does."""
        template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: self.host_id}
        list(itertools.islice(self._session.get_objects(template), 1))

    def _log_in(self) -> None:
        conf = f"SOFTHSM2_CONF={os.environ.get('SOFTHSM2_CONF', '<unset>')}"
        if self.server_socket is not None:
            conf = f"HSM process at {self.server_socket}"
        where = f"node {self.node_name}: token {self.token_label}"
        try:
            token = self._lib.get_token(token_label=self.token_label)
        except pkcs11.NoSuchToken:
            raise KeyAccessError(
                f"node {self.node_name}: no token labelled {self.token_label} "
                f"({conf}, module {self.module_path})"
            ) from None
        except pkcs11.MultipleTokensReturned:
            raise KeyAccessError(f"{where}: several tokens carry this label ({conf})") from None
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


def _claim_env(name: str, value: str, node_name: str, why: str) -> None:
    """Set `name` for this process unless it is set; KeyAccessError when it names something else."""
    current = os.environ.setdefault(name, value)
    if current != value and not (
        name == "SOFTHSM2_CONF" and Path(current).resolve() == Path(value).resolve()
    ):
        raise KeyAccessError(
            f"node {node_name}: this process uses {name}={current}, not the node's {value}: {why} once "
            "per process, so run one process per node"
        )


def shut_connections(server_socket: Path) -> int:
    """shutdown(SHUT_RDWR) every connection of this process to the Unix socket `server_socket` (found
    by its peer's name): a call blocked on one returns with an error. Returns how many there were."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:  # a duplicate: closing it keeps the fd
                if sock.family == socket.AF_UNIX and sock.getpeername() == str(server_socket):
                    sock.shutdown(socket.SHUT_RDWR)
                    count += 1
    return count


def _rsa_public_key(key: Any) -> rsa.RSAPublicKey:
    """A `cryptography` public key from a token public-key object's modulus and exponent."""
    n = int.from_bytes(key[Attribute.MODULUS], "big")
    e = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(e, n).public_key()
