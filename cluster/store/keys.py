"""Where each resource lives in etcd: one prefix per cluster, one key per resource."""

from __future__ import annotations

import re

from authsim.cluster.errors import ValidationError, quoted

ROOT = "/authsim"
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # a cluster name; a node name too
CLUSTER_NAME_RULE = "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"


def checked_cluster_name(name: object) -> str:
    """`name` when it is a DNS-label-like cluster name (a segment of every key path, so never a '/');
    ValidationError stating the rule otherwise."""
    if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
        raise ValidationError([f"cluster name {quoted(name)}: {CLUSTER_NAME_RULE}"])
    return name


def cluster_prefix(cluster_name: str) -> str:
    return f"{ROOT}/{cluster_name}/"


def identity_key(cluster_name: str) -> str:
    """The cluster's identity (its id, the dir that made it, when), written once by the first `up`."""
    return f"{ROOT}/{cluster_name}/identity"


def cert_authority_key(cluster_name: str, ca_type: str) -> str:
    return f"{ROOT}/{cluster_name}/cas/{ca_type}"


def override_key(cluster_name: str, ca_type: str) -> str:
    return f"{ROOT}/{cluster_name}/ca_overrides/{ca_type}"


def crl_key(cluster_name: str, ca_type: str) -> str:
    """The revoked serials and signed CRLs of a CA type's keys (beside its override, apart from it)."""
    return f"{ROOT}/{cluster_name}/ca_crls/{ca_type}"


def crl_prefix(cluster_name: str) -> str:
    return f"{ROOT}/{cluster_name}/ca_crls/"


def override_prefix(cluster_name: str) -> str:
    return f"{ROOT}/{cluster_name}/ca_overrides/"


def nodes_prefix(cluster_name: str) -> str:
    return f"{ROOT}/{cluster_name}/nodes/"


def node_key(cluster_name: str, host_id: str) -> str:
    return f"{nodes_prefix(cluster_name)}{host_id}"


def events_prefix(cluster_name: str) -> str:
    """Outside the cluster prefix, so nodes watching their CAs and overrides are not woken by events."""
    return f"{ROOT}-events/{cluster_name}/"


def queue_prefix(cluster_name: str) -> str:
    """Writers' tickets, each under its node's session lease (`cluster.store.queue`): outside the
    cluster prefix, so no node's watch is woken by a writer taking or leaving its place."""
    return f"{ROOT}-queue/{cluster_name}/"


def override_tickets_prefix(cluster_name: str, ca_type: str) -> str:
    """The queue of writers of `ca_type`'s override resource."""
    return f"{queue_prefix(cluster_name)}ca_overrides/{ca_type}/"


def crl_tickets_prefix(cluster_name: str, ca_type: str) -> str:
    """The queue of writers of `ca_type`'s CRL resource (each key's holder, after a change)."""
    return f"{queue_prefix(cluster_name)}ca_crls/{ca_type}/"


def target_key(cluster_name: str, kind: str) -> str:
    """A downstream target's address, where nodes look it up to open sessions on it."""
    return f"{ROOT}/{cluster_name}/targets/{kind}"


def expiry_alert_key(cluster_name: str, fingerprint: str, level: str) -> str:
    """The marker that the alert `level` of the override certificate `fingerprint` (hex SHA-256 of its
    DER) was recorded as an event: created once, so a restarted node does not record it again."""
    return f"{ROOT}/{cluster_name}/expiry_alerts/{fingerprint}/{level}"


def csr_request_key(cluster_name: str, request_id: str) -> str:
    """A pending cluster-wide CSR request, under a lease: every node answers it for its own keys."""
    return f"{ROOT}/{cluster_name}/csr_requests/{request_id}"


def csr_answers_prefix(cluster_name: str, request_id: str) -> str:
    return f"{ROOT}/{cluster_name}/csr_answers/{request_id}/"


def csr_answer_key(cluster_name: str, request_id: str, host_id: str) -> str:
    """One node's answer to a CSR request (its CSRs, or why it has none), under the request's lease."""
    return f"{csr_answers_prefix(cluster_name, request_id)}{host_id}"
