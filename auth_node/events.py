"""Session-start events (SPEC §8, seed step 5), stored in etcd and listed oldest first."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from authsim.auth_node.issuance import Credential
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.keys import events_prefix


def session_start_event(
    cluster_name: str,
    ca_type: str,
    user: str,
    credential: Credential,
    success: bool,
    reason: str,
    resource_name: str,
    node_name: str,
) -> dict[str, Any]:
    info = CA_TYPES[ca_type]
    code, failure_code = info.session_codes
    record: dict[str, Any] = {
        "ca_override": {
            "active": credential.issuer.override_active,
            "public_key_hash": credential.issuer.key.public_key_hash,
        },
        "cluster_name": cluster_name,
        "code": code if success else failure_code,
        info.resource_field: resource_name,
        "ei": 0,
        "event": info.session_event,
        "sid": str(uuid.uuid4()),
        "success": success,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "user": user,
        "authsim.auth_node": node_name,
    }
    if not success:
        record["error"] = reason
    return record


async def record_event(store: EtcdStore, cluster_name: str, event: dict[str, Any]) -> None:
    key = f"{events_prefix(cluster_name)}{time.time_ns():020d}-{event['sid']}"
    await store.create(key, json.dumps(event, sort_keys=True).encode())


async def list_events(store: EtcdStore, cluster_name: str) -> list[str]:
    return [v.value.decode() for _, v in await store.get_prefix(events_prefix(cluster_name))]
