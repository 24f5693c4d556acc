"""The targets' addresses in etcd: nodes open sessions only on the targets registered for their cluster."""

from __future__ import annotations

import asyncio
import json

from cluster.etcd_keys import target_key
from cluster.state import ClusterState
from cluster.store import EtcdStore, Versioned


def register_targets(state: ClusterState) -> None:
    """Record the address of each target in `state` in the cluster's etcd (no write when unchanged)."""
    asyncio.run(_register(state))


async def _register(state: ClusterState) -> None:
    async with EtcdStore(state.etcd.endpoints, tls=state.etcd.tls) as store:
        for kind, target in state.targets.items():
            record = json.dumps({"address": target.address}).encode()

            def put(current: Versioned | None, record: bytes = record) -> bytes | None:
                return None if current is not None and current.value == record else record

            await store.update(target_key(state.cluster_name, kind), put)


def target_address(value: bytes) -> str:
    """The address in a registry record."""
    return str(json.loads(value)["address"])
