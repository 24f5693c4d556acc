"""A quick check that an etcd can be used, before anything relies on it: each endpoint accepts a TCP
connection, speaks TLS when (and only when) we do, accepts our client certificate, and answers a read
of the cluster's keys. Each failure is one line naming the endpoint, the cause and the fix, within a
few seconds (`authsim up` would otherwise wait for its nodes, which wait for etcd)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from authsim.cluster.errors import StoreAccessError, StoreUnavailableError, one_line
from authsim.cluster.store.etcd import EtcdStore, EtcdTLS

CONNECT_TIMEOUT = 1.5  # seconds for a TCP connection or a TLS handshake with one endpoint
READ_TIMEOUT = 2.0  # seconds for the read through etcd's API
TLS_OPTIONS = "--etcd-cacert, --etcd-cert and --etcd-key"


def check_etcd(endpoints: list[str], tls: EtcdTLS | None, key: str, log: Path | None = None) -> None:
    """StoreUnavailableError (StoreAccessError for a refused identity) unless one of `endpoints` takes
    a TCP connection and TLS as `tls` says, and etcd answers a read of `key` through every endpoint's
    channel. `log`, etcd's own log when we run it, is named in the error."""
    where = f" (etcd's log: {log})" if log is not None else ""
    causes = {endpoint: _tcp_cause(endpoint) for endpoint in endpoints}
    reachable = [e for e, cause in causes.items() if cause is None]
    if not reachable:
        listed = "; ".join(f"{e}: {cause}" for e, cause in causes.items())
        raise StoreUnavailableError(f"etcd unreachable at {listed}: start etcd or correct --etcd{where}")
    cause = _tls_cause(reachable[0], tls)
    if cause is not None:
        raise StoreUnavailableError(f"etcd at {reachable[0]}: {cause}{where}")
    _read(endpoints, tls, key, where)


def _tcp_cause(endpoint: str) -> str | None:
    """Why `endpoint` takes no TCP connection, None when it does."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            return None
    except socket.gaierror as e:
        return f"host name {host!r} not found ({e.strerror})"
    except ConnectionRefusedError:
        return "connection refused (nothing listens there)"
    except TimeoutError:
        return f"no answer within {CONNECT_TIMEOUT:g} s (a firewall, or a host that is down)"
    except OSError as e:
        return one_line(e.strerror or str(e))


def _tls_cause(endpoint: str, tls: EtcdTLS | None) -> str | None:
    """Why TLS to `endpoint` fails as configured (None: fine): etcd serves TLS and we have no TLS
    options, or it serves none and we do, or the handshake refuses a certificate."""
    if tls is None:
        if _serves_tls(endpoint):
            return f"it serves TLS: give {TLS_OPTIONS} (its CA certificate and a client certificate)"
        return None
    try:
        context = ssl.create_default_context(cafile=str(tls.cacert))
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (ssl.SSLError, OSError) as e:
        return f"the TLS files do not load ({one_line(str(e))}): check {TLS_OPTIONS}"
    context.check_hostname = False  # the address etcd is reached by is checked by the read below
    context.set_alpn_protocols(["h2"])
    host, _, port = endpoint.rpartition(":")
    try:
        with (
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT) as raw,
            context.wrap_socket(raw) as connection,
        ):
            connection.recv(1)  # TLS 1.3: a refused client certificate shows only on the first read
    except TimeoutError:
        return None  # handshake done, etcd waits for our first request: accepted
    except ssl.SSLCertVerificationError as e:
        return f"TLS: etcd's certificate is not trusted ({e.verify_message}): check --etcd-cacert"
    except ssl.SSLError as e:
        if not _serves_tls(endpoint):
            return f"it serves no TLS (plain http): leave out {TLS_OPTIONS}"
        return f"TLS refused ({one_line(e.reason or str(e))}): check --etcd-cert and --etcd-key"
    except OSError as e:
        return f"TLS handshake failed ({one_line(e.strerror or str(e))})"
    return None


def _serves_tls(endpoint: str) -> bool:
    """True when `endpoint` completes a TLS handshake (no certificate checked, none presented)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    host, _, port = endpoint.rpartition(":")
    try:
        with (
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT) as raw,
            context.wrap_socket(raw),
        ):
            return True
    except ssl.SSLError as e:
        return "ALERT" in (e.reason or "")  # it spoke TLS, and refused us for want of a certificate
    except OSError:
        return False


def _read(endpoints: list[str], tls: EtcdTLS | None, key: str, where: str) -> None:
    """One read of `key` through etcd's API: it has a leader and lets our identity in."""

    async def read() -> None:
        async with EtcdStore(endpoints, timeout=READ_TIMEOUT, tls=tls) as store:
            await store.ping(key)

    try:
        asyncio.run(read())
    except StoreAccessError as e:
        raise StoreAccessError(f"{e}{where}") from None
    except StoreUnavailableError as e:
        raise StoreUnavailableError(f"{e}{where}") from None
