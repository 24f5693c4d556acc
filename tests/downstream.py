"""A real one-node cluster whose active key of one CA type has an enabled override, signed by the
stand-in external CA: what the tests of the real downstream servers (KDC, PostgreSQL) present to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.resources.ca_types import desktop_domain
from tests.certs import openssl_key_hash

CLUSTER = "mycluster"
DOMAIN = desktop_domain(CLUSTER)  # windows UPNs are user@DOMAIN; the realm is DOMAIN in capitals


@dataclass(frozen=True)
class Credential:
    """An issued credential as `authctl auth sign` wrote it, with whether an override was active."""

    cert: bytes  # the leaf
    chain: bytes  # the certificates presented above it (empty for windows)
    key: bytes
    override_active: bool


@dataclass(frozen=True)
class Overridden:
    """The cluster, the external CA, and the override certificate of `ca_type` (node1's active key)."""

    cluster: LocalCluster
    ca: ExternalCA
    ca_type: str
    override_file: Path
    out: Path  # where credentials are written

    @property
    def override(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.override_file.read_bytes())

    def ok(self, *args: str) -> str:
        result = self.cluster.authctl(*args, node="node1")
        assert result.exit_code == 0, (args, result.stderr)
        return result.stdout

    def sign(self, user: str) -> Credential:
        prefix = self.out / f"{self.ca_type}-{user}-{len(list(self.out.glob('*.json')))}"
        info = self.cluster.sign(self.ca_type, user, prefix, node="node1")
        cert, chain, key = (
            Path(f"{prefix}{suffix}").read_bytes() for suffix in (".crt", ".chain.pem", ".key")
        )
        return Credential(cert, chain, key, override_active=info["ca_override"]["active"])

    def set_disabled(self, disabled: bool) -> None:
        key = openssl_key_hash(self.override_file)
        args = ["auth", "update-override", f"--type={self.ca_type}", "--public-key", key]
        self.ok(*args, "--set-disabled", str(disabled).lower(), *(["--force"] if disabled else []))

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The override disabled for the body, enabled again after it."""
        self.set_disabled(True)
        try:
            yield
        finally:
            self.set_disabled(False)


@contextmanager
def overridden_cluster(tmp: Path, ca_type: str) -> Iterator[Overridden]:
    """Start a one-node cluster in `tmp`, give node1's active `ca_type` key an enabled override, yield;
    every process is stopped after."""
    ca = init(tmp / "extca")
    with local_cluster(tmp / "c", nodes=1, cluster_name=CLUSTER) as cluster:
        override_file = tmp / f"{ca_type}-override.pem"
        override_file.write_text(cluster.override_certs(ca, ca_type)["node1"] + "\n")
        out = tmp / "credentials"
        out.mkdir()
        flow = Overridden(cluster, ca, ca_type, override_file, out)
        flow.ok("auth", "create-override", f"--type={ca_type}", str(override_file), str(ca.chain_path))
        yield flow
