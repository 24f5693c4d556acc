"""A client's certificate login to the database's PostgreSQL server, and its roles.

The server itself (its data dir, its process) is `authsim.cluster.local.postgres`; this is what a
client of it does: `psql` over TLS with a certificate, and `psql` as the superuser over the server's
private socket to make roles (the target process runs as the cluster's user, whom the server knows
as its superuser).
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from authsim.cluster.errors import ClusterError, ValidationError
from authsim.cluster.layout import PostgresLayout
from authsim.cluster.secret_files import write_all
from authsim.cluster.targets.server_log import end_of, last_line, since, taking_turns

HOST = "127.0.0.1"
DATABASE = "postgres"
COMMAND_TIMEOUT = 30.0
SERVER_LOG_WAIT = 0.5  # seconds a refused login waits for the server's log line (written after the alert)
POSTGRES_ACCOUNT = "postgres"  # the name the cluster's root is seen as inside the server's namespace
_MAX_ROLE_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
# A server log line: `2026-01-01 12:00:00.000 UTC [123] FATAL:  message`
_LOG_LINE = re.compile(r"^\S+ \S+ \S+ \[\d+\] (?P<level>LOG|FATAL|DETAIL|ERROR):\s+(?P<message>.*)$")


class LoginResult(NamedTuple):
    """A login: whether PostgreSQL let the role in over TLS, and otherwise its refusal (the server's
    log lines for this login, or what psql reported when the server logged none)."""

    ok: bool
    reason: str


RELOAD_TIMEOUT = 10.0
_VERIFY_FAILED = "certificate verify failed"


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


def superuser() -> str:
    """The superuser role: the name the server sees the cluster's user as."""
    return POSTGRES_ACCOUNT if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def create_role(layout: PostgresLayout, port: int, user: str) -> None:
    """Make `user` a login role unless it exists (no password: it logs in with a certificate)."""
    size = len(user.encode(errors="surrogatepass"))
    if not user or size > _MAX_ROLE_BYTES or "\0" in user:
        raise ValidationError(
            [f"user: a role name of 1 to {_MAX_ROLE_BYTES} bytes without NUL, got {size} bytes"]
        )
    superuser_sql(
        layout,
        port,
        "SELECT format('CREATE ROLE %I LOGIN', :'role') "
        "WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \\gexec\n",
        role=user,
    )


def superuser_sql(layout: PostgresLayout, port: int, script: str, **variables: str) -> str:
    """Run `script` (psql input, `:'name'` interpolating `variables`) as the superuser over the
    private socket; its output, or ClusterError with psql's error."""
    argv = [find_binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    argv += [arg for name, value in variables.items() for arg in ("-v", f"{name}={value}")]
    argv += ["-h", str(layout.socket_dir), "-p", str(port), "-U", superuser(), "-d", DATABASE]
    with tempfile.TemporaryDirectory(prefix="authsim-psql-") as temp:
        done = run_psql(argv, temp, stdin=script.encode())
    if done.returncode != 0:
        raise ClusterError(f"psql as {superuser()} failed: {last_line(done.stderr)}")
    return done.stdout


def install_crls(layout: PostgresLayout, port: int, bundle: bytes) -> bool:
    """Make PostgreSQL check the CRLs in `bundle` (PEM; b"": none) when they changed: `ssl_crl_file`
    set (ALTER SYSTEM) or reset, and the configuration reloaded; True when it was."""
    current = layout.crl_file.read_bytes() if layout.crl_file.exists() else b""
    if current == bundle:
        return False
    if bundle:
        write_all({layout.crl_file: bundle})
        script = "ALTER SYSTEM SET ssl_crl_file = :'path';\n"
    else:
        layout.crl_file.unlink()
        script = "ALTER SYSTEM RESET ssl_crl_file;\n"
    before = superuser_sql(layout, port, "SELECT pg_conf_load_time();\n")
    superuser_sql(layout, port, script + "SELECT pg_reload_conf();\n", path=str(layout.crl_file))
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while superuser_sql(layout, port, "SELECT pg_conf_load_time();\n") == before:
        if time.monotonic() > deadline:
            raise ClusterError(f"postgres did not reload its CRLs in {RELOAD_TIMEOUT:g}s")
        time.sleep(0.02)
    return True


def login(layout: PostgresLayout, port: int, credential: bytes, key: bytes, user: str) -> LoginResult:
    """Log in as role `user` over TLS (sslmode=verify-full against the cluster's server CA) with
    `credential` (PEM: the leaf, then the chain libpq presents with it) and its `key` (PEM). Logins
    to one server take turns, so the refusal read from the server's log is this login's."""
    with tempfile.TemporaryDirectory(prefix="authsim-psql-") as temp, taking_turns(layout.login_lock):
        client = Path(temp)
        write_all({client / "cert.pem": credential, client / "key.pem": key})
        conninfo = _conninfo(
            host=HOST,
            port=str(port),
            dbname=DATABASE,
            user=user,
            sslmode="verify-full",
            sslrootcert=str(layout.server_ca),
            sslcert=str(client / "cert.pem"),
            sslkey=str(client / "key.pem"),
            connect_timeout="10",
        )
        offset = end_of(layout.log)
        done = run_psql(
            [find_binary("psql"), "-X", "-w", "-A", "-t", "-c", "SELECT current_user", conninfo], temp
        )
        if done.returncode == 0 and done.stdout.strip() == user:
            return LoginResult(True, "")
        server = _server_says(layout, offset)
        client_says = last_line(done.stderr).split(" failed: ", 1)[-1]
        if server.endswith(_VERIFY_FAILED) and "revoked" in client_says:
            # PostgreSQL 15 logs no cause; its TLS alert to the client names it (certificate revoked)
            return LoginResult(False, f"{server} (TLS alert to the client: {client_says})")
        return LoginResult(False, server or f"psql: {client_says}")


def _server_says(layout: PostgresLayout, offset: int) -> str:
    """The server's log messages since `offset`, waiting a moment for them (a backend logs a TLS
    refusal after sending the alert the client already read)."""
    deadline = time.monotonic() + SERVER_LOG_WAIT
    while True:
        lines = [m for m in map(_LOG_LINE.match, since(layout.log, offset).splitlines()) if m]
        if lines or time.monotonic() > deadline:
            return "; ".join(f"{m['level']}: {m['message']}" for m in lines)
        time.sleep(0.02)


def _conninfo(**values: str) -> str:
    """A libpq connection string, every value quoted."""

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{name}={quote(value)}" for name, value in values.items())


def run_psql(argv: list[str], home: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run psql with a clean environment (no PG* variables, no ~/.pgpass or service file of the user)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "PGSYSCONFDIR": home}
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{Path(argv[0]).name} did not finish in {COMMAND_TIMEOUT:g}s") from None
    return subprocess.CompletedProcess(
        argv, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )
