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
- The KDC reads `pkinit_anchors` and `pkinit_revoke` once, at start; SIGHUP only reopens its log. So
  krb5kdc runs under a supervisor (`kdc_supervisor`, the process `start` starts and `authsim down`
  stops, its PID never changing) that restarts it on the same port when its anchors or the CRLs in
  force (`targets.kdc_trust`) change.
- CRLs: the KDC checks every certificate of the chain against the CRLs it has for its issuer
  (`X509_V_FLAG_CRL_CHECK_ALL`) and, without `pkinit_require_crl_checking`, accepts an issuer it has no
  CRL for (the external CA's, unless the admin gave them): a CRL that lists the serial refuses it
  (`REVOKED_CERTIFICATE`), one past its nextUpdate refuses every certificate of its issuer.
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
import signal
import socket
import subprocess
import sys
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
from authsim.cluster.targets import kdc_trust, kerberos
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
READY_TIMEOUT = 15.0
SUPERVISOR = "authsim.cluster.local.kdc_supervisor"
_DOMAIN = re.compile(
    r"(?=.{1,200}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
SERVING = "commencing operation"  # what krb5kdc logs once its sockets are bound
SUPERVISED = "kdc supervisor: serving"  # what the supervisor logs once its krb5kdc serves


@dataclass
class Kdc:
    """The KDC of `domain` in the cluster dir `directory`; `port` once started (or known), `process` (its
    supervisor) when this process started it."""

    directory: Path
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
        kdc = cls(cluster_dir, domain)
        ensure_kdc_identity(ca_dir or cluster_dir, cluster_name, kdc.layout, kdc.realm)
        kdc._write_config()
        kdc._create_database()
        kdc._write_anchors(anchors)
        return kdc

    @property
    def layout(self) -> KdcLayout:
        return ClusterLayout(self.directory).kdc

    @property
    def realm(self) -> str:
        return realm_of(self.domain)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def marker(self) -> str:
        """A string only this KDC's supervisor's command line holds (for `processes.is_running` / `stop`)."""
        return f"{SUPERVISOR} --dir {self.directory} --domain "

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the KDC's supervisor in its own session and wait until its krb5kdc serves. Without a
        port, one is picked, and picked again if another process takes it first."""
        if self.port is not None:
            self._start_on(self.port, timeout)
        else:
            on_free_ports(lambda: self._start_on(_free_tcp_udp_port(), timeout))

    def _start_on(self, port: int, timeout: float) -> None:
        """Start on `port`; PortInUseError when another process holds it."""
        argv = [sys.executable, "-m", SUPERVISOR, "--dir", str(self.directory), "--domain", self.domain]
        argv += ["--port", str(port)]
        offset = end_of(self.layout.log)
        process = processes.spawn(argv, self.layout.log, dict(os.environ, PYTHONUNBUFFERED="1"))
        if self.ready(process, offset, SUPERVISED, timeout):
            self.port, self.process = port, process
            return
        _kill_group(process)
        taken = "Address already in use" in since(self.layout.log, offset)
        raise (PortInUseError if taken else ClusterError)(
            f"krb5kdc did not start on {HOST}:{port}; end of {self.layout.log}: "
            f"{processes.tail(self.layout.log, 4)}"
        )

    def command(self, port: int) -> tuple[list[str], dict[str, str]]:
        """krb5kdc's command line and environment to serve in the foreground on `port` (its config is
        written for that port here, checking the CRLs in `layout.crls` when that file exists)."""
        self._write_config(port)
        return [find_binary("krb5kdc"), "-n"], self._env()

    def ready(self, process: subprocess.Popen[bytes], offset: int, line: str, timeout: float) -> bool:
        """True once `process` logs `line` (past `offset` of the log); False when it exited or did not
        get there in `timeout` seconds (it is then left to the caller to stop)."""
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if line in since(self.layout.log, offset):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> bool:
        """Stop the KDC's supervisor and its krb5kdc (its process group) by PID, only when that PID is
        still this KDC's supervisor; False when it was not running."""
        stopped = processes.stop_group(self._running_pid(), self.marker)
        if self.process is not None:
            self.process.poll()
        self.process = None
        return stopped

    def running(self) -> bool:
        return processes.is_running(self._running_pid(), self.marker)

    def _running_pid(self) -> int | None:
        """The PID of the supervisor this object started, else the one in the supervisor's PID file."""
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
        """Trust exactly `anchors` for client certificates from now on: a running KDC is restarted on
        its port by its supervisor (with the CRLs in force too); this returns once it was."""
        self._write_anchors(anchors)
        if self.running():
            problem = kdc_trust.wait_current(self.directory)
            if problem is not None:
                raise ClusterError(problem)

    def write_crls(self, crls: bytes) -> None:
        """The CRLs the KDC checks from its next start (PEM; b"": none, no `pkinit_revoke`)."""
        if crls:
            write_private(self.layout.crls, crls)
        else:
            self.layout.crls.unlink(missing_ok=True)

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
        revoke = f"        pkinit_revoke = FILE:{layout.crls}\n" if layout.crls.exists() else ""
        layout.krb5_conf.write_text(f"[libdefaults]\n    default_realm = {realm}\n{LIBDEFAULTS}{_PLUGINS}")
        layout.kdc_conf.write_text(
            f"[kdcdefaults]\n{listen}"
            f"[realms]\n    {realm} = {{\n"
            f"        database_name = {layout.database}\n"
            f"        key_stash_file = {layout.stash}\n"
            f"        pkinit_identity = FILE:{layout.cert},{layout.key}\n"
            f"        pkinit_anchors = FILE:{layout.kdc_ca}\n"
            f"        pkinit_anchors = FILE:{layout.anchors}\n"
            f"{revoke}"
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


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill a supervisor that did not get ready, with its krb5kdc (its process group, its session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


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
