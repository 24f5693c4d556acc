"""TLS for the tests' own etcd servers: an etcd CA, member and admin client identities, made by the
same code as the embedded etcd's (cluster.mtls), so test etcds serve TLS only like the product's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from authsim.cluster.mtls import ADMIN_CN, ensure_etcd_client_identity, ensure_etcd_member_identity
from authsim.cluster.store import EtcdTLS

CLUSTER = "tests"


@dataclass(frozen=True)
class EtcdPKI:
    """The member identity an etcd serves with, and a client identity (CN admin) from the same CA."""

    member: EtcdTLS
    client: EtcdTLS


def etcd_pki(directory: Path) -> EtcdPKI:
    """Made once in `directory` (an existing one is reused)."""
    member = ensure_etcd_member_identity(directory, CLUSTER)
    client = ensure_etcd_client_identity(directory, CLUSTER, directory / "admin", ADMIN_CN)
    return EtcdPKI(member, client)


def client_identity(directory: Path, cn: str) -> EtcdTLS:
    """Another client identity (CN `cn`) from the etcd CA in `directory`."""
    return ensure_etcd_client_identity(directory, CLUSTER, directory / cn, cn)
