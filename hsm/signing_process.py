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

from authsim.cluster.errors import HsmUnavailableError, NotFoundError
from authsim.hsm.signing_protocol import FAILED, NO_SUCH_KEY, decode_results, encode_requests, frame

Results = list[bytes | Exception]


class SigningProcess:
    """One signing worker of one node's token."""

    def __init__(
        self, module_path: str, token_label: str, pin: str, host_id: str, node_name: str, call_timeout: float
    ) -> None:
        self._setup = json.dumps(
            {"module": module_path, "label": token_label, "host_id": host_id, "pin": pin}
        ).encode()
        self.node_name = node_name
        self.token_label = token_label
        self.call_timeout = call_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._answers: asyncio.Task[None] | None = None
        self._pending: collections.deque[tuple[int, asyncio.Future[Results]]] = collections.deque()
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

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
        writer = await self._started()
        answer: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        self._pending.append((len(items), answer))
        writer.write(frame(encode_requests(items)))
        return await answer

    async def _started(self) -> asyncio.StreamWriter:
        async with self._starting:
            if self._writer is not None:
                return self._writer
            ours, theirs = socket.socketpair()
            try:
                self._process = await asyncio.create_subprocess_exec(
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
            writer.write(frame(self._setup))
            try:
                answer = await _read_frame(reader)
            except (OSError, asyncio.IncompleteReadError) as e:
                answer = f"error: {e}".encode()
            if answer != b"ok":
                writer.close()
                await self.stop()
                why = answer.decode(errors="replace").removeprefix("error: ")
                raise HsmUnavailableError(
                    f"node {self.node_name}: token {self.token_label}: "
                    f"the signing worker could not open it: {why}"
                )
            self._writer = writer
            self._answers = asyncio.create_task(self._read_answers(reader))
            return writer

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        """Hand each answer to the batch it answers, in order; when the worker ends, fail the rest."""
        try:
            while True:
                results = decode_results(await _read_frame(reader))
                count, answer = self._pending.popleft()
                if len(results) != count:
                    raise EOFError(f"{len(results)} answers to {count} requests")
                if not answer.done():
                    answer.set_result([_outcome(status, body, self.node_name) for status, body in results])
        except (OSError, EOFError, asyncio.IncompleteReadError) as e:
            ended = HsmUnavailableError(f"{self.node_name}'s signing worker ended: {e}")
            while self._pending:
                _, answer = self._pending.popleft()
                if not answer.done():
                    answer.set_exception(ended)
            self._writer = None

    async def stop(self) -> None:
        """Kill the worker (it may hang inside a token call); batches waiting on it fail."""
        writer, process, answers = self._writer, self._process, self._answers
        self._writer, self._process, self._answers = None, None, None
        if writer is not None:
            writer.close()
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if answers is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await answers


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(length)


def _outcome(status: int, body: bytes, node_name: str) -> bytes | Exception:
    if status == NO_SUCH_KEY:
        return NotFoundError(f"{node_name}: {body.decode()}")
    if status == FAILED:
        return HsmUnavailableError(f"{node_name}'s HSM failed: {body.decode()}")
    return body
