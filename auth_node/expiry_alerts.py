"""Expiry alerts of override certificates (RFD 0237): listed for status, recorded once per level as events.

Each node records the alerts of the entries of its own keys only, so each is recorded once in the
cluster; a marker key in etcd (created if absent) makes "once" hold across restarts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from typing import Any

from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.auth_node.events import EventRecorder
from authsim.cluster.errors import AlreadyExistsError
from authsim.cluster.resources import clock
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.resources.expiry import ExpiryAlert, override_alerts
from authsim.cluster.store.keys import expiry_alert_key

log = logging.getLogger(__name__)
CHECK_INTERVAL = 3600.0  # seconds between checks when nothing in the cluster changes
EVENT = "cert_authority_override.expiry_alert"
CODE = "TCO05W"


def cluster_alerts(view: ClusterView, now: dt.datetime, holder: str = "") -> list[tuple[ExpiryAlert, str]]:
    """Every alert of the override resources in the view at `now` (with `holder`, of that host's keys
    only), with the host id holding its key ("" when no key of the CA matches). Resources that break a
    rule are skipped (status reports them)."""
    found = []
    for ca_type in CA_TYPES:
        stored = view.stored_override(ca_type)
        if stored is None or not stored.valid:
            continue
        ca = view.cert_authorities.get(ca_type)
        holders = {} if ca is None else {p.public_key_hash: p.key.host_id for _, p in ca.all_keys()}
        keys = {k for k, host in holders.items() if host == holder} if holder else None
        found += [
            (a, holders.get(a.public_key_hash, "")) for a in override_alerts(stored.resource, now, keys)
        ]
    return found


def alert_event(node: NodeConfig, alert: ExpiryAlert, now: dt.datetime) -> dict[str, Any]:
    return {
        "auth_node": node.name,
        "ca_type": alert.ca_type,
        "certificate_sha256": alert.fingerprint,
        "cluster_name": node.cluster_name,
        "code": CODE,
        "disabled": alert.disabled,
        "ei": 0,
        "event": EVENT,
        "level": alert.level.label,
        "message": alert.describe(),
        "not_after": alert.not_after.isoformat(),
        "public_key_hash": alert.public_key_hash,
        "sid": str(uuid.uuid4()),
        "success": True,
        "time": now.isoformat(timespec="milliseconds"),
    }


async def record_once(
    recorder: EventRecorder, node: NodeConfig, alert: ExpiryAlert, now: dt.datetime
) -> bool:
    """Record `alert` as an event unless its marker exists; True when this call recorded it. The marker
    is written first: a node stopped in between loses the event rather than recording it twice."""
    marker = expiry_alert_key(node.cluster_name, alert.fingerprint, alert.level.label)
    event = alert_event(node, alert, now)
    try:
        await recorder.store.create(marker, json.dumps({"node": node.name, "sid": event["sid"]}).encode())
    except AlreadyExistsError:
        return False
    await recorder.record_now(event)
    log.warning("expiry alert %s for %s key %s", alert.describe(), alert.ca_type, alert.public_key_hash[:16])
    return True


async def watch_expiry(node: NodeConfig, recorder: EventRecorder, view: ClusterView) -> None:
    """Check this node's entries whenever the CAs or override entries change and at least every
    CHECK_INTERVAL; record each new level once. Errors are logged and the next check tries again."""
    done: set[tuple[str, int]] = set()  # (fingerprint, level) known recorded: no etcd call again
    checked: tuple[object, ...] | None = None  # the inputs of the last check that went through
    while True:
        await view.ready.wait()
        revision = view.revision
        inputs = _inputs(view, node.host_id)
        try:
            if inputs != checked:
                now = clock.now()
                for alert, _ in cluster_alerts(view, now, node.host_id):
                    if (alert.fingerprint, alert.level) in done:
                        continue
                    await record_once(recorder, node, alert, now)
                    done.add((alert.fingerprint, alert.level))
                checked = inputs
        except asyncio.CancelledError:
            raise
        except Exception as e:  # etcd away, a clock setting that does not parse: try at the next check
            log.warning("expiry check failed: %s", e)
        if not await view.next_change(revision, CHECK_INTERVAL):  # the timer: time moved on
            checked = None


def _inputs(view: ClusterView, host_id: str) -> tuple[object, ...]:
    """What this node's alerts depend on in the view but the time: each CA type's CA and the override
    entries of this node's keys (another node's entry changing costs no check)."""
    found: list[object] = []
    for ca_type in CA_TYPES:
        ca = view.cert_authorities.get(ca_type)
        stored = view.stored_override(ca_type)
        if ca is None or stored is None or not stored.valid:
            found += [ca, stored is not None]
            continue
        own = {pair.public_key_hash for _, pair in ca.keys_of_host(host_id)}
        found += [ca, tuple(e for e in stored.resource.certificate_overrides if e.key_hash in own)]
    return tuple(found)
