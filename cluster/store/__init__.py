"""Storage: the etcd store with its compare-and-swap primitive, and where each record lives in etcd.

`EtcdStore` (`etcd`) is the only code that talks to etcd; `keys` names the keys (and holds the
cluster-name rule); `addresses` keeps the nodes' and targets' addresses there; `identity` a cluster's id.
"""

from authsim.cluster.store.etcd import (
    DELETE,
    CasResult,
    Companion,
    EtcdStore,
    EtcdTLS,
    Page,
    Trim,
    UpdateResult,
    Versioned,
)

__all__ = [
    "DELETE",
    "CasResult",
    "Companion",
    "EtcdStore",
    "EtcdTLS",
    "Page",
    "Trim",
    "UpdateResult",
    "Versioned",
]
