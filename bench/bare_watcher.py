"""A bare watcher, for the benchmark's watch row: the cluster's keys watched as a node watches them (the
same `EtcdStore.watch_prefix`, one stream), with nothing done with what arrives. Its CPU per change is
the floor of a node's. Run as `python -m bench.bare_watcher ENDPOINT PREFIX`; it prints `watching` once
its watch is open."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from authsim.cluster.store import EtcdStore


async def watch(endpoint: str, prefix: str) -> None:
    async with EtcdStore([endpoint]) as store:
        start = await store.ping(prefix)
        changes = store.watch_prefix(prefix, start + 1)
        async with contextlib.aclosing(changes):
            opening = asyncio.ensure_future(anext(changes))
            await asyncio.sleep(0.2)  # the stream's create request is out: changes from here are seen
            print("watching", flush=True)
            await opening
            async for _ in changes:
                pass


if __name__ == "__main__":
    asyncio.run(watch(sys.argv[1], sys.argv[2]))
