"""The real servers behind the targets, as `authsim up`, `down` and `trust` run them: the desktop's
KDC (`kdc`) and the database's PostgreSQL (`postgres`).

What they trust comes from the targets' trust files (`cluster.targets.trust`): the KDC's
`pkinit_anchors` are the self-signed certificates of the desktop's CA bundle (its root store; the
NTAuth store is checked by the desktop target itself);
PostgreSQL's `ssl_ca_file` is the database's CA bundle. On a fresh dir those files are written only
once the nodes serve (they hold the nodes' CAs), so a server is set up beside the nodes (the KDC's
database, initdb) and started once its trust is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from cryptography import x509

from authsim.cluster.errors import ClusterError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import processes
from authsim.cluster.local.kdc import Kdc
from authsim.cluster.local.ports import port_is_free
from authsim.cluster.local.postgres import Postgres
from authsim.cluster.local.state import ClusterState, ServerEntry
from authsim.cluster.resources.ca_types import desktop_domain
from authsim.cluster.targets.kerberos import anchors_of
from authsim.cluster.targets.trust import read_trust, trust_file

SERVERS = {"desktop": "kdc", "db": "postgres"}  # target kind -> the real server behind it
LABELS = {"kdc": "desktop KDC", "postgres": "db PostgreSQL"}
Server = Kdc | Postgres


def server_marker(directory: Path, name: str) -> str:
    """A string only this server's command line holds (for `processes.is_running` / `stop`)."""
    return _server(directory, name, "").marker


def server_running(directory: Path, name: str, entry: ServerEntry) -> bool:
    return processes.is_running(entry.pid, server_marker(directory, name))


def stop_server(directory: Path, name: str, entry: ServerEntry) -> bool:
    """Stop the server by its recorded PID (the KDC's supervisor with its krb5kdc, their process
    group); False when it was not running."""
    stop = processes.stop_group if name == "kdc" else processes.stop
    return stop(entry.pid, server_marker(directory, name), timeout=10.0)


def setup_server(directory: Path, state: ClusterState, name: str) -> Server:
    """Make the server's files (once) and start it when its trust is known; on its previous port when
    that is free."""
    previous = state.servers.get(name)
    port = int(previous.address.rsplit(":", 1)[1]) if previous else None
    if name == "kdc":
        domain = desktop_domain(state.cluster_name)
        server: Server = Kdc.setup(directory, state.cluster_name, domain, kdc_anchors(directory))
    else:
        server = Postgres.setup(directory, state.cluster_name, client_cas(directory))
    server.port = port if port and port_is_free(port) else None
    if trust_known(directory, name):
        server.start()
    return server


def provision_servers(directory: Path, ca_dir: Path, cluster_name: str) -> None:
    """The servers' files for servers run apart from `authsim up` (docker-compose, `serve`): the KDC's
    and PostgreSQL's certificates from the CAs in `ca_dir` and the KDC's database and PostgreSQL's data
    dir, each made once, and their configs."""
    Kdc.setup(directory, cluster_name, desktop_domain(cluster_name), kdc_anchors(directory), ca_dir)
    Postgres.setup(directory, cluster_name, client_cas(directory), ca_dir)


def serve(directory: Path, name: str, cluster_name: str, port: int) -> NoReturn:
    """Become the server `name` of `directory` (`provision_servers`) on 127.0.0.1:`port` in the
    foreground, trusting what the targets' trust files hold now, its output appended to its log
    (where the target reads the server's refusals)."""
    server = _server(directory, name, desktop_domain(cluster_name))
    made = server.layout.database if isinstance(server, Kdc) else server.layout.data / "PG_VERSION"
    if not made.exists():
        raise ClusterError(
            f"no {LABELS[name]} in {server.layout.directory}: make it first (`targets_provision pki`)"
        )
    load_trust(directory, server)
    argv, env = server.command(port)
    processes.replace_with(argv, server.layout.log, env)


def finish_server(directory: Path, server: Server) -> ServerEntry:
    """Start `server` if `setup_server` could not (its trust was written since); its entry."""
    if server.process is None:
        load_trust(directory, server)
        server.start()
    return ServerEntry(f"127.0.0.1:{server.port}", server.pid)


def trust_known(directory: Path, name: str) -> bool:
    if name == "kdc":
        return trust_file(directory, "desktop", "ntauth").exists()
    return trust_file(directory, "db", "ca").exists()


def kdc_anchors(directory: Path) -> list[x509.Certificate]:
    """The KDC's `pkinit_anchors`: the self-signed certificates of the desktop's CA bundle."""
    return anchors_of(read_trust(directory, "desktop").ca)


def client_cas(directory: Path) -> Sequence[x509.Certificate]:
    """PostgreSQL's `ssl_ca_file`: the database's CA bundle."""
    return read_trust(directory, "db").ca


def load_trust(directory: Path, server: Server) -> None:
    """Give `server` the trust in the targets' files (restarting the KDC when it runs)."""
    if isinstance(server, Kdc):
        server.reload_anchors(kdc_anchors(directory))
    else:
        server.reload_client_cas(client_cas(directory))


def reload_trust(directory: Path, kind: str) -> str | None:
    """After `authsim trust --target kind`: the server behind it takes the new trust (the KDC's
    supervisor restarts it on its port, PostgreSQL reloads); what happened, or None when the cluster
    runs no such server."""
    if not ClusterState.path(directory).exists():  # a targets dir of its own (docker-compose)
        return None
    state = ClusterState.load(directory)
    name = SERVERS[kind]
    entry = state.servers.get(name)
    if entry is None or not server_running(directory, name, entry):
        return None
    server = _server(directory, name, desktop_domain(state.cluster_name))
    server.port = int(entry.address.rsplit(":", 1)[1])
    load_trust(directory, server)
    if isinstance(server, Kdc):
        return f"{LABELS[name]} restarted on {entry.address} with the new anchors and CRLs"
    return f"{LABELS[name]} reloaded its CA file"


def _server(directory: Path, name: str, domain: str) -> Server:
    """The server of `directory` named `name` (for the KDC, of `domain`), without a process."""
    return Kdc(directory, domain) if name == "kdc" else Postgres(ClusterLayout(directory).postgres)
