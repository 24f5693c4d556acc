"""etcd's own access control for a cluster: a role per cluster prefix, users named by certificate CN."""

from __future__ import annotations

import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from authsim.cluster.store.etcd import EtcdStore
from authsim.cluster.store.keys import cluster_prefix, events_prefix, queue_prefix

ROOT_USER = "root"  # etcd refuses to enable auth without it; no password, so no one logs in as it
ROOT_ROLE = "root"


def cluster_role(cluster_name: str) -> str:
    """The role that may read and write the cluster's prefix, its events and queue prefixes, and nothing
    else."""
    return f"authsim-{cluster_name}"


def cluster_prefixes(cluster_name: str) -> tuple[str, ...]:
    return (cluster_prefix(cluster_name), events_prefix(cluster_name), queue_prefix(cluster_name))


async def grant_cluster_access(store: EtcdStore, cluster_name: str, admin: str, nodes: list[str]) -> None:
    """Make `admin` a root user and each of `nodes` a user with the cluster's role, then enable auth.

    etcd (3.4) names a TLS client by its certificate's CN when auth is on; the users have no password,
    so the certificate is the only way to act as one. Idempotent: run it again when nodes are added
    (`store` must then act as `admin`, which auth requires for these calls).
    """
    role = cluster_role(cluster_name)
    await _add(store, "RoleAdd", rpc.AuthRoleAddRequest(name=role))
    for prefix in cluster_prefixes(cluster_name):
        key = prefix.encode()
        permission = rpc.Permission(
            permType=rpc.Permission.READWRITE, key=key, range_end=prefix_range_end(key)
        )
        await store.auth(
            "RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(name=role, perm=permission)
        )
    users = {ROOT_USER: ROOT_ROLE, admin: ROOT_ROLE, **dict.fromkeys(nodes, role)}
    for user, user_role in users.items():
        options = rpc.UserAddOptions(no_password=True)
        await _add(store, "UserAdd", rpc.AuthUserAddRequest(name=user, options=options))
        await store.auth("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=user_role))
    await store.auth("AuthEnable", rpc.AuthEnableRequest())


async def _add(store: EtcdStore, method: str, request: object) -> None:
    """An add call; "already exists" (from an earlier run) is success."""
    try:
        await store.auth(method, request)
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION or "already exists" not in (e.details() or ""):
            raise
