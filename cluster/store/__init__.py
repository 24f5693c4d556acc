"""Storage: the etcd store with its compare-and-swap primitive, and where each record lives in etcd.

`EtcdStore` (`etcd`) is the only code that talks to etcd; `keys` names the keys; `addresses` keeps
the nodes' and targets' addresses there.
"""

from authsim.cluster.store.etcd import DELETE, CasResult, EtcdStore, EtcdTLS, Page, UpdateResult, Versioned

__all__ = ["DELETE", "CasResult", "EtcdStore", "EtcdTLS", "Page", "UpdateResult", "Versioned"]
