"""Which cluster a dir belongs to on its etcd: claimed by `authsim up`, forgotten by a purge or `forget`.

A dir never silently joins a cluster another dir made on the same etcd (SPEC §4): `up` claims the
cluster name's identity with a create-if-absent write and refuses when it finds another cluster's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from authsim.cluster.errors import ClusterError, quoted
from authsim.cluster.local import interrupts
from authsim.cluster.local.state import ClusterState, EtcdEntry
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.identity import (
    ClusterIdentity,
    StoredCluster,
    claim_identity,
    create_cluster,
    delete_cluster,
    read_identity,
    stored_cluster,
)

NO_ID = "none"  # what `forget --cluster-id` takes for data written before clusters had ids


def claim(directory: Path, state: ClusterState, join: bool, new: bool) -> ClusterIdentity:
    """Set `state.cluster_id` to the id of its cluster on its etcd; the identity stored there.

    A `new` dir makes a new cluster, only where etcd holds no key of its name (of two first `up`s one
    wins); with `join`, a dir without an id takes the id of the cluster already there. A dir made before
    cluster ids claims the name's data. ClusterError when that would merge two clusters: the name holds
    a cluster this dir did not make, or the dir's id is not the stored one.
    """
    stored = interrupts.run(_claim(directory, state, join, new))
    state.cluster_id = stored.cluster_id
    return stored


async def _claim(directory: Path, state: ClusterState, join: bool, new: bool) -> ClusterIdentity:
    name, where = state.cluster_name, _where(state.etcd)
    ours = ClusterIdentity.new(directory)
    if state.cluster_id is not None:
        ours = replace(ours, cluster_id=state.cluster_id)
    async with EtcdStore(state.etcd.endpoints, tls=state.etcd.tls) as store:
        if state.cluster_id is None and join:
            found = await read_identity(store, name)
            if found is None:
                raise ClusterError(f"--join: etcd at {where} holds no cluster {name!r} with an id to join")
            return found
        if state.cluster_id is None and new:
            taken = await create_cluster(store, name, ours)
            if taken is None:
                return ours
            if taken.identity is None:
                raise ClusterError(
                    f"etcd at {where} already holds {taken.keys} keys of cluster {name!r} without a cluster "
                    "id (written before cluster ids): `authsim up` in the dir that made them claims them, "
                    f"`authsim forget --etcd {where} --cluster-name {name} --cluster-id {NO_ID}` deletes "
                    "them, another --cluster-name makes a cluster of its own"
                )
            stored = taken.identity
        else:
            stored = await claim_identity(store, name, ours)
    if stored.cluster_id == ours.cluster_id:
        return stored
    if state.cluster_id is None:
        raise ClusterError(
            f"etcd at {where} already holds cluster {name!r} (id {stored.cluster_id}, made by "
            f"{_origin(stored)}): `authsim up --join` adds this dir's nodes to it, another "
            "--cluster-name makes a cluster of its own"
        )
    raise ClusterError(
        f"{directory} belongs to cluster {name!r} id {state.cluster_id}, but etcd at {where} holds "
        f"cluster {name!r} id {stored.cluster_id} (made by {_origin(stored)}): not starting a dir "
        "in another cluster"
    )


def require_id(etcd: EtcdEntry, cluster_name: str, seen: StoredCluster, cluster_id: str | None) -> None:
    """ClusterError naming both ids unless the cluster `seen` on `etcd` has the id `cluster_id` (None:
    the data has no id, written before cluster ids) or has no key at all."""
    found = seen.identity.cluster_id if seen.identity else None
    if seen.keys and found != cluster_id:
        raise ClusterError(
            f"etcd at {_where(etcd)} holds cluster {cluster_name!r} {describe(seen)}, not id "
            f"{cluster_id or NO_ID}: nothing deleted"
        )


def purgeable(directory: Path, state: ClusterState) -> StoredCluster:
    """What the external etcd of `state` holds of its cluster, when `directory` may delete it there:
    the stored id is the dir's (or nothing is stored) and this dir made the cluster, not joined it.
    ClusterError otherwise; nothing is deleted."""
    seen = stored(state.etcd, state.cluster_name)
    require_id(state.etcd, state.cluster_name, seen, state.cluster_id)
    if seen.identity is not None and not made_here(directory, seen.identity):
        raise ClusterError(
            f"{directory} joined cluster {state.cluster_name!r}, made by "
            f"{quoted(seen.identity.directory, 300)}: --purge-etcd deletes only a cluster this dir made "
            "(`authsim forget` deletes any, once no dir runs it)"
        )
    return seen


def made_here(directory: Path, made: ClusterIdentity) -> bool:
    """Whether `directory` made the cluster whose identity is `made` (else it joined it)."""
    return made.directory == str(directory.absolute())


def forget(etcd: EtcdEntry, cluster_name: str, seen: StoredCluster) -> int:
    """Delete every key of the cluster from `etcd` while its identity is still as `seen` (else
    ConflictError, nothing deleted); the count deleted."""

    async def delete() -> int:
        async with EtcdStore(etcd.endpoints, tls=etcd.tls) as store:
            return await delete_cluster(store, cluster_name, seen)

    return interrupts.run(delete()) if seen.keys else 0


def stored(etcd: EtcdEntry, cluster_name: str) -> StoredCluster:
    """What `etcd` holds of the cluster: its identity and key count."""

    async def read() -> StoredCluster:
        async with EtcdStore(etcd.endpoints, tls=etcd.tls) as store:
            return await stored_cluster(store, cluster_name)

    return interrupts.run(read())


def describe(seen: StoredCluster) -> str:
    """`id X (made by DIR at TIME), N keys`, or `without a cluster id (...)` for data from before ids."""
    if seen.identity is None:
        return f"without a cluster id (written before cluster ids), {seen.keys} keys"
    return f"id {seen.identity.cluster_id} (made by {_origin(seen.identity)}), {seen.keys} keys"


def _origin(identity: ClusterIdentity) -> str:
    """`'DIR' at TIME`: where and when the cluster was made."""
    return f"{quoted(identity.directory, 300)} at {identity.created}"


def _where(etcd: EtcdEntry) -> str:
    return ",".join(etcd.endpoints)
