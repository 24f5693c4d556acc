"""TokenSigner: concurrent requests share hand-overs to the token thread, each gets its own result or
error. A software key on a real thread stands in for the token here (the node tests sign in SoftHSM)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from authsim.auth_node.token_signer import TokenSigner
from authsim.cluster.errors import KeyAccessError
from authsim.cluster.resources.key_ref import KeyRef
from authsim.hsm import Pkcs11KeyStore
from tests.certs import rsa_key

GOOD, GONE = KeyRef("host", "aa"), KeyRef("host", "bb")


class OneThreadKeyStore:
    """Pkcs11KeyStore's threading (one worker thread), a software key, and a count of hand-overs."""

    def __init__(self) -> None:
        self.handovers = 0
        self._thread = ThreadPoolExecutor(max_workers=1)

    def private_key(self, ref: KeyRef) -> rsa.RSAPrivateKey:
        if ref == GONE:
            raise KeyAccessError("node n1: token t1: the key is gone")
        return rsa_key(3)

    async def run_async(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.handovers += 1
        return await asyncio.wrap_future(self._thread.submit(fn, *args))


def builder(cn: str) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    key = rsa_key(3).public_key()  # self-signed: verifiable with its own key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )


def test_concurrent_requests_share_handovers_and_keep_their_own_results() -> None:
    store = OneThreadKeyStore()
    signer = TokenSigner(cast(Pkcs11KeyStore, store))

    async def run() -> list[Any]:
        requests = [[(GOOD, builder(f"user{i}-{j}")) for j in range(i % 3 + 1)] for i in range(30)]
        requests[7] = [(GOOD, builder("before")), (GONE, builder("gone"))]
        return await asyncio.gather(*(signer.sign(r) for r in requests), return_exceptions=True)

    results = asyncio.run(run())
    assert store.handovers < 30 / 2  # requests that arrived while the thread was busy went together
    for i, result in enumerate(results):
        if i == 7:
            assert isinstance(result, KeyAccessError) and "the key is gone" in str(result)
            continue
        names = [c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in result]
        assert names == [f"user{i}-{j}" for j in range(i % 3 + 1)]
        for cert in result:
            cert.verify_directly_issued_by(cert)  # signed with the (software) CA key


def test_a_failed_handover_fails_its_requests_and_the_next_ones_still_sign() -> None:
    store = OneThreadKeyStore()
    signer = TokenSigner(cast(Pkcs11KeyStore, store))
    real = store.run_async
    calls = 0

    async def closing_once(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyAccessError("node n1: key store for token t1 is closed")
        return await real(fn, *args)

    store.run_async = closing_once  # type: ignore[method-assign]

    async def run() -> None:
        with pytest.raises(KeyAccessError, match="is closed"):
            await signer.sign([(GOOD, builder("first"))])
        [cert] = await signer.sign([(GOOD, builder("second"))])
        assert cert.subject.rfc4514_string() == "CN=second"

    asyncio.run(run())
