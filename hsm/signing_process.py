"""The node's side of its signing worker (`signing_worker`): batches of data signed by token keys,
awaited on the event loop, with the token's deadline.

Batches are pipelined: a caller sends its batch at once and the worker answers them in order, so the
worker signs the next batch while the loop drafts and finishes others. The worker is started on first
use and again after it ended. A batch that misses the deadline means the HSM hangs: the worker is
killed (it cannot be interrupted inside a token call) and every batch waiting on it fails; the caller
makes the key store count the HSM unavailable until its probe reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import struct
import sys
from dataclasses import dataclass, field

from authsim.cluster.errors import HsmUnavailableError, NotFoundError
from authsim.hsm.signing_protocol import FAILED, NO_SUCH_KEY, decode_results, encode_requests, frame

Results = list[bytes | Exception]


@dataclass
class _Worker:
    """One started worker: its process, the node's end of its socket, the batches it has yet to answer
    (their sizes, in order) and the task reading its answers."""

    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    pending: collections.deque[tuple[int, asyncio.Future[Results]]] = field(default_factory=collections.deque)
    answers: asyncio.Task[None] | None = None


class SigningProcess:
    """The signing worker of one node's token."""

    def __init__(
        self, module_path: str, token_label: str, pin: str, host_id: str, node_name: str, call_timeout: float
    ) -> None:
        self._setup = json.dumps(
            {"module": module_path, "label": token_label, "host_id": host_id, "pin": pin}
        ).encode()
        self.node_name = node_name
        self.token_label = token_label
        self.call_timeout = call_timeout
        self._worker: _Worker | None = None
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return None if self._worker is None else self._worker.process.pid

    async def sign(self, items: list[tuple[bytes, bytes]]) -> Results:
        """Each (key id, data) signed (SHA256-RSA-PKCS#1 v1.5), in order: the signature, or the error
        for that item. HsmUnavailableError for the whole batch when the worker does not answer within
        the deadline (it is killed) or ended (started again next time)."""
        try:
            return await asyncio.wait_for(self._sign(items), self.call_timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise HsmUnavailableError(
                f"{self.node_name}'s HSM did not answer within {self.call_timeout:g} s"
            ) from None

    async def _sign(self, items: list[tuple[bytes, bytes]]) -> Results:
        worker = await self._started()
        answer: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        worker.pending.append((len(items), answer))
        worker.writer.write(frame(encode_requests(items)))
        return await answer

    async def _started(self) -> _Worker:
        async with self._starting:
            if self._worker is not None:
                return self._worker
            ours, theirs = socket.socketpair()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "authsim.hsm.signing_worker",
                    str(theirs.fileno()),
                    stdin=asyncio.subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                    # this very interpreter: a node user may not reach the path its venv links to,
                    # while argv[0] keeps the venv (its pyvenv.cfg) for the worker's imports
                    executable="/proc/self/exe",
                )
            finally:
                theirs.close()
            reader, writer = await asyncio.open_connection(sock=ours)
            worker = _Worker(process, writer)
            writer.write(frame(self._setup))
            try:
                answer = await _read_frame(reader)
            except (OSError, asyncio.IncompleteReadError) as e:
                answer = f"error: {e}".encode()
            if answer != b"ok":
                await _end(worker)
                why = answer.decode(errors="replace").removeprefix("error: ")
                raise HsmUnavailableError(
                    f"node {self.node_name}: token {self.token_label}: "
                    f"the signing worker could not open it: {why}"
                )
            worker.answers = asyncio.create_task(self._read_answers(worker, reader))
            self._worker = worker
            return worker

    async def _read_answers(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """Hand each of `worker`'s answers to the batch it answers, in order; when it ends, fail the
        rest, and start another next time."""
        try:
            while True:
                results = decode_results(await _read_frame(reader))
                count, answer = worker.pending.popleft()
                if len(results) != count:
                    raise EOFError(f"{len(results)} answers to {count} requests")
                if not answer.done():
                    answer.set_result([_outcome(status, body, self.node_name) for status, body in results])
        except (OSError, EOFError, asyncio.IncompleteReadError) as e:
            ended = HsmUnavailableError(f"{self.node_name}'s signing worker ended: {e}")
            while worker.pending:
                _, answer = worker.pending.popleft()
                if not answer.done():
                    answer.set_exception(ended)
            if self._worker is worker:
                self._worker = None

    async def stop(self) -> None:
        """Kill the worker (it may hang inside a token call); batches waiting on it fail."""
        worker, self._worker = self._worker, None
        if worker is not None:
            await _end(worker)


async def _end(worker: _Worker) -> None:
    """Kill `worker` and wait until it and the reading of its answers are over."""
    worker.writer.close()
    if worker.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
    await worker.process.wait()
    if worker.answers is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.answers


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(length)


def _outcome(status: int, body: bytes, node_name: str) -> bytes | Exception:
    if status == NO_SUCH_KEY:
        return NotFoundError(f"{node_name}: {body.decode()}")
    if status == FAILED:
        return HsmUnavailableError(f"{node_name}'s HSM failed: {body.decode()}")
    return body
