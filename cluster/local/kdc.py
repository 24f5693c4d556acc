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
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from authsim.cluster.errors import ClusterError, PortInUseError, ValidationError
from authsim.cluster.layout import ClusterLayout, KdcLayout
from authsim.cluster.local import processes
from authsim.cluster.local.ports import free_port, on_free_ports
from authsim.cluster.mtls import ensure_kdc_identity
from authsim.cluster.secret_files import write_private
from authsim.cluster.targets import kerberos
from authsim.cluster.targets.kerberos import (
    LIBDEFAULTS,
    LogonResult,
    find_binary,
    kdc_env,
    pem,
    realm_of,
    run_tool,
)
from authsim.cluster.targets.server_log import end_of, last_line, since

HOST = "127.0.0.1"
READY_TIMEOUT = 10.0
_DOMAIN = re.compile(
    r"(?=.{1,200}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_SERVING = "commencing operation"  # what krb5kdc logs once its sockets are bound


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
        cls,
        cluster_dir: Path,
        cluster_name: str,
        domain: str,
        anchors: Sequence[x509.Certificate],
        ca_dir: Path | None = None,
    ) -> Kdc:
        """The cluster's KDC for `domain`: its certificate (made once, from the KDC CA in `ca_dir`,
        default `cluster_dir`), its config, its database (made once, with a random master key kept only
        in the stash) and `anchors` for client certificates."""
        if not _DOMAIN.fullmatch(domain):
            raise ValidationError(
                [f"domain: a DNS name of letters, digits, - and . (at most 200), got {domain!r}"]
            )
        kdc = cls(ClusterLayout(cluster_dir).kdc, domain)
        ensure_kdc_identity(ca_dir or cluster_dir, cluster_name, kdc.layout, kdc.realm)
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
        if self.port is not None:
            self._start_on(self.port, timeout)
        else:
            on_free_ports(lambda: self._start_on(_free_tcp_udp_port(), timeout))

    def _start_on(self, port: int, timeout: float) -> None:
        """Start on `port`; PortInUseError when another process holds it."""
        argv, env = self.command(port)
        offset = end_of(self.layout.log)
        process = processes.spawn(argv, self.layout.log, env)
        if self._ready(process, offset, timeout):
            self.port, self.process = port, process
            return
        taken = "Address already in use" in since(self.layout.log, offset)
        raise (PortInUseError if taken else ClusterError)(
            f"krb5kdc did not start on {HOST}:{port}; end of {self.layout.log}: "
            f"{processes.tail(self.layout.log, 4)}"
        )

    def command(self, port: int) -> tuple[list[str], dict[str, str]]:
        """krb5kdc's command line and environment to serve in the foreground on `port` (its config is
        written for that port here)."""
        self._write_config(port)
        return [find_binary("krb5kdc"), "-n", "-P", str(self.layout.pid_file)], self._env()

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
        return kerberos.principal(user, self.domain)

    def upn(self, user: str) -> str:
        return kerberos.upn(user, self.domain)

    def add_user(self, user: str) -> None:
        kerberos.add_user(self.layout, self.domain, user)

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
        """A PKINIT logon of `user` at this KDC (`kerberos.logon`)."""
        if self.port is None:
            raise ClusterError("the KDC has no port: start it first")
        return kerberos.logon(self.layout, self.address, self.domain, credential, key, user, store)

    def _write_config(self, port: int | None = None) -> None:
        """The KDC's krb5.conf (no PKINIT settings) and kdc.conf (listening on `port` when given)."""
        layout, realm = self.layout, self.realm
        listen = f"    kdc_listen = {HOST}:{port}\n    kdc_tcp_listen = {HOST}:{port}\n" if port else ""
        layout.krb5_conf.write_text(f"[libdefaults]\n    default_realm = {realm}\n{LIBDEFAULTS}{_PLUGINS}")
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
        done = run_tool(
            [find_binary("kdb5_util"), "-r", self.realm, "create", "-s"],
            self._env(),
            stdin=f"{password}\n{password}\n".encode(),
        )
        if done.returncode != 0:
            raise ClusterError(f"kdb5_util could not create the KDC database: {last_line(done.stderr)}")

    def _write_anchors(self, anchors: Sequence[x509.Certificate]) -> None:
        write_private(self.layout.anchors, pem(anchors))

    def _env(self) -> dict[str, str]:
        return kdc_env(self.layout)


# The KDC offers only PKINIT: SPAKE has no groups configured and OTP is not installed.
_PLUGINS = "[plugins]\n    kdcpreauth = {\n        disable = spake\n        disable = otp\n    }\n"


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
