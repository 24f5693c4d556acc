"""Certificates signed on the token's thread, as many per hand-over as are waiting (up to a bound).

All token calls run on one thread (SPEC §11). Handing each certificate to it on its own costs a
thread switch and a wake-up of the event loop per certificate; under load that, not the token, limits
issuance. Requests that arrive while the thread is busy wait together and go over as one job, of
at most MAX_HANDOVER certificates: every token call has a deadline, and one hand-over must not be
mistaken for a hung HSM.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from authsim.cluster.resources.key_ref import KeyRef
from authsim.hsm import KeyStore

MAX_HANDOVER = 128  # certificates per hand-over (whole requests): each stays well within the token deadline


@dataclass
class _Job:
    work: list[tuple[KeyRef, x509.CertificateBuilder]]
    done: asyncio.Future[list[x509.Certificate]]


class TokenSigner:
    """Signs certificate builders with keys in this node's token, coalescing concurrent requests."""

    def __init__(self, keystore: KeyStore) -> None:
        self.keystore = keystore
        self._waiting: list[_Job] = []
        self._drain_task: asyncio.Task[None] | None = None

    async def sign(self, work: list[tuple[KeyRef, x509.CertificateBuilder]]) -> list[x509.Certificate]:
        """Each builder signed (SHA-256) with its token key, in order. An error (the token gone, its
        deadline passed) fails the requests it hit, not the others."""
        loop = asyncio.get_running_loop()
        job = _Job(work, loop.create_future())
        self._waiting.append(job)
        if self._drain_task is None:
            self._drain_task = loop.create_task(self._drain())
        return await job.done

    async def _drain(self) -> None:
        try:
            while self._waiting:
                jobs = self._next_jobs()
                try:
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
        finally:
            self._drain_task = None

    def _next_jobs(self) -> list[_Job]:
        """The waiting requests in arrival order, whole, up to MAX_HANDOVER certificates (at least one)."""
        count, taken = 0, 0
        for job in self._waiting:
            if taken and count + len(job.work) > MAX_HANDOVER:
                break
            count += len(job.work)
            taken += 1
        jobs, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return jobs

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
