"""Benchmark part: recording a session-start event into a full history (create + retention trim)
against a bare create of the same event. Run through scripts/bench (bench/run.py)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from authsim.auth_node.events import DEFAULT_RETENTION, EventRecorder
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.keys import events_prefix


def _event(n: int) -> dict[str, Any]:
    return {
        "event": "db.session.start",
        "sid": f"bench-{n:08d}",
        "user": "alice",
        "success": True,
        "pad": "x" * 300,
    }


async def record_cost(
    endpoint: str, count: int = 300, retention: int = DEFAULT_RETENTION
) -> dict[str, float]:
    """Median ms of `count` sequential records at `retention` events already stored (as a node records:
    a trim only when they may be over by more than the slack),
    and of `count` bare creates of the same events under another prefix."""
    async with EtcdStore([endpoint]) as store:
        prefix = events_prefix("bench")
        for start in range(0, retention, 256):
            await asyncio.gather(
                *(
                    store.create(f"{prefix}{n:020d}-fill", json.dumps(_event(n)).encode())
                    for n in range(start, min(start + 256, retention))
                )
            )
        recorder = EventRecorder(store, "bench", retention)  # as a node records them
        recorded, created = [], []
        for n in range(count):
            started = time.perf_counter()
            await recorder.record_now(_event(n))
            recorded.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.create(f"/bench-raw/{time.time_ns():020d}", json.dumps(_event(n)).encode())
            created.append(time.perf_counter() - started)
        left = len(await store.get_prefix(prefix))
        await store.delete_prefix(prefix)
        await store.delete_prefix("/bench-raw/")
    if not retention <= left <= retention + recorder.retention.slack:
        raise AssertionError(f"retention {retention} left {left} events")
    record_ms, create_ms = statistics.median(recorded) * 1000, statistics.median(created) * 1000
    return {"retention": retention, "record_ms_median": record_ms, "create_ms_median": create_ms}
