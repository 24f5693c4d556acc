"""Where the cluster's nodes and targets listen, kept in etcd.

Nodes: host id → node name and address, so messages can name the node that holds a key. Targets:
kind → address; nodes open sessions only on the targets registered for their cluster.
"""

from __future__ import annotations

import json

from authsim.cluster.store.etcd import EtcdStore, Versioned
from authsim.cluster.store.keys import node_key, nodes_prefix, target_key


async def register_node(store: EtcdStore, cluster_name: str, host_id: str, name: str, address: str) -> None:
    """Record node `name` (host id `host_id`) at `address` (no write when unchanged)."""
    await _put_unless_same(store, node_key(cluster_name, host_id), {"name": name, "address": address})


async def node_names(store: EtcdStore, cluster_name: str) -> dict[str, str]:
    """host id → node name, for every registered node of the cluster whose record is readable."""
    prefix = nodes_prefix(cluster_name)
    found = {key[len(prefix) :]: node_name(v.value) for key, v in await store.get_prefix(prefix)}
    return {host: name for host, name in found.items() if name is not None}


def node_name(value: bytes) -> str | None:
    """The node name in a node record; None when the stored record is not one (it is distrusted)."""
    try:
        name = json.loads(value)["name"]
    except (ValueError, TypeError, KeyError):
        return None
    return name if isinstance(name, str) else None


async def register_targets(store: EtcdStore, cluster_name: str, addresses: dict[str, str]) -> None:
    """Record the address of each target kind (no write when unchanged)."""
    for kind, address in addresses.items():
        await _put_unless_same(store, target_key(cluster_name, kind), {"address": address})


def target_address(value: bytes) -> str:
    """The address in a target's record."""
    return str(json.loads(value)["address"])


async def _put_unless_same(store: EtcdStore, key: str, record: dict[str, str]) -> None:
    value = json.dumps(record, sort_keys=True).encode()

    def put(current: Versioned | None) -> bytes | None:
        return None if current is not None and current.value == value else value

    await store.update(key, put)
