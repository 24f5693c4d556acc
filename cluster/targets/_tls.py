"""The targets' TLS server identities: certificates from the cluster's server CA, as nodes have."""

from __future__ import annotations

import ssl
from pathlib import Path

from authsim.cluster.layout import ClusterLayout
from authsim.cluster.mtls import TLSIdentity, ensure_server_identity

KINDS = ("desktop", "db")


def target_identity(cluster_dir: Path, cluster_name: str, kind: str) -> TLSIdentity:
    """The target's server certificate in `targets/<kind>/tls.pem`, made once; its DNS SANs include
    `kind`, the name clients verify (see `cluster.targets.client`). Once made it is only read, so a
    target whose files were made elsewhere (docker-compose: `cluster.targets.provision pki`) needs no
    server CA key."""
    target = ClusterLayout(cluster_dir).target(kind)
    made = TLSIdentity(target.tls_cert, target.tls_key, target.server_ca)
    if made.cert.exists() and made.key.exists():
        return made
    return ensure_server_identity(cluster_dir, cluster_name, target.directory, [kind])


def server_context(identity: TLSIdentity) -> ssl.SSLContext:
    """A TLS server context presenting the target's certificate; no client certificate asked for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(identity.cert, identity.key)
    return context
