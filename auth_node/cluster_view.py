"""This node's live copy of the cluster's CAs and overrides, kept current by an etcd watch (SPEC §8)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from cluster.ca_override import CertAuthorityOverride
from cluster.cert_authority import CertAuthority
from cluster.errors import StoreUnavailableError
from cluster.etcd_keys import cluster_prefix
from cluster.store import EtcdStore, Versioned

log = logging.getLogger(__name__)
RETRY_DELAY = 0.5  # seconds before re-listing after the watch broke


class ClusterView:
    """Issuance reads CAs and overrides from here: no etcd round trip per credential."""

    def __init__(self, store: EtcdStore, cluster_name: str) -> None:
        self.store = store
        self.prefix = cluster_prefix(cluster_name)
        self.cert_authorities: dict[str, CertAuthority] = {}
        self.overrides: dict[str, CertAuthorityOverride] = {}
        self.node_names: dict[str, str] = {}  # host id -> node name
        self.updated_at = 0.0  # time.monotonic() of the last change applied
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """List, then watch from just after the listing; on a broken stream list and watch again."""
        while True:
            try:
                listing = await self.store.get_prefix(self.prefix)
                self.cert_authorities.clear()
                self.overrides.clear()
                self.node_names.clear()
                for key, found in listing:
                    self._apply(key, found)
                start = max((v.mod_revision for _, v in listing), default=0) + 1
                self.ready.set()
                async with contextlib.aclosing(self.store.watch_prefix(self.prefix, start)) as changes:
                    async for key, value in changes:
                        self._apply(key, value)
            except StoreUnavailableError as e:
                log.warning("watch of %s broken (%s); listing again", self.prefix, e)
                await asyncio.sleep(RETRY_DELAY)

    def _apply(self, key: str, value: Versioned | None) -> None:
        kind, _, name = key[len(self.prefix) :].partition("/")
        if kind == "cas":
            if value is None:
                self.cert_authorities.pop(name, None)
            else:
                self.cert_authorities[name] = CertAuthority.from_json(value.value, value.mod_revision)
        elif kind == "ca_overrides":
            if value is None:
                self.overrides.pop(name, None)
            else:
                self.overrides[name] = CertAuthorityOverride.from_json(value.value, value.mod_revision)
        elif kind == "nodes":
            if value is None:
                self.node_names.pop(name, None)
            else:
                self.node_names[name] = json.loads(value.value)["name"]
        else:
            return
        self.updated_at = time.monotonic()
