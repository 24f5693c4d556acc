"""Where each resource lives in etcd: one prefix per cluster, one key per resource."""

from __future__ import annotations

ROOT = "/authsim"


def cluster_prefix(cluster_name: str) -> str:
    return f"{ROOT}/{cluster_name}/"


def cert_authority_key(cluster_name: str, ca_type: str) -> str:
    return f"{ROOT}/{cluster_name}/cas/{ca_type}"


def override_key(cluster_name: str, ca_type: str) -> str:
    return f"{ROOT}/{cluster_name}/ca_overrides/{ca_type}"


def override_prefix(cluster_name: str) -> str:
    return f"{ROOT}/{cluster_name}/ca_overrides/"


def nodes_prefix(cluster_name: str) -> str:
    return f"{ROOT}/{cluster_name}/nodes/"


def node_key(cluster_name: str, host_id: str) -> str:
    return f"{nodes_prefix(cluster_name)}{host_id}"


def events_prefix(cluster_name: str) -> str:
    """Outside the cluster prefix, so nodes watching their CAs and overrides are not woken by events."""
    return f"{ROOT}-events/{cluster_name}/"


def target_key(cluster_name: str, kind: str) -> str:
    """A downstream target's address, where nodes look it up to open sessions on it."""
    return f"{ROOT}/{cluster_name}/targets/{kind}"
