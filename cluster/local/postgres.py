"""The database target's PostgreSQL server: a real certificate-auth verifier, run by the cluster.

Everything is private to `targets/db/postgres/` (`PostgresLayout`): a data dir made once with initdb,
its Unix socket dir inside it, the server's TLS identity from the cluster's server CA, the CA bundle
client certificates must chain to (`ssl_ca_file`) and `pg_hba.conf`:

    local    all  <superuser>  peer            the cluster's own user, over the private socket
    hostssl  all  <superuser>  127.0.0.1/32  reject
    hostssl  all  all          127.0.0.1/32  cert   (clientcert=verify-full: CN = role)

The server listens on loopback only. Settings are given on its command line (`-c`), so the data dir's
own postgresql.conf stays initdb's. PostgreSQL re-reads `ssl_ca_file` on reload (SIGHUP).

Who the server runs as. PostgreSQL refuses to run as root. When the cluster runs as root, initdb and
postgres run in a user namespace of their own (`unshare --user --map-user=<postgres>`) in which the
cluster's user is seen as the unprivileged `postgres` account: without capabilities, and towards the
file system the cluster's user, like every other process of the cluster, so the files it makes are
owned by the cluster's user (data dir 0700, like the nodes' token dirs). So, as when
the cluster runs as another user (then the server simply runs as that user), only the cluster's own
user can read the data dir: not the `postgres` account, not any other local user (SPEC §12). Running
as the `postgres` account instead would make the data dir that account's, and it could not even reach
a data dir below the cluster's private dirs. No account is made and no system file is changed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.errors import ClusterError, PortInUseError, ValidationError
from authsim.cluster.layout import ClusterLayout, PostgresLayout
from authsim.cluster.local import processes
from authsim.cluster.local.ports import free_port, on_free_ports
from authsim.cluster.mtls import ensure_server_identity
from authsim.cluster.secret_files import write_all
from authsim.cluster.targets import pg_client
from authsim.cluster.targets.pg_client import POSTGRES_ACCOUNT, LoginResult, find_binary
from authsim.cluster.targets.server_log import end_of, last_line, since

HOST = "127.0.0.1"
TLS_NAME = "db"  # the DNS name in the server certificate (with localhost and 127.0.0.1)
READY_TIMEOUT = 15.0
_SSL_NOT_RELOADED = "SSL configuration was not reloaded"


@dataclass
class Postgres:
    """The PostgreSQL server in `layout`; `port` once started (or known), `process` when this process
    started it."""

    layout: PostgresLayout
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def setup(
        cls,
        cluster_dir: Path,
        cluster_name: str,
        client_cas: Sequence[x509.Certificate],
        ca_dir: Path | None = None,
    ) -> Postgres:
        """The cluster's PostgreSQL: its TLS identity (made once, from the server CA in `ca_dir`, default
        `cluster_dir`), its data dir (initdb once), pg_hba.conf and `client_cas` as the CA bundle client
        certificates must chain to (none: not yet known, to be given to `reload_client_cas` before
        `start`)."""
        pg = cls(ClusterLayout(cluster_dir).postgres)
        ensure_server_identity(ca_dir or cluster_dir, cluster_name, pg.layout.directory, [TLS_NAME])
        os.chmod(pg.layout.directory, 0o700)
        pg._initdb()
        pg._write_hba()
        if client_cas:
            pg._write_client_cas(client_cas)
        return pg

    @property
    def superuser(self) -> str:
        return pg_client.superuser()

    @property
    def marker(self) -> str:
        """A string only this server's command line holds (for `processes.is_running` / `stop`)."""
        return f"-D {self.layout.data}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start postgres in its own session and wait until it accepts connections. Without a port, one
        is picked, and picked again if another process takes it first."""
        if self.port is not None:
            self._start_on(self.port, timeout)
        else:
            on_free_ports(lambda: self._start_on(free_port(HOST), timeout))

    def _start_on(self, port: int, timeout: float) -> None:
        """Start on `port`; PortInUseError when another process holds it."""
        argv, env = self.command(port)
        offset = end_of(self.layout.log)
        process = processes.spawn(argv, self.layout.log, env)
        if self._ready(process, timeout):
            self.port, self.process = port, process
            return
        taken = "Address already in use" in since(self.layout.log, offset)
        raise (PortInUseError if taken else ClusterError)(
            f"postgres did not start on {HOST}:{port}; end of {self.layout.log}: "
            f"{processes.tail(self.layout.log, 4)}"
        )

    def command(self, port: int) -> tuple[list[str], dict[str, str]]:
        """postgres' command line and environment to serve in the foreground on `port` (its private
        socket dir made here)."""
        self._private_socket_dir()
        return self._server_argv(port), _server_env()

    def stop(self) -> bool:
        """Stop the server by PID (only when that PID is still this server); False when it was not
        running. SIGTERM is PostgreSQL's smart shutdown: it ends once the sessions have."""
        stopped = processes.stop(self.pid or self._pid_from_file(), self.marker, timeout=10.0)
        if self.process is not None:
            self.process.poll()
        self.process = None
        return stopped

    def running(self) -> bool:
        return processes.is_running(self.pid or self._pid_from_file(), self.marker)

    def create_role(self, user: str) -> None:
        pg_client.create_role(self.layout, self._port(), user)

    def reload_client_cas(self, client_cas: Sequence[x509.Certificate]) -> None:
        """Trust exactly `client_cas` for client certificates: rewrite `ssl_ca_file`, reload the server
        (SIGHUP), and return once logins use the new bundle (the server's config load time changed)."""
        self._write_client_cas(client_cas)
        pid = self.pid or self._pid_from_file()
        if pid is None or not processes.is_running(pid, self.marker):
            return
        before = self._superuser_sql("SELECT pg_conf_load_time();\n")
        offset = end_of(self.layout.log)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + READY_TIMEOUT
        while self._superuser_sql("SELECT pg_conf_load_time();\n") == before:
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"postgres did not reload in {READY_TIMEOUT:g}s: {processes.tail(self.layout.log, 2)}"
                )
            time.sleep(0.02)
        if _SSL_NOT_RELOADED in (said := since(self.layout.log, offset)):
            raise ClusterError(
                f"postgres kept its previous TLS settings: {last_line(said.split(_SSL_NOT_RELOADED)[0])}"
            )

    def login(self, credential: bytes, key: bytes, user: str) -> LoginResult:
        """Log in as role `user` with `credential` and its `key` (`pg_client.login`)."""
        return pg_client.login(self.layout, self._port(), credential, key, user)

    def _ready(self, process: subprocess.Popen[bytes], timeout: float) -> bool:
        """True once the server says in postmaster.pid that it accepts connections; False (and no
        process left) when it exited or did not get there in `timeout` seconds."""
        deadline = time.monotonic() + timeout
        status = self.layout.data / "postmaster.pid"
        while process.poll() is None:
            with contextlib.suppress(OSError):
                lines = status.read_text().splitlines()
                if len(lines) >= 8 and lines[0].strip() == str(process.pid) and lines[7].strip() == "ready":
                    return True
            if time.monotonic() > deadline:
                processes.stop(process.pid, self.marker)
                process.poll()
                return False
            time.sleep(0.02)
        return False

    def _server_argv(self, port: int) -> list[str]:
        layout = self.layout
        settings = {
            "listen_addresses": HOST,
            "port": str(port),
            "unix_socket_directories": str(layout.socket_dir),
            "unix_socket_permissions": "0700",
            "hba_file": str(layout.hba),
            "ssl": "on",
            "ssl_cert_file": str(layout.tls_cert),
            "ssl_key_file": str(layout.tls_key),
            "ssl_ca_file": str(layout.client_ca),
        }
        options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        return [*_unprivileged(), find_binary("postgres"), "-D", str(layout.data), *options]

    def _initdb(self) -> None:
        """The data dir, made once (PG_VERSION marks a finished one)."""
        data = self.layout.data
        if (data / "PG_VERSION").exists():
            return
        argv = [*_unprivileged(), find_binary("initdb"), "-D", str(data), "-U", self.superuser]
        argv += ["--auth=reject", "--encoding=UTF8", "--locale=C", "--no-instructions"]
        with self.layout.log.open("ab") as log:
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_server_env(), check=False
            )
        if done.returncode != 0:
            raise ClusterError(
                f"initdb failed in {data}; end of {self.layout.log}: {processes.tail(self.layout.log, 3)}"
            )
        self.layout.socket_dir.mkdir(mode=0o700, exist_ok=True)

    def _write_hba(self) -> None:
        su = self.superuser
        write_all(
            {
                self.layout.hba: (
                    "# authsim: certificate logins over TLS on loopback; the superuser only over the socket\n"
                    f"local    all  {su}  peer\n"
                    f"hostssl  all  {su}  {HOST}/32  reject\n"
                    f"hostssl  all  all  {HOST}/32  cert\n"
                ).encode()
            }
        )

    def _write_client_cas(self, client_cas: Sequence[x509.Certificate]) -> None:
        if not client_cas:
            raise ValidationError(
                ["client_cas: at least one CA certificate (PostgreSQL takes no empty ssl_ca_file)"]
            )
        write_all({self.layout.client_ca: b"".join(c.public_bytes(Encoding.PEM) for c in client_cas)})

    def _superuser_sql(self, script: str) -> str:
        return pg_client.superuser_sql(self.layout, self._port(), script)

    def _port(self) -> int:
        if self.port is None:
            raise ClusterError("PostgreSQL has no port: start it first")
        return self.port

    def _private_socket_dir(self) -> None:
        """The socket dir, made 0700; ClusterError when it is not a dir of the cluster's user alone
        (one in the temp dir could have been made by someone else first)."""
        directory = self.layout.socket_dir
        directory.mkdir(mode=0o700, exist_ok=True)
        found = directory.lstat()
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o077:
            raise ClusterError(f"{directory}: the socket dir must be a dir of this user only (mode 0700)")

    def _pid_from_file(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.layout.data / "postmaster.pid").read_text().splitlines()[0])
        return None


def _unprivileged() -> list[str]:
    """The command prefix that keeps PostgreSQL from running as root (see the module docstring)."""
    if os.geteuid() != 0:
        return []
    try:
        account = pwd.getpwnam(POSTGRES_ACCOUNT)
    except KeyError:
        raise ClusterError(
            f"no {POSTGRES_ACCOUNT!r} account to run PostgreSQL as: install the Debian package postgresql"
        ) from None
    return ["unshare", "--user", f"--map-user={account.pw_uid}", f"--map-group={account.pw_gid}", "--"]


def _server_env() -> dict[str, str]:
    """initdb's and the server's environment: no PG* variables of the caller, messages in English (the
    refusals are read from the log)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
