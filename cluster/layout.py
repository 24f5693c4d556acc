"""The cluster dir's on-disk layout (SPEC §4): the one module that names its files and folders."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

_MAX_SOCKET_PATH = 107  # bytes of a Unix socket path (sun_path less its NUL)


@dataclass(frozen=True)
class ServerTLSLayout:
    """A dir holding a TLS server identity from the cluster's server CA (a node's or a target's)."""

    directory: Path

    @property
    def tls_cert(self) -> Path:
        return self.directory / "tls.pem"

    @property
    def tls_key(self) -> Path:
        return self.directory / "tls.key"

    @property
    def server_ca(self) -> Path:
        """The cluster's server CA certificate, to check other servers of the cluster with."""
        return self.directory / "server-ca.pem"


@dataclass(frozen=True)
class EtcdClientLayout:
    """An etcd client identity in a dir (a node's or the admin's): certificate, key, the etcd CA."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "etcd-client.pem"

    @property
    def key(self) -> Path:
        """The client key (mode 0600)."""
        return self.directory / "etcd-client.key"

    @property
    def etcd_ca(self) -> Path:
        """The cluster's etcd CA certificate, to check the etcd members with."""
        return self.directory / "etcd-ca.pem"

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.cert, self.key, self.etcd_ca)


@dataclass(frozen=True)
class NodeLayout(ServerTLSLayout):
    """A node's state dir: `nodes/<name>/` of a cluster dir, or a bare dir (`authsim provision node`)."""

    @property
    def config(self) -> Path:
        """`node.yaml`, for `python -m authsim.auth_node --config`."""
        return self.directory / "node.yaml"

    @property
    def host_id(self) -> Path:
        return self.directory / "host_id"

    @property
    def log(self) -> Path:
        return self.directory / "node.log"

    @property
    def softhsm_conf(self) -> Path:
        return self.directory / "softhsm2.conf"

    @property
    def tokens(self) -> Path:
        """SoftHSM2's token dir (mode 0700)."""
        return self.directory / "tokens"

    @property
    def pin(self) -> Path:
        """The token's user PIN (mode 0600)."""
        return self.directory / "pin"

    @property
    def so_pin(self) -> Path:
        """The token's security officer PIN (mode 0600)."""
        return self.directory / "so-pin"

    @property
    def local_socket_dir(self) -> Path:
        """The folder (mode 0700, owned by the cluster's OS user) holding the node's local socket."""
        return self.directory / "sock"

    @property
    def local_socket(self) -> Path:
        """The node's Unix domain socket (same mTLS as its TCP port), for admin tools on this machine."""
        return self.local_socket_dir / "node.sock"

    @property
    def hsm_socket(self) -> Path:
        """The socket of the node's HSM process (`up --hsm process`): `hsm/hsm.sock`, or, when that
        would pass the 107-byte limit of socket paths, one in the temp dir named by a hash of the node dir."""
        inside = self.directory / "hsm" / "hsm.sock"
        if len(str(inside).encode()) <= _MAX_SOCKET_PATH:
            return inside
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"authsim-hsm-{digest}" / "hsm.sock"

    @property
    def hsm_log(self) -> Path:
        """The output of the node's HSM process."""
        return self.directory / "hsm.log"

    @property
    def admin_ca(self) -> Path:
        """The admin CA certificate: the only CA the node accepts client certificates from."""
        return self.directory / "admin-ca.pem"

    @property
    def etcd_client(self) -> EtcdClientLayout:
        """The node's own etcd client identity (CN = node name), for the embedded etcd."""
        return EtcdClientLayout(self.directory)

    @property
    def ca_keys(self) -> Path:
        """The record of the CA keys this node made in its token (`ca-keys.json`)."""
        return self.directory / "ca-keys.json"

    @property
    def tls_files(self) -> tuple[Path, ...]:
        """The TLS files `authsim provision pki` makes for a node and `provision node` copies."""
        return (self.tls_cert, self.tls_key, self.admin_ca, self.server_ca)


@dataclass(frozen=True)
class TargetLayout(ServerTLSLayout):
    """A downstream target's dir, `targets/<kind>/`: its TLS identity, trust files and log."""

    @property
    def log(self) -> Path:
        return self.directory / "target.log"

    @property
    def ntauth(self) -> Path:
        """The desktop's NTAuth store."""
        return self.directory / "ntauth.pem"

    @property
    def roots(self) -> Path:
        """The desktop's trust anchors and intermediates."""
        return self.directory / "roots.pem"

    @property
    def ca_bundle(self) -> Path:
        """The database's CA bundle for client certificates."""
        return self.directory / "ca-bundle.pem"

    @property
    def admin_crls(self) -> Path:
        """CRLs an admin gave (`authsim trust --crl`), e.g. the external CA's, beside the cluster's."""
        return self.directory / "crls.pem"


@dataclass(frozen=True)
class KdcLayout:
    """The desktop's MIT Kerberos KDC (`targets/desktop/kdc/`): private config, database, PKINIT files."""

    directory: Path

    @property
    def krb5_conf(self) -> Path:
        """The KDC's and kadmin.local's KRB5_CONFIG (no client PKINIT settings: the KDC reads it too)."""
        return self.directory / "krb5.conf"

    @property
    def kdc_conf(self) -> Path:
        """KRB5_KDC_PROFILE: the realm's database, listening port and PKINIT settings."""
        return self.directory / "kdc.conf"

    @property
    def database_dir(self) -> Path:
        """The principal database and its master key stash (mode 0700)."""
        return self.directory / "db"

    @property
    def database(self) -> Path:
        return self.database_dir / "principal"

    @property
    def stash(self) -> Path:
        """The database master key (kdb5_util's stash file, mode 0600)."""
        return self.database_dir / "stash"

    @property
    def cert(self) -> Path:
        """The KDC's PKINIT certificate (EKU id-pkinit-KPKdc, SAN krbtgt/REALM@REALM)."""
        return self.directory / "kdc.pem"

    @property
    def key(self) -> Path:
        return self.directory / "kdc.key"

    @property
    def kdc_ca(self) -> Path:
        """The CA of the KDC's certificate: the KDC checks its own chain, and clients check the KDC."""
        return self.directory / "kdc-ca.pem"

    @property
    def anchors(self) -> Path:
        """The PKINIT trust anchors for client certificates (`pkinit_anchors`), rewritten on reload."""
        return self.directory / "anchors.pem"

    @property
    def crls(self) -> Path:
        """The CRLs the running KDC checks (`pkinit_revoke`), written by its supervisor; absent: none."""
        return self.directory / "crls.pem"

    @property
    def serving(self) -> Path:
        """The digest of the trust (anchors and CRLs) the running KDC was started with, written by its
        supervisor once the KDC serves, deleted when the supervisor exits."""
        return self.directory / "serving"

    @property
    def pid_file(self) -> Path:
        """The PID of the KDC's supervisor (`authsim.cluster.local.kdc_supervisor`) while it runs."""
        return self.directory / "supervisor.pid"

    @property
    def log(self) -> Path:
        return self.directory / "kdc.log"

    @property
    def logon_lock(self) -> Path:
        """Held during a logon, so the KDC's log lines of that logon are told apart from others'."""
        return self.directory / "logon.lock"


@dataclass(frozen=True)
class PostgresLayout(ServerTLSLayout):
    """The database's PostgreSQL server (`targets/db/postgres/`): data dir, TLS identity, trust, log."""

    @property
    def data(self) -> Path:
        """The data dir made by initdb (mode 0700), holding the Unix socket dir."""
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        """The Unix socket dir: `data/sock`, or, when a socket there would pass the 107-byte limit of
        socket paths, a dir in the temp dir named by a hash of the data dir (checked private on use)."""
        inside = self.data / "sock"
        if len(str(inside / ".s.PGSQL.65535").encode()) <= _MAX_SOCKET_PATH:
            return inside
        digest = hashlib.sha256(str(self.data).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"authsim-pg-{digest}"

    @property
    def hba(self) -> Path:
        """pg_hba.conf: certificate logins over TLS on loopback, the superuser over the socket."""
        return self.directory / "pg_hba.conf"

    @property
    def client_ca(self) -> Path:
        """`ssl_ca_file`: the CAs client certificates must chain to, rewritten on reload."""
        return self.directory / "client-ca.pem"

    @property
    def crl_file(self) -> Path:
        """`ssl_crl_file` once a credential is revoked: the published CRLs and the admin's, PEM."""
        return self.directory / "crl.pem"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def login_lock(self) -> Path:
        """Held during a client login, so the server's log lines of that login are told apart."""
        return self.directory / "login.lock"


@dataclass(frozen=True)
class AdminLayout:
    """`admin/`: the admin mTLS identity authctl presents, and the server CA it checks nodes with."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "admin.pem"

    @property
    def key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def server_ca(self) -> Path:
        return self.directory / "server-ca.pem"

    @property
    def etcd_client(self) -> EtcdClientLayout:
        """The admin's etcd client identity (CN = admin), for the embedded etcd."""
        return EtcdClientLayout(self.directory)

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.cert, self.key, self.server_ca)


@dataclass(frozen=True)
class PkiLayout:
    """`pki/` (mode 0700): the cluster's three TLS CAs (server, admin, etcd), certificates and keys."""

    directory: Path

    @property
    def server_ca_cert(self) -> Path:
        return self.directory / "server-ca.pem"

    @property
    def server_ca_key(self) -> Path:
        return self.directory / "server-ca.key"

    @property
    def admin_ca_cert(self) -> Path:
        return self.directory / "admin-ca.pem"

    @property
    def admin_ca_key(self) -> Path:
        return self.directory / "admin-ca.key"

    @property
    def etcd_ca_cert(self) -> Path:
        """The CA of the embedded etcd's member and client certificates."""
        return self.directory / "etcd-ca.pem"

    @property
    def etcd_ca_key(self) -> Path:
        return self.directory / "etcd-ca.key"

    @property
    def kdc_ca_cert(self) -> Path:
        """The CA of the KDC's PKINIT certificate, and of nothing else (a PKINIT trust anchor)."""
        return self.directory / "kdc-ca.pem"

    @property
    def kdc_ca_key(self) -> Path:
        return self.directory / "kdc-ca.key"


@dataclass(frozen=True)
class EtcdLayout:
    """An etcd member's dir (`etcd/` of a cluster dir): its data dir, its log and its TLS identity."""

    directory: Path

    @property
    def tls_cert(self) -> Path:
        """The member certificate: serves clients and peers, is a client to the other members."""
        return self.directory / "tls.pem"

    @property
    def tls_key(self) -> Path:
        return self.directory / "tls.key"

    @property
    def etcd_ca(self) -> Path:
        """The etcd CA: the only CA whose client (and peer) certificates the member accepts."""
        return self.directory / "etcd-ca.pem"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "etcd.log"


@dataclass(frozen=True)
class ClusterLayout:
    """A cluster dir (`--dir`); an admin dir or a targets dir is one holding only some of its parts."""

    root: Path

    @property
    def state_file(self) -> Path:
        """`cluster.yaml`: cluster name, etcd endpoints, nodes and targets."""
        return self.root / "cluster.yaml"

    @property
    def marker(self) -> Path:
        """Written when `authsim up` makes the dir: only a dir carrying it is ever deleted (--purge)."""
        return self.root / ".authsim-cluster"

    @property
    def admin(self) -> AdminLayout:
        return AdminLayout(self.root / "admin")

    @property
    def pki(self) -> PkiLayout:
        return PkiLayout(self.root / "pki")

    @property
    def etcd(self) -> EtcdLayout:
        """The embedded etcd's dir."""
        return EtcdLayout(self.root / "etcd")

    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    def node(self, name: str) -> NodeLayout:
        return NodeLayout(self.nodes_dir / name)

    def provisioned_nodes(self) -> dict[str, NodeLayout]:
        """Node name -> layout, for each dir under `nodes/` that holds a host id."""
        nodes = (NodeLayout(path) for path in sorted(self.nodes_dir.glob("*")))
        return {node.directory.name: node for node in nodes if node.host_id.exists()}

    @property
    def targets_dir(self) -> Path:
        return self.root / "targets"

    @property
    def crl_dir(self) -> Path:
        """The cluster's CRL publication point: every node mirrors the stored CRLs here (DER)."""
        return self.root / "crl"

    def target(self, kind: str) -> TargetLayout:
        return TargetLayout(self.targets_dir / kind)

    @property
    def kdc(self) -> KdcLayout:
        """The desktop target's KDC."""
        return KdcLayout(self.target("desktop").directory / "kdc")

    @property
    def postgres(self) -> PostgresLayout:
        """The database target's PostgreSQL server."""
        return PostgresLayout(self.target("db").directory / "postgres")

    def logs(self) -> dict[str, Path]:
        """Every log a cluster dir can hold, by the name `authsim logs` takes: each node, etcd, the
        targets (desktop, db) and their servers (kdc, postgres)."""
        found = {name: node.log for name, node in self.provisioned_nodes().items()}
        found["etcd"] = self.etcd.log
        found.update({kind: self.target(kind).log for kind in ("desktop", "db")})
        found["kdc"] = self.kdc.log
        found["postgres"] = self.postgres.log
        return found

    @property
    def demo_dir(self) -> Path:
        """`authsim demo`'s working files (CSRs, certificates, its external CA)."""
        return self.root / "demo"


def published_crl(crl_dir: Path, ca_type: str, key_hash: str, override: bool) -> Path:
    """The published CRL of a CA key: issued by its self-signed CA certificate, or by its override's."""
    return crl_dir / f"{ca_type}-{key_hash[:16]}{'-override' if override else ''}.crl"
