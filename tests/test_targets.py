"""Downstream targets: real target processes, real TLS handshakes on loopback, openssl as a checker.

The certificates mirror an override (seed steps 2-3): the cluster's self-signed CA and the override
CA certify the same key; the override is signed by an external intermediate below an external root.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authsim.auth_node.target_sessions import SessionResult, open_desktop_session
from authsim.cluster.cli.trust import trust
from authsim.cluster.errors import ValidationError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import processes
from authsim.cluster.local.ports import free_port, on_free_ports
from authsim.cluster.local.target_process import start_target, target_marker, wait_listening
from authsim.cluster.targets.desktop import UPN_OID, verify_desktop_credential
from authsim.cluster.targets.trust import Trust, add_trust, read_trust, set_default_trust, trust_file
from tests.certs import CertKey, cluster_ca, external_ca, issue_cert, override_cert, rsa_key

CLUSTER = "mycluster"
DOMAIN = "mycluster.test"  # the desktop target's domain: <cluster name>.test
WINDOWS_EKUS = (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SMARTCARD_LOGON)
TIMEOUT = 10.0


@dataclass(frozen=True)
class PKI:
    """The cluster's self-signed CA, and an override of the same key below an external hierarchy."""

    self_signed: CertKey
    override: CertKey
    intermediate: CertKey
    root: CertKey


@pytest.fixture(scope="module")
def pki() -> PKI:
    intermediate, root = external_ca(levels=2)
    ca_key = rsa_key(1)
    return PKI(cluster_ca(CLUSTER, ca_key), override_cert(ca_key, intermediate, CLUSTER), intermediate, root)


def leaf(
    issuer: CertKey,
    user: str = "alice",
    *,
    ekus: Sequence[x509.ObjectIdentifier] = WINDOWS_EKUS,
    upn: str | None = None,
    cn: str | None = None,
    not_before: dt.datetime | None = None,
    days: int = 1,
) -> CertKey:
    """A client credential for `user` issued by `issuer`: UPN `user@DOMAIN` unless `upn` given."""
    key = rsa_key(50)
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    upn_value = (upn if upn is not None else f"{user}@{DOMAIN}").encode()
    other_name = x509.OtherName(UPN_OID, bytes([0x0C, len(upn_value)]) + upn_value)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or user)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if upn != "":
        builder = builder.add_extension(x509.SubjectAlternativeName([other_name]), critical=False)
    return CertKey(builder.sign(issuer.key, hashes.SHA256()), key)


def pem(*certs: CertKey) -> bytes:
    return b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(cert: CertKey) -> bytes:
    return cert.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- the desktop's rules, as a pure function ---------------------------------------------------


def verify(
    credential: CertKey,
    ntauth: list[CertKey],
    roots: list[CertKey],
    chain: Sequence[CertKey] = (),
    user: str = "alice",
) -> str | None:
    return verify_desktop_credential(
        credential.cert,
        [c.cert for c in chain],
        user,
        DOMAIN,
        [c.cert for c in ntauth],
        [c.cert for c in roots],
        dt.datetime.now(dt.timezone.utc),
    )


def test_desktop_rules_accept_a_credential_whose_issuer_is_in_ntauth(pki: PKI) -> None:
    assert verify(leaf(pki.override), [pki.override], [pki.root, pki.intermediate]) is None
    # the intermediate may come from the presented chain instead of roots.pem
    assert verify(leaf(pki.override), [pki.override], [pki.root], chain=[pki.intermediate]) is None
    # a self-signed CA in NTAuth is a trusted root by itself (the default trust)
    assert verify(leaf(pki.self_signed), [pki.self_signed], []) is None
    # Active Directory compares UPN suffixes without case (the KDC's realm is the domain in capitals)
    assert verify(leaf(pki.self_signed, upn="alice@MYCLUSTER.TEST"), [pki.self_signed], []) is None
    # a user name may hold an @ itself: the domain is after the last one
    assert (
        verify(leaf(pki.self_signed, "bob@example.com"), [pki.self_signed], [], user="bob@example.com")
        is None
    )


def test_desktop_rules_refuse_bad_leaves(pki: PKI) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    cases = {
        "certificate expired at ": leaf(pki.override, not_before=now - dt.timedelta(days=3)),
        "certificate is not valid before ": leaf(pki.override, not_before=now + dt.timedelta(days=1)),
        "missing EKU smartcardLogon": leaf(pki.override, ekus=[ExtendedKeyUsageOID.CLIENT_AUTH]),
        "missing EKU clientAuth and smartcardLogon": leaf(
            pki.override, ekus=[ExtendedKeyUsageOID.SERVER_AUTH]
        ),
        "no UPN SAN (otherName 1.3.6.1.4.1.311.20.2.3)": leaf(pki.override, upn=""),
        "UPN SAN 'bob@mycluster.test' does not name user 'alice' in domain 'mycluster.test'": leaf(
            pki.override, "bob"
        ),
        "UPN SAN 'alice2@mycluster.test' does not name user 'alice'": leaf(
            pki.override, upn="alice2@mycluster.test"
        ),
        "UPN SAN 'alice' does not name user 'alice' in domain 'mycluster.test'": leaf(
            pki.override, upn="alice"
        ),
        "UPN SAN 'alice@example.com' does not name user 'alice'": leaf(pki.override, upn="alice@example.com"),
        "UPN SAN 'alice@mycluster.test.evil' does not name user": leaf(
            pki.override, upn="alice@mycluster.test.evil"
        ),
    }
    for reason, credential in cases.items():
        verdict = verify(credential, [pki.override], [pki.root, pki.intermediate])
        assert verdict is not None and verdict.startswith(reason), (reason, verdict)


def test_desktop_rules_need_the_issuer_in_ntauth_and_a_trusted_root(pki: PKI) -> None:
    credential, roots = leaf(pki.override), [pki.root, pki.intermediate]
    not_in_ntauth = "issuing CA 'O=mycluster,CN=mycluster override CA' is not in the NTAuth store"
    assert verify(credential, [pki.self_signed], roots) == not_in_ntauth
    same_subject_other_key = override_cert(rsa_key(2), pki.intermediate, CLUSTER)
    assert verify(credential, [same_subject_other_key], roots) == not_in_ntauth
    no_root = "chain does not reach a trusted root"
    assert verify(credential, [pki.override], [pki.intermediate]) == no_root
    assert verify(credential, [pki.override], [], chain=[pki.intermediate, pki.root]) == no_root
    assert verify(credential, [pki.override], [], chain=[pki.intermediate]) == no_root
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    expired = issue_cert(
        pki.intermediate.cert.subject, pki.intermediate.key, pki.root, not_before=past, days=1
    )
    assert verify(credential, [pki.override], [pki.root, expired]) == (
        "chain certificate 'O=Example Corp,CN=Example Corp Issuing CA 1' is not a CA valid now"
    )


# --- trust files --------------------------------------------------------------------------------


def test_default_trust_is_written_once_and_add_trust_deduplicates(tmp_path: Path, pki: PKI) -> None:
    written = set_default_trust(tmp_path, [pki.self_signed.pem], [pki.self_signed.pem])
    assert written == [
        trust_file(tmp_path, "desktop", "ntauth"),
        trust_file(tmp_path, "desktop", "ca"),
        trust_file(tmp_path, "db", "ca"),
    ]
    assert read_trust(tmp_path, "desktop") == Trust((pki.self_signed.cert,), (pki.self_signed.cert,))
    assert read_trust(tmp_path, "db") == Trust((), (pki.self_signed.cert,))
    assert set_default_trust(tmp_path, [pki.root.pem], [pki.root.pem]) == []  # never overwrites

    lines = add_trust(
        tmp_path,
        "desktop",
        ntauth=[pem(pki.override), pem(pki.self_signed)],
        ca=[pem(pki.intermediate, pki.root)],
    )
    assert lines == [
        "desktop NTAuth store: already has 'O=mycluster,CN=mycluster'",
        "desktop NTAuth store: added 'O=mycluster,CN=mycluster override CA'",
        "desktop CA bundle: added 'O=Example Corp,CN=Example Corp Issuing CA 1'",
        "desktop CA bundle: added 'O=Example Corp,CN=Example Corp Root CA'",
    ]
    assert add_trust(tmp_path, "desktop", ca=[pem(pki.intermediate, pki.root)], replace=True)[0] == (
        "desktop CA bundle: removed 'O=mycluster,CN=mycluster'"
    )
    assert add_trust(tmp_path, "desktop", ntauth=[pem(pki.override)]) == [
        "desktop NTAuth store: already has 'O=mycluster,CN=mycluster override CA'"
    ]
    assert add_trust(tmp_path, "desktop", ntauth=[pem(pki.override)], replace=True) == [
        "desktop NTAuth store: removed 'O=mycluster,CN=mycluster'",
        "desktop NTAuth store: already has 'O=mycluster,CN=mycluster override CA'",
    ]
    trust = read_trust(tmp_path, "desktop")
    assert trust.ntauth == (pki.override.cert,)
    assert trust.ca == (pki.intermediate.cert, pki.root.cert)  # a store given nothing is left alone


def test_add_trust_reports_every_invalid_input_and_writes_nothing(tmp_path: Path, pki: PKI) -> None:
    set_default_trust(tmp_path, [pki.self_signed.pem], [pki.self_signed.pem])
    before = trust_file(tmp_path, "db", "ca").read_bytes()
    with pytest.raises(ValidationError) as e:
        add_trust(
            tmp_path, "db", ntauth=[pem(pki.override)], ca=[b"junk", pem(leaf(pki.override)), pem(pki.root)]
        )
    assert e.value.problems == [
        "ntauth: the db target has no NTAuth store",
        "ca[0]: no valid PEM certificate",
        "ca[1]: 'CN=alice' is not a CA certificate (BasicConstraints CA:TRUE)",
    ]
    assert trust_file(tmp_path, "db", "ca").read_bytes() == before


def test_trust_command_adds_files_and_shows_the_trust(tmp_path: Path, pki: PKI) -> None:
    runner = CliRunner()
    result = runner.invoke(trust, ["--dir", str(tmp_path), "--target", "db"])
    assert result.exit_code != 0 and f"no targets in {tmp_path}" in str(result.exception)

    set_default_trust(tmp_path, [pki.self_signed.pem], [pki.self_signed.pem])
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pem(pki.intermediate, pki.root))
    result = runner.invoke(trust, ["--dir", str(tmp_path), "--target", "db", "--ca", str(chain)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "db CA bundle: added 'O=Example Corp,CN=Example Corp Issuing CA 1'",
        "db CA bundle: added 'O=Example Corp,CN=Example Corp Root CA'",
    ]
    result = runner.invoke(trust, ["--dir", str(tmp_path), "--target", "db"])
    assert result.output.splitlines() == [
        "db CA bundle: 3 certificate(s)",
        "  O=mycluster,CN=mycluster",
        "  O=Example Corp,CN=Example Corp Issuing CA 1",
        "  O=Example Corp,CN=Example Corp Root CA",
    ]
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    result = runner.invoke(trust, ["--dir", str(tmp_path), "--target", "desktop", "--ntauth", str(junk)])
    assert isinstance(result.exception, ValidationError)
    assert result.exception.problems == [f"{junk}: no valid PEM certificate"]


# --- real target processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A running target process of a fresh cluster dir whose trust is the default (the self-signed CA)."""

    directory: Path
    address: str
    process: subprocess.Popen[bytes]

    @property
    def server_ca(self) -> bytes:
        return ClusterLayout(self.directory).pki.server_ca_cert.read_bytes()


def _run_target(directory: Path, kind: str, pki: PKI) -> Generator[Target, None, None]:
    set_default_trust(directory, [pki.self_signed.pem], [pki.self_signed.pem])
    started: list[subprocess.Popen[bytes]] = []

    def start() -> Target:  # on a free port, again on another one when the port was taken first
        port = free_port()
        address = f"127.0.0.1:{port}"
        started.append(
            start_target(directory, kind, port, CLUSTER, f"127.0.0.1:{free_port()}")
        )  # no server there
        wait_listening(started[-1], address, ClusterLayout(directory).target(kind).log, 20)
        return Target(directory, address, started[-1])

    try:
        yield on_free_ports(start)
    finally:
        for process in started:
            processes.stop(process.pid, target_marker(directory, kind))


@pytest.fixture
def desktop(tmp_path: Path, pki: PKI) -> Iterator[Target]:
    yield from _run_target(tmp_path, "desktop", pki)


@pytest.fixture
def db(tmp_path: Path, pki: PKI) -> Iterator[Target]:
    yield from _run_target(tmp_path, "db", pki)


async def _logon(target: Target, credential: CertKey, user: str = "alice") -> SessionResult:
    return await open_desktop_session(
        target.address, target.server_ca, user, pem(credential), key_pem(credential), [], TIMEOUT
    )


async def test_desktop_refuses_an_issuer_outside_ntauth_before_asking_the_kdc(
    desktop: Target, pki: PKI
) -> None:
    """The NTAuth rule is the desktop's own (the KDC has none); here no KDC listens at all."""
    refused = await _logon(desktop, leaf(pki.override))
    assert refused == SessionResult(
        False,
        "issuing CA 'O=mycluster,CN=mycluster override CA' is not in the NTAuth store",
        "example-desktop",
    )
    log = ClusterLayout(desktop.directory).target("desktop").log.read_text()
    assert "session user='alice' success=False" in log


async def test_desktop_client_verifies_the_target_certificate(desktop: Target, pki: PKI) -> None:
    result = await open_desktop_session(
        desktop.address, pem(pki.root), "alice", pem(leaf(pki.self_signed)), b"", [], TIMEOUT
    )
    assert result == SessionResult(
        False, "TLS handshake refused: certificate verify failed: unable to get local issuer certificate", ""
    )


def test_target_stops_cleanly_on_sigterm(tmp_path: Path, pki: PKI) -> None:
    running = _run_target(tmp_path, "desktop", pki)
    target = next(running)
    try:
        os.kill(target.process.pid, signal.SIGTERM)
        assert target.process.wait(timeout=10) == 0
    finally:
        running.close()
    assert "desktop target stopped" in ClusterLayout(tmp_path).target("desktop").log.read_text()


async def test_client_reports_an_unreachable_target(tmp_path: Path, pki: PKI) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = await open_desktop_session(
        address, pem(pki.root), "alice", pem(leaf(pki.self_signed)), b"", [], 2.0
    )
    assert result == SessionResult(False, f"cannot reach desktop target at {address}: Connection refused", "")


async def test_client_gives_up_after_its_timeout(pki: PKI) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the TLS handshake
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        result = await open_desktop_session(
            address, pem(pki.root), "alice", pem(leaf(pki.self_signed)), b"", [], 0.5
        )
    finally:
        server.close()
    assert result == SessionResult(False, f"desktop target at {address} did not answer within 0.5s", "")
