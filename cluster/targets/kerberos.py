"""A workstation's PKINIT (smart-card) logon against the desktop's MIT Kerberos KDC, and its users.

The KDC itself (its files, its process) is `authsim.cluster.local.kdc`; this is what a client of it
does: `kinit` with a private config in a temp dir, and `kadmin.local` on the KDC's own database (the
target process runs as the cluster's user, who owns it). See `authsim.cluster.local.kdc` for how MIT
krb5 1.20 decides.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.errors import ClusterError, ValidationError
from authsim.cluster.layout import KdcLayout
from authsim.cluster.secret_files import write_all
from authsim.cluster.targets.server_log import end_of, last_line, since, taking_turns

COMMAND_TIMEOUT = 30.0
PACKAGES = "krb5-kdc krb5-pkinit krb5-user krb5-admin-server"
_SBIN = "/usr/sbin:/sbin"
# Names the KDC takes: kadmin's command parser and Kerberos' own escapes stay out of the way.
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A refusal in the KDC's log: `AS_REQ (…) 127.0.0.1: PREAUTH_FAILED: client for server, reason`
_REFUSAL = re.compile(r"AS_REQ \(.*?\) [^ ]*: (?P<status>[A-Z_]+): .+? for \S+, (?P<reason>.+)$")
LIBDEFAULTS = "    dns_lookup_kdc = false\n    dns_lookup_realm = false\n    rdns = false\n"


class LogonResult(NamedTuple):
    """A PKINIT logon: whether the KDC issued a TGT, and otherwise the refusal (the KDC's own words
    from its log when the KDC refused, kinit's when the client gave up before asking)."""

    ok: bool
    reason: str


def realm_of(domain: str) -> str:
    """The Kerberos realm of a Windows domain: the domain in capitals."""
    return domain.upper()


def upn(user: str, domain: str) -> str:
    """The UPN a windows credential of `user` carries, and the enterprise name a logon asks for."""
    check_user(user)
    return f"{user}@{domain}"


def principal(user: str, domain: str) -> str:
    """The principal of `user`: the enterprise principal of their UPN, `user\\@domain@REALM`."""
    check_user(user)
    return f"{user}\\@{domain}@{realm_of(domain)}"


def check_user(user: str) -> None:
    if not _USER.fullmatch(user):
        rule = "the KDC takes letters, digits, . _ - (at most 64, a letter or digit first)"
        raise ValidationError([f"user: {rule}, got {user!r}"])


def find_binary(name: str) -> str:
    """The path of an MIT krb5 program (also in /usr/sbin), or a ClusterError saying how to install it."""
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_SBIN}")
    if path is None:
        raise ClusterError(f"{name} not found: install the Debian packages {PACKAGES} (./scripts/setup)")
    return path


def kdc_env(layout: KdcLayout) -> dict[str, str]:
    """The KDC's and its tools' environment: its private config, nothing inherited from krb5."""
    return {"KRB5_CONFIG": str(layout.krb5_conf), "KRB5_KDC_PROFILE": str(layout.kdc_conf)}


def add_user(layout: KdcLayout, domain: str, user: str) -> None:
    """Create `user`'s principal unless it exists: no keys (PKINIT only), pre-authentication required."""
    name = principal(user, domain)
    done = run_tool(
        [
            find_binary("kadmin.local"),
            "-r",
            realm_of(domain),
            "-q",
            f"addprinc -nokey +requires_preauth {name}",
        ],
        kdc_env(layout),
    )
    said = done.stdout + done.stderr
    if done.returncode != 0 or (f'Principal "{name}" created.' not in said and "already exists" not in said):
        raise ClusterError(f"kadmin.local did not create {name}: {last_line(said)}")


def logon(
    layout: KdcLayout,
    address: str,
    domain: str,
    credential: bytes,
    key: bytes,
    user: str,
    store: Sequence[x509.Certificate],
) -> LogonResult:
    """A PKINIT logon of `user` at the KDC at `address` with `credential` (PEM, the leaf first) and its
    `key` (PEM), asking for a TGT as the enterprise name `user@domain`, the way a Windows workstation does.

    `store` is the workstation's certificate store: the MIT client checks its own chain before
    sending it, to the self-signed certificates in `store` (and the KDC's CA, to check the KDC),
    through the others (the issuing CA that NTAuth knows, intermediates). Run with a private
    config and credentials cache in a temp dir; logons against one KDC take turns, so the refusal
    read from the KDC's log is this logon's."""
    name = upn(user, domain)
    with tempfile.TemporaryDirectory(prefix="authsim-kinit-") as temp, taking_turns(layout.logon_lock):
        client = Path(temp)
        conf = _client_config(layout, client, address, realm_of(domain), store)
        write_all({client / "cert.pem": credential, client / "key.pem": key})
        argv = [find_binary("kinit"), "-E", "-c", f"FILE:{client / 'ccache'}"]
        argv += ["-X", f"X509_user_identity=FILE:{client / 'cert.pem'},{client / 'key.pem'}", name]
        offset = end_of(layout.log)
        done = run_tool(argv, {"KRB5_CONFIG": str(conf), "HOME": temp})
        if done.returncode == 0:
            return LogonResult(True, "")
        refusal = _refusal(since(layout.log, offset))
        return LogonResult(False, refusal or last_line(done.stderr))  # `kinit: …`


def anchors_of(store: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The self-signed certificates of a store: the trust anchors."""
    return [c for c in store if c.issuer == c.subject]


def pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def _client_config(
    layout: KdcLayout, directory: Path, address: str, realm: str, store: Sequence[x509.Certificate]
) -> Path:
    """A workstation's krb5.conf in `directory`: the realm's KDC, and PKINIT anchors and pool."""
    anchors = anchors_of(store)
    pool = [c for c in store if c not in anchors]
    (directory / "anchors.pem").write_bytes(layout.kdc_ca.read_bytes() + pem(anchors))
    (directory / "pool.pem").write_bytes(pem(pool))
    conf = directory / "krb5.conf"
    conf.write_text(
        f"[libdefaults]\n    default_realm = {realm}\n{LIBDEFAULTS}"
        "    udp_preference_limit = 1\n"
        f"[realms]\n    {realm} = {{\n        kdc = {address}\n"
        f"        pkinit_anchors = FILE:{directory / 'anchors.pem'}\n"
        f"        pkinit_pool = FILE:{directory / 'pool.pem'}\n    }}\n"
    )
    return conf


def _refusal(log: str) -> str:
    """The last refusal the KDC logged in `log` (`STATUS: reason`), or ''."""
    found = ""
    for line in log.splitlines():
        match = _REFUSAL.search(line)
        if match and match["status"] != "NEEDED_PREAUTH":
            found = f"{match['status']}: {match['reason']}"
    return found


def run_tool(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
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
