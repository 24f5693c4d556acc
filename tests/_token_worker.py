"""Token work for tests in a process of its own: SoftHSM reads SOFTHSM2_CONF once per process.

Usage: python _token_worker.py REQUEST_JSON, with SOFTHSM2_CONF set. Prints one JSON object: the
action's result, or {"error": class name, "message": ...} for an AuthSimError.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, KeyType, ObjectClass

from authsim.cluster.errors import AuthSimError, KeyAccessError
from authsim.cluster.resources.key_ref import KeyRef
from authsim.cluster.resources.x509 import ca_certificate_builder, public_key_hash
from authsim.hsm import Pkcs11KeyStore, TokenConfig, load_token_config

Request = dict[str, Any]


def open_store(config: TokenConfig, request: Request) -> Pkcs11KeyStore:
    """The node's key store; a "pin" in the request replaces the one in the pin file."""
    if "pin" not in request:
        return Pkcs11KeyStore.open(config, request["host_id"], request["node_name"])
    store = Pkcs11KeyStore(
        config.module_path,
        config.label,
        request["pin"],
        request["host_id"],
        request["node_name"],
        pin_file=config.pin_file,
    )
    try:
        store.connect()
    except AuthSimError:
        store.close()
        raise
    return store


def generate(store: Pkcs11KeyStore, request: Request) -> dict[str, Any]:
    ref, public_key = store.generate_rsa_key()
    return {"ref": ref.to_dict(), "public_key_hash": public_key_hash(public_key)}


def list_keys(store: Pkcs11KeyStore, request: Request) -> dict[str, Any]:
    ref = KeyRef.from_dict(request["ref"]) if "ref" in request else None
    return {
        "keys": [key.to_dict() for key in store.list_keys()],
        "holds": store.holds(ref) if ref else None,
        "public_key_hash": public_key_hash(store.public_key(ref)) if ref else None,
    }


def use_key(store: Pkcs11KeyStore, request: Request) -> dict[str, Any]:
    """Try private_key() and sign() with the request's ref; report each outcome."""
    ref = KeyRef.from_dict(request["ref"])
    try:
        outcomes: dict[str, Any] = {"holds": store.holds(ref)}
    except AuthSimError as e:
        outcomes = {"holds": f"{type(e).__name__}: {e}"}
    attempts: dict[str, Callable[[], object]] = {
        "private_key": lambda: store.private_key(ref),
        "sign": lambda: store.sign(ref, b"data"),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            outcomes[name] = "ok"
        except KeyAccessError as e:
            outcomes[name] = f"{type(e).__name__}: {e}"
            outcomes[f"{name}_hosts"] = {"owner": e.owner_host_id, "asking": e.asking_host_id}
        except AuthSimError as e:
            outcomes[name] = f"{type(e).__name__}: {e}"
    return outcomes


def delete(store: Pkcs11KeyStore, request: Request) -> dict[str, Any]:
    ref, _ = store.generate_rsa_key()
    held_before = store.holds(ref)
    store.delete_key(ref)
    return {"held_before": held_before, "held_after": store.holds(ref), "keys": len(store.list_keys())}


def sign_from_threads(store: Pkcs11KeyStore, request: Request) -> dict[str, Any]:
    """Sign from several threads at once; every signature must verify and every call ran on one thread."""
    ref = KeyRef.from_dict(request["ref"])
    key = store.private_key(ref)
    token_threads = set()
    verified = []

    def worker(n: int) -> None:
        for i in range(5):
            data = f"{n}-{i}".encode()
            signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
            key.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            token_threads.add(store.run(lambda: threading.current_thread().name))
            verified.append(data)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"verified": len(verified), "token_threads": sorted(token_threads)}


def make_ca(store: Pkcs11KeyStore, request: Request) -> dict[str, Any]:
    """Write a self-signed CA cert (signed via run()) and a CSR (signed from this thread) to out_dir."""
    ref = KeyRef.from_dict(request["ref"])
    key = store.private_key(ref)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, request["cluster_name"]),
            x509.NameAttribute(NameOID.COMMON_NAME, request["cluster_name"]),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = ca_certificate_builder(
        name, name, key.public_key(), now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=1)
    )
    cert = store.run(builder.sign, key, hashes.SHA256())
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    out_dir = Path(request["out_dir"])
    (out_dir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out_dir / "csr.pem").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return {"public_key_hash": public_key_hash(store.public_key(ref))}


def inspect(config: TokenConfig, request: Request) -> dict[str, Any]:
    """Read the key's attributes with plain python-pkcs11, independently of the key store."""
    token = pkcs11.lib(config.module_path).get_token(token_label=config.label)
    with token.open(user_pin=config.pin()) as session:
        key_id = bytes.fromhex(request["ref"]["key_id"])
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key_id)
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=key_id)
        try:
            private[Attribute.PRIVATE_EXPONENT]
            exponent = "readable"
        except pkcs11.PKCS11Error as e:
            exponent = type(e).__name__
        attrs = [
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.SIGN,
        ]
        return {
            "private": {a.name: bool(private[a]) for a in attrs},
            "private_label": private.label,
            "public_label": public.label,
            "id_len": len(private.id),
            "public_can_verify": bool(public[Attribute.VERIFY]),
            "private_exponent": exponent,
        }


def duplicate(config: TokenConfig, request: Request) -> dict[str, Any]:
    """Put two key pairs with one CKA_ID and label in the token (plain python-pkcs11), then use that id."""
    key_id = bytes(16)
    token = pkcs11.lib(config.module_path).get_token(token_label=config.label)
    with token.open(rw=True, user_pin=config.pin()) as session:
        for _ in range(2):
            session.generate_keypair(KeyType.RSA, 1024, id=key_id, label=request["host_id"], store=True)
    return use_key_with(config, {**request, "ref": {"host_id": request["host_id"], "key_id": key_id.hex()}})


def use_key_with(config: TokenConfig, request: Request) -> dict[str, Any]:
    with open_store(config, request) as store:
        return use_key(store, request)


STORE_ACTIONS: dict[str, Callable[[Pkcs11KeyStore, Request], dict[str, Any]]] = {
    "generate": generate,
    "list": list_keys,
    "use": use_key,
    "delete": delete,
    "threads": sign_from_threads,
    "ca": make_ca,
}


TOKEN_ACTIONS: dict[str, Callable[[TokenConfig, Request], dict[str, Any]]] = {
    "inspect": inspect,
    "duplicate": duplicate,
}


def main(argv: list[str]) -> int:
    request: Request = json.loads(argv[1])
    config = load_token_config(Path(request["node_dir"]), request["label"], request.get("module_path"))
    try:
        if request["action"] in TOKEN_ACTIONS:
            result = TOKEN_ACTIONS[request["action"]](config, request)
        else:
            with open_store(config, request) as store:
                result = STORE_ACTIONS[request["action"]](store, request)
    except AuthSimError as e:
        result = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
