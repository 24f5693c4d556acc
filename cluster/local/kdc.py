"""The desktop target's MIT Kerberos KDC: a real PKINIT (smart-card logon) verifier, run by the cluster.

Everything is private to `targets/desktop/kdc/` (`KdcLayout`): the KDC reads `KRB5_CONFIG` and
`KRB5_KDC_PROFILE` from there, its database and master key stash live there, and nothing system-wide is
read or changed. The realm is the desktop domain in capitals (AD style: domain `mycluster.test`, realm
`MYCLUSTER.TEST`).

How MIT krb5 1.20 decides (checked against its source and by hand):
- Client certificates must chain to `pkinit_anchors`, have EKU smartcardLogon (or id-pkinit-KPClientAuth:
  `pkinit_eku_checking = scLogin`) and a SAN naming the requested client. With `pkinit_allow_upn` a UPN
  SAN counts: it is read as an enterprise name and must equal the requested enterprise name exactly
  (realms compare case-sensitively, so UPN `alice@mycluster.test` never matches `alice@MYCLUSTER.TEST`,
  and 1.20's database has no aliases). A user's principal is therefore the enterprise principal of their
  UPN, `alice\\@mycluster.test@MYCLUSTER.TEST`, and a logon asks for `alice@mycluster.test` as an
  enterprise name (`kinit -E`), which is what Windows sends for a smart-card logon.
- The KDC signs its reply with its own certificate (EKU id-pkinit-KPKdc, SAN krbtgt/REALM@REALM) and
  first checks that certificate's chain against its own `pkinit_anchors`: the KDC's CA is an anchor
  too. It is a CA of its own (`mtls.ensure_kdc_identity`) that signs nothing else.
- The KDC reads `pkinit_anchors` once, at start; SIGHUP only reopens its log. `reload_anchors` restarts
  it on the same port.
- The KDC reads `KRB5_CONFIG` as well as its profile: the client's PKINIT settings (its anchors and
  pool) must not be in the KDC's `krb5.conf`, or the KDC would trust them. Logons use a config of
  their own in a temp dir.
- The MIT client builds and checks its own chain before sending it (`pkinit_anchors`/`pkinit_pool` of
  the client), and reads only the first certificate of a `FILE:` identity.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
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
from authsim.cluster.layout import ClusterLayout, KdcLayout
from authsim.cluster.local import processes
from authsim.cluster.local.ports import free_port
from authsim.cluster.local.server_log import end_of, last_line, since, taking_turns
from authsim.cluster.mtls import ensure_kdc_identity
from authsim.cluster.secret_files import write_all, write_private

HOST = "127.0.0.1"
READY_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
PORT_ATTEMPTS = 3
PACKAGES = "krb5-kdc krb5-pkinit krb5-user krb5-admin-server"
_SBIN = "/usr/sbin:/sbin"
# Names the KDC takes: kadmin's command parser and Kerberos' own escapes stay out of the way.
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DOMAIN = re.compile(
    r"(?=.{1,200}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_SERVING = "commencing operation"  # what krb5kdc logs once its sockets are bound
# A refusal in the KDC's log: `AS_REQ (…) 127.0.0.1: PREAUTH_FAILED: client for server, reason`
_REFUSAL = re.compile(r"AS_REQ \(.*?\) [^ ]*: (?P<status>[A-Z_]+): .+? for \S+, (?P<reason>.+)$")


class LogonResult(NamedTuple):
    """A PKINIT logon: whether the KDC issued a TGT, and otherwise the refusal (the KDC's own words
    from its log when the KDC refused, kinit's when the client gave up before asking)."""

    ok: bool
    reason: str


def realm_of(domain: str) -> str:
    """The Kerberos realm of a Windows domain: the domain in capitals."""
    return domain.upper()


def find_binary(name: str) -> str:
    """The path of an MIT krb5 program (also in /usr/sbin), or a ClusterError saying how to install it."""
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_SBIN}")
    if path is None:
        raise ClusterError(f"{name} not found: install the Debian packages {PACKAGES} (./scripts/setup)")
    return path


@dataclass
class Kdc:
    """The KDC of `domain` in `layout`; `port` once started (or known), `process` when this process
    started it."""

    layout: KdcLayout
    domain: str
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def setup(
        cls, cluster_dir: Path, cluster_name: str, domain: str, anchors: Sequence[x509.Certificate]
    ) -> Kdc:
        """The cluster's KDC for `domain`: its certificate (made once), its config, its database (made
        once, with a random master key kept only in the stash) and `anchors` for client certificates."""
        if not _DOMAIN.fullmatch(domain):
            raise ValidationError(
                [f"domain: a DNS name of letters, digits, - and . (at most 200), got {domain!r}"]
            )
        kdc = cls(ClusterLayout(cluster_dir).kdc, domain)
        ensure_kdc_identity(cluster_dir, cluster_name, kdc.layout, kdc.realm)
        kdc._write_config()
        kdc._create_database()
        kdc._write_anchors(anchors)
        return kdc

    @property
    def realm(self) -> str:
        return realm_of(self.domain)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def marker(self) -> str:
        """A string only this KDC's command line holds (for `processes.is_running` / `stop`)."""
        return f"-P {self.layout.pid_file}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start krb5kdc in the foreground of its own session and wait until it serves. Without a port,
        one is picked, and picked again if another process takes it first."""
        fixed = self.port is not None
        for _ in range(1 if fixed else PORT_ATTEMPTS):
            port = self.port or _free_tcp_udp_port()
            self._write_config(port)
            offset = end_of(self.layout.log)
            argv = [find_binary("krb5kdc"), "-n", "-P", str(self.layout.pid_file)]
            process = processes.spawn(argv, self.layout.log, self._env())
            if self._ready(process, offset, timeout):
                self.port, self.process = port, process
                return
            if fixed or "Address already in use" not in since(self.layout.log, offset):
                raise ClusterError(
                    f"krb5kdc did not start on {HOST}:{port}; end of {self.layout.log}: "
                    f"{processes.tail(self.layout.log, 4)}"
                )
        raise ClusterError(f"krb5kdc found no free port in {PORT_ATTEMPTS} attempts")

    def _ready(self, process: subprocess.Popen[bytes], offset: int, timeout: float) -> bool:
        """True once `process` logs that it serves (after binding its sockets); False (and no process
        left) when it exited or did not get there in `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if _SERVING in since(self.layout.log, offset):
                return True
            if time.monotonic() > deadline:
                _stop_child(process, self.marker)
                return False
            time.sleep(0.02)
        return False

    def stop(self) -> bool:
        """Stop the KDC by PID (only when that PID is still this KDC); False when it was not running."""
        stopped = processes.stop(self._running_pid(), self.marker)
        if self.process is not None:
            self.process.poll()
        self.process = None
        return stopped

    def running(self) -> bool:
        return processes.is_running(self._running_pid(), self.marker)

    def _running_pid(self) -> int | None:
        """The PID of the process this object started, else the one in krb5kdc's PID file."""
        if self.pid is not None:
            return self.pid
        with contextlib.suppress(OSError, ValueError):
            return int(self.layout.pid_file.read_text().strip())
        return None

    def principal(self, user: str) -> str:
        """The principal of `user`: the enterprise principal of their UPN, `user\\@domain@REALM`."""
        _check_user(user)
        return f"{user}\\@{self.domain}@{self.realm}"

    def upn(self, user: str) -> str:
        """The UPN a windows credential of `user` carries, and the enterprise name a logon asks for."""
        _check_user(user)
        return f"{user}@{self.domain}"

    def add_user(self, user: str) -> None:
        """Create `user`'s principal unless it exists: no keys (PKINIT only), pre-authentication required."""
        principal = self.principal(user)
        done = self._kadmin(f"addprinc -nokey +requires_preauth {principal}")
        if f'Principal "{principal}" created.' not in done and "already exists" not in done:
            raise ClusterError(f"kadmin.local did not create {principal}: {last_line(done)}")

    def reload_anchors(self, anchors: Sequence[x509.Certificate]) -> None:
        """Trust exactly `anchors` for client certificates from now on. The KDC reads its anchors only
        at start, so a running KDC is restarted on the same port."""
        self._write_anchors(anchors)
        if self.running():
            self.stop()
            self.start()

    def logon(
        self, credential: bytes, key: bytes, user: str, store: Sequence[x509.Certificate]
    ) -> LogonResult:
        """A PKINIT logon of `user` with `credential` (PEM, the leaf first) and its `key` (PEM), asking
        for a TGT as the enterprise name `user@domain`, the way a Windows workstation does.

        `store` is the workstation's certificate store: the MIT client checks its own chain before
        sending it, to the self-signed certificates in `store` (and the KDC's CA, to check the KDC),
        through the others (the issuing CA that NTAuth knows, intermediates). Run with a private
        config and credentials cache in a temp dir; logons against one KDC take turns, so the refusal
        read from the KDC's log is this logon's."""
        upn = self.upn(user)
        if self.port is None:
            raise ClusterError("the KDC has no port: start it first")
        with (
            tempfile.TemporaryDirectory(prefix="authsim-kinit-") as temp,
            taking_turns(self.layout.logon_lock),
        ):
            client = Path(temp)
            conf = self._client_config(client, store)
            write_all({client / "cert.pem": credential, client / "key.pem": key})
            argv = [find_binary("kinit"), "-E", "-c", f"FILE:{client / 'ccache'}"]
            argv += ["-X", f"X509_user_identity=FILE:{client / 'cert.pem'},{client / 'key.pem'}", upn]
            offset = end_of(self.layout.log)
            done = _run(argv, {"KRB5_CONFIG": str(conf), "HOME": temp})
            if done.returncode == 0:
                return LogonResult(True, "")
            refusal = _refusal(since(self.layout.log, offset))
            return LogonResult(False, refusal or last_line(done.stderr))  # `kinit: …`

    def _client_config(self, directory: Path, store: Sequence[x509.Certificate]) -> Path:
        """A workstation's krb5.conf in `directory`: this realm's KDC, and PKINIT anchors and pool."""
        anchors = [c for c in store if c.issuer == c.subject]
        pool = [c for c in store if c.issuer != c.subject]
        (directory / "anchors.pem").write_bytes(self.layout.kdc_ca.read_bytes() + _pem(anchors))
        (directory / "pool.pem").write_bytes(_pem(pool))
        conf = directory / "krb5.conf"
        conf.write_text(
            f"[libdefaults]\n    default_realm = {self.realm}\n{_LIBDEFAULTS}"
            "    udp_preference_limit = 1\n"
            f"[realms]\n    {self.realm} = {{\n        kdc = {self.address}\n"
            f"        pkinit_anchors = FILE:{directory / 'anchors.pem'}\n"
            f"        pkinit_pool = FILE:{directory / 'pool.pem'}\n    }}\n"
        )
        return conf

    def _write_config(self, port: int | None = None) -> None:
        """The KDC's krb5.conf (no PKINIT settings) and kdc.conf (listening on `port` when given)."""
        layout, realm = self.layout, self.realm
        listen = f"    kdc_listen = {HOST}:{port}\n    kdc_tcp_listen = {HOST}:{port}\n" if port else ""
        layout.krb5_conf.write_text(f"[libdefaults]\n    default_realm = {realm}\n{_LIBDEFAULTS}{_PLUGINS}")
        layout.kdc_conf.write_text(
            f"[kdcdefaults]\n{listen}"
            f"[realms]\n    {realm} = {{\n"
            f"        database_name = {layout.database}\n"
            f"        key_stash_file = {layout.stash}\n"
            f"        pkinit_identity = FILE:{layout.cert},{layout.key}\n"
            f"        pkinit_anchors = FILE:{layout.kdc_ca}\n"
            f"        pkinit_anchors = FILE:{layout.anchors}\n"
            "        pkinit_eku_checking = scLogin\n"
            "        pkinit_allow_upn = true\n"
            "    }\n"
            "[logging]\n    kdc = STDERR\n"
        )

    def _create_database(self) -> None:
        """The principal database, made once; its master key is random, given on stdin (never on a
        command line) and kept only in the stash file."""
        if self.layout.database.exists():
            return
        self.layout.database_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = secrets.token_urlsafe(32)
        done = _run(
            [find_binary("kdb5_util"), "-r", self.realm, "create", "-s"],
            self._env(),
            stdin=f"{password}\n{password}\n".encode(),
        )
        if done.returncode != 0:
            raise ClusterError(f"kdb5_util could not create the KDC database: {last_line(done.stderr)}")

    def _write_anchors(self, anchors: Sequence[x509.Certificate]) -> None:
        write_private(self.layout.anchors, _pem(anchors))

    def _kadmin(self, query: str) -> str:
        done = _run([find_binary("kadmin.local"), "-r", self.realm, "-q", query], self._env())
        if done.returncode != 0:
            raise ClusterError(f"kadmin.local failed ({query.split()[0]}): {last_line(done.stderr)}")
        return done.stdout + done.stderr

    def _env(self) -> dict[str, str]:
        """The KDC's and its tools' environment: its private config, nothing inherited from krb5."""
        return {"KRB5_CONFIG": str(self.layout.krb5_conf), "KRB5_KDC_PROFILE": str(self.layout.kdc_conf)}


_LIBDEFAULTS = "    dns_lookup_kdc = false\n    dns_lookup_realm = false\n    rdns = false\n"
# The KDC offers only PKINIT: SPAKE has no groups configured and OTP is not installed.
_PLUGINS = "[plugins]\n    kdcpreauth = {\n        disable = spake\n        disable = otp\n    }\n"


def _check_user(user: str) -> None:
    if not _USER.fullmatch(user):
        rule = "the KDC takes letters, digits, . _ - (at most 64, a letter or digit first)"
        raise ValidationError([f"user: {rule}, got {user!r}"])


def _refusal(log: str) -> str:
    """The last refusal the KDC logged in `log` (`STATUS: reason`), or ''."""
    found = ""
    for line in log.splitlines():
        match = _REFUSAL.search(line)
        if match and match["status"] != "NEEDED_PREAUTH":
            found = f"{match['status']}: {match['reason']}"
    return found


def _run(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run a krb5 tool in a session of its own (no terminal to prompt on), with only `env` and PATH."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            env=environment,
            timeout=COMMAND_TIMEOUT,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{Path(argv[0]).name} did not finish in {COMMAND_TIMEOUT:g}s") from None
    return subprocess.CompletedProcess(
        argv, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


def _stop_child(process: subprocess.Popen[bytes], marker: str) -> None:
    processes.stop(process.pid, marker)
    process.poll()


def _free_tcp_udp_port() -> int:
    """A loopback port free for TCP and UDP both (the KDC listens on both)."""
    while True:
        port = free_port(HOST)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
        return port


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)
