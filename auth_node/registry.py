"""The node registry in etcd: host id → node name and address, so messages can name the right node."""

from __future__ import annotations

import json

from auth_node.config import NodeConfig
from cluster.etcd_keys import node_key, nodes_prefix
from cluster.store import EtcdStore, Versioned


async def register_node(store: EtcdStore, node: NodeConfig) -> None:
    record = json.dumps({"name": node.name, "address": node.listen}, sort_keys=True).encode()

    def put(current: Versioned | None) -> bytes | None:
        return None if current is not None and current.value == record else record

    await store.update(node_key(node.cluster_name, node.host_id), put)


async def node_names(store: EtcdStore, cluster_name: str) -> dict[str, str]:
    prefix = nodes_prefix(cluster_name)
    return {key[len(prefix) :]: json.loads(v.value)["name"] for key, v in await store.get_prefix(prefix)}
