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
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.errors import ClusterError, ValidationError
from authsim.cluster.layout import ClusterLayout, PostgresLayout
from authsim.cluster.local import processes
from authsim.cluster.local.ports import free_port
from authsim.cluster.local.server_log import end_of, last_line, since, taking_turns
from authsim.cluster.mtls import ensure_server_identity
from authsim.cluster.secret_files import write_all

HOST = "127.0.0.1"
DATABASE = "postgres"
TLS_NAME = "db"  # the DNS name in the server certificate (with localhost and 127.0.0.1)
READY_TIMEOUT = 15.0
COMMAND_TIMEOUT = 30.0
PORT_ATTEMPTS = 3
SERVER_LOG_WAIT = 0.5  # seconds a refused login waits for the server's log line (written after the alert)
_POSTGRES_ACCOUNT = "postgres"  # the name the cluster's root is seen as inside the server's namespace
_SSL_NOT_RELOADED = "SSL configuration was not reloaded"
_MAX_ROLE_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
# A server log line: `2026-01-01 12:00:00.000 UTC [123] FATAL:  message`
_LOG_LINE = re.compile(r"^\S+ \S+ \S+ \[\d+\] (?P<level>LOG|FATAL|DETAIL|ERROR):\s+(?P<message>.*)$")


class LoginResult(NamedTuple):
    """A login: whether PostgreSQL let the role in over TLS, and otherwise its refusal (the server's
    log lines for this login, or what psql reported when the server logged none)."""

    ok: bool
    reason: str


def find_binary(name: str) -> str:
    """A PostgreSQL program of the newest installed version, or a ClusterError saying how to install it."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=_version)
    if not found:
        raise ClusterError(
            f"PostgreSQL's {name} not found: install the Debian package postgresql (./scripts/setup)"
        )
    return str(found[-1])


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.parent.parent.name.split(".") if part.isdigit())


@dataclass
class Postgres:
    """The PostgreSQL server in `layout`; `port` once started (or known), `process` when this process
    started it."""

    layout: PostgresLayout
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def setup(cls, cluster_dir: Path, cluster_name: str, client_cas: Sequence[x509.Certificate]) -> Postgres:
        """The cluster's PostgreSQL: its TLS identity (made once), its data dir (initdb once), pg_hba.conf
        and `client_cas` as the CA bundle client certificates must chain to."""
        pg = cls(ClusterLayout(cluster_dir).postgres)
        ensure_server_identity(cluster_dir, cluster_name, pg.layout.directory, [TLS_NAME])
        os.chmod(pg.layout.directory, 0o700)
        pg._initdb()
        pg._write_hba()
        pg._write_client_cas(client_cas)
        return pg

    @property
    def superuser(self) -> str:
        """The superuser role: the name the server sees the cluster's user as."""
        return _POSTGRES_ACCOUNT if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

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
        fixed = self.port is not None
        for _ in range(1 if fixed else PORT_ATTEMPTS):
            port = self.port or free_port(HOST)
            offset = end_of(self.layout.log)
            process = processes.spawn(self._server_argv(port), self.layout.log, _server_env())
            if self._ready(process, timeout):
                self.port, self.process = port, process
                return
            if fixed or "Address already in use" not in since(self.layout.log, offset):
                raise ClusterError(
                    f"postgres did not start on {HOST}:{port}; end of {self.layout.log}: "
                    f"{processes.tail(self.layout.log, 4)}"
                )
        raise ClusterError(f"postgres found no free port in {PORT_ATTEMPTS} attempts")

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
        """Make `user` a login role unless it exists (no password: it logs in with a certificate)."""
        problems = _role_problems(user)
        if problems:
            raise ValidationError(problems)
        self._superuser_sql(
            "SELECT format('CREATE ROLE %I LOGIN', :'role') "
            "WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \\gexec\n",
            role=user,
        )

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
        """Log in as role `user` over TLS (sslmode=verify-full against the cluster's server CA) with
        `credential` (PEM: the leaf, then the chain libpq presents with it) and its `key` (PEM). Logins
        to one server take turns, so the refusal read from the server's log is this login's."""
        if self.port is None:
            raise ClusterError("PostgreSQL has no port: start it first")
        with (
            tempfile.TemporaryDirectory(prefix="authsim-psql-") as temp,
            taking_turns(self.layout.login_lock),
        ):
            client = Path(temp)
            write_all({client / "cert.pem": credential, client / "key.pem": key})
            conninfo = _conninfo(
                host=HOST,
                port=str(self.port),
                dbname=DATABASE,
                user=user,
                sslmode="verify-full",
                sslrootcert=str(self.layout.server_ca),
                sslcert=str(client / "cert.pem"),
                sslkey=str(client / "key.pem"),
                connect_timeout="10",
            )
            offset = end_of(self.layout.log)
            done = _run(
                [find_binary("psql"), "-X", "-w", "-A", "-t", "-c", "SELECT current_user", conninfo], temp
            )
            if done.returncode == 0 and done.stdout.strip() == user:
                return LoginResult(True, "")
            server = self._server_says(offset)
            client_says = last_line(done.stderr).split(" failed: ", 1)[-1]
            return LoginResult(False, server or f"psql: {client_says}")

    def _server_says(self, offset: int) -> str:
        """The server's log messages since `offset`, waiting a moment for them (a backend logs a TLS
        refusal after sending the alert the client already read)."""
        deadline = time.monotonic() + SERVER_LOG_WAIT
        while True:
            lines = [m for m in map(_LOG_LINE.match, since(self.layout.log, offset).splitlines()) if m]
            if lines or time.monotonic() > deadline:
                return "; ".join(f"{m['level']}: {m['message']}" for m in lines)
            time.sleep(0.02)

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

    def _superuser_sql(self, script: str, **variables: str) -> str:
        """Run `script` (psql input, `:'name'` interpolating `variables`) as the superuser over the
        private socket; its output, or ClusterError with psql's error."""
        if self.port is None:
            raise ClusterError("PostgreSQL has no port: start it first")
        argv = [find_binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += [arg for name, value in variables.items() for arg in ("-v", f"{name}={value}")]
        argv += [
            "-h",
            str(self.layout.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            DATABASE,
        ]
        with tempfile.TemporaryDirectory(prefix="authsim-psql-") as temp:
            done = _run(argv, temp, stdin=script.encode())
        if done.returncode != 0:
            raise ClusterError(f"psql as {self.superuser} failed: {last_line(done.stderr)}")
        return done.stdout

    def _pid_from_file(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.layout.data / "postmaster.pid").read_text().splitlines()[0])
        return None


def _unprivileged() -> list[str]:
    """The command prefix that keeps PostgreSQL from running as root (see the module docstring)."""
    if os.geteuid() != 0:
        return []
    try:
        account = pwd.getpwnam(_POSTGRES_ACCOUNT)
    except KeyError:
        raise ClusterError(
            f"no {_POSTGRES_ACCOUNT!r} account to run PostgreSQL as: install the Debian package postgresql"
        ) from None
    return ["unshare", "--user", f"--map-user={account.pw_uid}", f"--map-group={account.pw_gid}", "--"]


def _server_env() -> dict[str, str]:
    """initdb's and the server's environment: no PG* variables of the caller, messages in English (the
    refusals are read from the log)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


def _role_problems(user: str) -> list[str]:
    size = len(user.encode(errors="surrogatepass"))
    if not user or size > _MAX_ROLE_BYTES or "\0" in user:
        return [f"user: a role name of 1 to {_MAX_ROLE_BYTES} bytes without NUL, got {size} bytes"]
    return []


def _conninfo(**values: str) -> str:
    """A libpq connection string, every value quoted."""

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{name}={quote(value)}" for name, value in values.items())


def _run(argv: list[str], home: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run psql with a clean environment (no PG* variables, no ~/.pgpass or service file of the user)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "PGSYSCONFDIR": home}
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{Path(argv[0]).name} did not finish in {COMMAND_TIMEOUT:g}s") from None
    return subprocess.CompletedProcess(
        argv, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )
