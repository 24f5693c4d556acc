"""A cluster's identity in etcd: the id its first `authsim up` made, the dir that made it, and when.

A new cluster's identity is written only while etcd holds no key of that cluster name (one Txn), so of
two first `up`s exactly one makes the cluster and neither adopts keys another cluster left behind.
Forgetting a cluster deletes its keys only while the identity is the one the caller confirmed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from authsim.cluster.errors import StoredDataError, StoreUnavailableError
from authsim.cluster.store.etcd import EtcdStore, Versioned
from authsim.cluster.store.keys import cluster_prefix, events_prefix, identity_key


@dataclass(frozen=True)
class ClusterIdentity:
    """Who a cluster is: `cluster_id` (a UUID), the absolute dir whose `up` made it, when (UTC ISO 8601)."""

    cluster_id: str
    directory: str
    created: str

    @classmethod
    def new(cls, directory: Path) -> ClusterIdentity:
        return cls(
            str(uuid.uuid4()), str(directory.absolute()), datetime.now(UTC).isoformat(timespec="seconds")
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, key: str, value: bytes) -> ClusterIdentity:
        """The identity stored at `key`; StoredDataError when the value is not one (it is distrusted)."""
        try:
            data = json.loads(value)
            cluster_id, directory, created = data["cluster_id"], data["directory"], data["created"]
            if not isinstance(directory, str):
                raise TypeError(directory)
            identity = cls(str(uuid.UUID(cluster_id)), directory, datetime.fromisoformat(created).isoformat())
        except (ValueError, TypeError, KeyError, AttributeError):
            raise StoredDataError(f"{key}: not a cluster identity (cluster_id, directory, created)") from None
        return identity


@dataclass(frozen=True)
class StoredCluster:
    """What etcd holds of one cluster name: its identity (None: data from before identities, or none) at
    its key's revision (0: absent), and how many keys it has in all (resources and events)."""

    identity: ClusterIdentity | None
    revision: int
    keys: int


async def create_cluster(
    store: EtcdStore, cluster_name: str, identity: ClusterIdentity
) -> StoredCluster | None:
    """Store `identity` as a new cluster's if etcd holds no key of `cluster_name` (resources, events):
    None. Otherwise nothing is written and what etcd holds is returned. One Txn when etcd answers."""
    key = identity_key(cluster_name)
    try:
        vacancy = await store.create_if_empty(key, identity.to_json(), _prefixes(cluster_name))
    except StoreUnavailableError:  # the write's outcome is unknown: look what is there
        seen = await stored_cluster(store, cluster_name)
        if seen.identity is not None and seen.identity.cluster_id == identity.cluster_id:
            return None
        if not seen.keys:
            raise  # not written; etcd did not answer
        return seen
    if vacancy.created:
        return None
    found = vacancy.current
    return StoredCluster(
        None if found is None else ClusterIdentity.from_json(key, found.value),
        found.mod_revision if found else 0,
        vacancy.keys,
    )


async def claim_identity(store: EtcdStore, cluster_name: str, identity: ClusterIdentity) -> ClusterIdentity:
    """Store `identity` unless the cluster already has one (an existing dir's cluster, whose data may
    predate identities); the identity stored afterwards. One Txn when etcd answers: create-if-absent,
    whose failure branch brings the stored identity."""
    key = identity_key(cluster_name)
    stored = identity

    def claim(current: Versioned | None) -> bytes | None:
        nonlocal stored
        if current is None:
            return identity.to_json()
        stored = ClusterIdentity.from_json(key, current.value)
        return None

    await store.update(key, claim, known=(None,))
    return stored


async def read_identity(store: EtcdStore, cluster_name: str) -> ClusterIdentity | None:
    key = identity_key(cluster_name)
    found = await store.get(key)
    return None if found is None else ClusterIdentity.from_json(key, found.value)


async def stored_cluster(store: EtcdStore, cluster_name: str) -> StoredCluster:
    key = identity_key(cluster_name)
    found = await store.get(key)
    identity = None if found is None else ClusterIdentity.from_json(key, found.value)
    count = sum([await store.count_prefix(prefix) for prefix in _prefixes(cluster_name)])
    return StoredCluster(identity, found.mod_revision if found else 0, count)


async def delete_cluster(store: EtcdStore, cluster_name: str, seen: StoredCluster) -> int:
    """Delete every key of the cluster (resources, node and target records, events) in one Txn, only
    while its identity is as `seen`; the count deleted. ConflictError with nothing deleted otherwise."""
    return await store.delete_prefixes(_prefixes(cluster_name), (identity_key(cluster_name), seen.revision))


def _prefixes(cluster_name: str) -> list[str]:
    return [cluster_prefix(cluster_name), events_prefix(cluster_name)]
