"""Certificates signed in the node's token, as many per hand-over as are waiting (up to a bound).

Handing each certificate over on its own costs a wake-up of the event loop per certificate; under load
that, not the token, limits issuance. Requests that arrive while a hand-over is signed wait together
and go over as one, of at most MAX_HANDOVER certificates: every token call has a deadline, and one
hand-over must not be mistaken for a hung HSM.

With a signing worker (`hsm.signing_process`), the event loop drafts each certificate (signed by a
`DraftRSAKey`), the worker process signs the drafts' to-be-signed parts in the token, and the loop puts
the signatures in. Without one, the certificates are signed on the token thread (SPEC §11), where each
signature then waits for Python's GIL on its way back while the loop handles gRPC calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.errors import HsmUnavailableError
from authsim.cluster.resources.key_ref import KeyRef
from authsim.hsm import KeyStore
from authsim.hsm.keystore import HsmProbe
from authsim.hsm.signing_process import SigningProcess
from authsim.hsm.token_key import DraftRSAKey, with_signature

MAX_HANDOVER = 128  # certificates per hand-over (whole requests): each stays well within the token deadline
# With a signing worker: small hand-overs, several at once, so that the worker signs while the loop
# answers the calls of the last ones (large ones take turns: the worker idles while the loop works)
WORKER_HANDOVER = 8  # certificates (whole requests)
WORKER_HANDOVERS = 8


@dataclass
class _Job:
    work: list[tuple[KeyRef, x509.CertificateBuilder]]
    done: asyncio.Future[list[x509.Certificate]]


class TokenSigner:
    """Signs certificate builders with keys in this node's token, coalescing concurrent requests."""

    def __init__(self, keystore: KeyStore, worker: SigningProcess | None = None) -> None:
        self.keystore = keystore
        self.worker = worker
        self._probe = keystore if isinstance(keystore, HsmProbe) else None  # its HSM's health, if it has one
        self._public_keys: dict[KeyRef, rsa.RSAPublicKey] = {}
        self._reconnects = 0  # the key store's reconnects when the worker was last known to be current
        self._waiting: list[_Job] = []
        self._drains: set[asyncio.Task[None]] = set()

    async def sign(self, work: list[tuple[KeyRef, x509.CertificateBuilder]]) -> list[x509.Certificate]:
        """Each builder signed (SHA-256) with its token key, in order. An error (the token gone, its
        deadline passed) fails the requests it hit, not the others."""
        loop = asyncio.get_running_loop()
        job = _Job(work, loop.create_future())
        self._waiting.append(job)
        if len(self._drains) < (WORKER_HANDOVERS if self.worker is not None else 1):
            self._drains.add(loop.create_task(self._drain()))
        return await job.done

    async def _drain(self) -> None:
        try:
            while self._waiting:
                jobs = self._next_jobs()
                try:
                    if self.worker is not None and (self._probe is None or self._probe.available):
                        outcomes = await self._sign_in_worker(self.worker, jobs)
                    else:  # no worker, or the HSM away: this fails at once, naming why
                        outcomes = await self.keystore.run_async(self._sign_jobs, jobs)
                except Exception as e:  # e.g. the key store closed under us
                    outcomes = [e] * len(jobs)
                for job, outcome in zip(jobs, outcomes, strict=True):
                    if job.done.done():  # its caller gave up (cancelled)
                        continue
                    if isinstance(outcome, Exception):
                        job.done.set_exception(outcome)
                    else:
                        job.done.set_result(outcome)
        finally:  # at once: a request made after the last answer must start a drain
            self._drains.discard(asyncio.current_task())

    def _next_jobs(self) -> list[_Job]:
        """The waiting requests in arrival order, whole, up to MAX_HANDOVER (WORKER_HANDOVER with a
        worker) certificates, at least one request."""
        count, taken = 0, 0
        limit = WORKER_HANDOVER if self.worker is not None else MAX_HANDOVER
        for job in self._waiting:
            if taken and count + len(job.work) > limit:
                break
            count += len(job.work)
            taken += 1
        jobs, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return jobs

    async def _sign_in_worker(
        self, worker: SigningProcess, jobs: list[_Job]
    ) -> list[list[x509.Certificate] | Exception]:
        """Every job's certificates, or the error that stopped that job: drafted here, signed by the
        worker in one batch. The HSM failing or not answering makes the key store count it unavailable."""
        reconnects = self._probe.reconnects if self._probe is not None else 0
        if reconnects != self._reconnects:  # the HSM came back: the worker's session died with it
            await worker.stop()
            self._reconnects = reconnects
        drafts: list[list[tuple[KeyRef, DraftRSAKey, x509.Certificate]] | Exception] = []
        for job in jobs:
            try:
                drafts.append([await self._draft(ref, builder) for ref, builder in job.work])
            except Exception as e:
                drafts.append(e)
        items = [(bytes.fromhex(r.key_id), k.signed) for d in drafts if isinstance(d, list) for r, k, _ in d]
        try:
            signatures = await worker.sign(items) if items else []
        except HsmUnavailableError as e:
            self._hsm_failed(str(e))
            raise
        outcomes: list[list[x509.Certificate] | Exception] = []
        at = 0
        for draft in drafts:
            if isinstance(draft, Exception):
                outcomes.append(draft)
                continue
            signed, at = signatures[at : at + len(draft)], at + len(draft)
            failed = next((s for s in signed if isinstance(s, Exception)), None)
            if failed is not None:
                outcomes.append(failed)
                continue
            outcomes.append(
                [
                    x509.load_der_x509_certificate(with_signature(cert.public_bytes(Encoding.DER), signature))
                    for (_, _, cert), signature in zip(draft, signed, strict=True)
                    if isinstance(signature, bytes)
                ]
            )
        failure = next((s for s in signatures if isinstance(s, HsmUnavailableError)), None)
        if failure is not None:  # the token failed the worker's session: a new one after the probe
            self._hsm_failed(str(failure))
            await worker.stop()
        return outcomes

    async def _draft(
        self, ref: KeyRef, builder: x509.CertificateBuilder
    ) -> tuple[KeyRef, DraftRSAKey, x509.Certificate]:
        """`builder` signed by a draft key with `ref`'s public key (refused for another node's key)."""
        public_key = self._public_keys.get(ref)
        if public_key is None:
            public_key = self._public_keys[ref] = await self.keystore.run_async(self.keystore.public_key, ref)
        key = DraftRSAKey(public_key)
        return ref, key, builder.sign(key, hashes.SHA256())

    def _hsm_failed(self, error: str) -> None:
        """The key store counts the HSM unavailable, for the reason `error` gives ("X's HSM failed: …")."""
        if self._probe is not None:
            self._probe.failed(error.removeprefix(f"{self.keystore.node_name}'s HSM "))

    def _sign_jobs(self, jobs: list[_Job]) -> list[list[x509.Certificate] | Exception]:
        """On the token thread: every job's certificates, or the error that stopped that job."""
        outcomes: list[list[x509.Certificate] | Exception] = []
        for job in jobs:
            try:
                outcomes.append(
                    [b.sign(self.keystore.private_key(ref), hashes.SHA256()) for ref, b in job.work]
                )
            except Exception as e:
                outcomes.append(e)
        return outcomes
