"""An override write and a concurrent CA change (a rotation): the write's checks against the CA and the
write itself land together or not at all (one Txn compares both revisions). Real etcd, in-process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from authsim.auth_node.cluster_view import ClusterView
from authsim.auth_node.config import NodeConfig
from authsim.auth_node.overrides import Overrides
from authsim.cluster.errors import ValidationError
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride
from authsim.cluster.store import EtcdStore, EtcdTLS, Versioned
from authsim.cluster.store.keys import cert_authority_key, cluster_prefix, override_key
from tests.certs import ca_key_pair, cluster_ca, external_ca, override_cert, rsa_key

HOST_A, HOST_B = "host-a", "host-b"


class RotatingStore(EtcdStore):
    """The real store; the first time the CA is read, another writer rotates it (all keys active) in
    etcd right after the read, so the reader holds the CA as it was a moment before."""

    rotate_key = ""

    async def get_both(self, key: str, other: str) -> tuple[Versioned | None, Versioned | None]:
        found = await super().get_both(key, other)
        if other == self.rotate_key and found[1] is not None:
            self.rotate_key = ""
            ca = CertAuthority.from_json(found[1].value)
            rotated = replace(
                ca, active_keys=(*ca.active_keys, *ca.additional_trusted_keys), additional_trusted_keys=()
            )
            assert (await self.compare_and_swap(other, found[1].mod_revision, rotated.to_json())).succeeded
        return found


async def test_disable_checked_against_a_ca_rotated_meanwhile_is_refused(
    etcd_server: EtcdServer, etcd_tls: EtcdTLS, key_prefix: str, tmp_path: Path
) -> None:
    """Host B's key is additional, so staging a disable of its enabled override is allowed; a rotation
    lands between the read of the CA and the write and makes that key active: the write must not land
    on the old check. It goes round again and is refused by the rule about active keys."""
    cluster = key_prefix.strip("/").replace("/", "-")
    chain = external_ca(levels=1)
    ca_a, ca_b = cluster_ca(cluster, rsa_key(1)), cluster_ca(cluster, rsa_key(2))
    ca = CertAuthority(
        cluster,
        "windows",
        active_keys=(ca_key_pair(ca_a, HOST_A),),
        additional_trusted_keys=(ca_key_pair(ca_b, HOST_B),),
    )
    entry = CertificateOverride(certificate=override_cert(rsa_key(2), chain[0], cluster).pem.strip())
    entry = replace(entry, public_key=entry.key_hash)
    resource = CertAuthorityOverride(cluster, "windows", certificate_overrides=(entry,))
    node = NodeConfig("node1", cluster, HOST_A, "127.0.0.1:1", (etcd_server.endpoint,), tmp_path, "", "")
    store = RotatingStore([etcd_server.endpoint], tls=etcd_tls)
    await store.connect()
    try:
        await store.create(cert_authority_key(cluster, "windows"), ca.to_json())
        await store.create(override_key(cluster, "windows"), resource.to_json())
        before = await store.get(override_key(cluster, "windows"))
        store.rotate_key = cert_authority_key(cluster, "windows")
        overrides = Overrides(store, node, ClusterView(store, cluster))  # view not running: reads etcd
        with pytest.raises(ValidationError, match=r"disabling the enabled override of the active key"):
            await overrides.update_entry(
                "windows", entry.key_hash, lambda e: replace(e, disabled=True), force=False
            )
        assert store.rotate_key == ""  # the rotation did happen between the read and the write
        assert await store.get(override_key(cluster, "windows")) == before
    finally:
        await store.delete_prefix(cluster_prefix(cluster))
        await store.close()
