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

from authsim.auth_node.target_sessions import SessionResult, open_db_session, open_desktop_session
from authsim.cluster.cli.trust import trust
from authsim.cluster.errors import ValidationError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import processes
from authsim.cluster.local.ports import free_port
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
    assert read_trust(tmp_path, "desktop") == Trust((pki.self_signed.cert,), ())
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
    port = free_port()
    process = start_target(directory, kind, port, CLUSTER)
    try:
        wait_listening(f"127.0.0.1:{port}", 20)
        yield Target(directory, f"127.0.0.1:{port}", process)
    finally:
        processes.stop(process.pid, target_marker(directory, kind))


@pytest.fixture
def desktop(tmp_path: Path, pki: PKI) -> Iterator[Target]:
    yield from _run_target(tmp_path, "desktop", pki)


@pytest.fixture
def db(tmp_path: Path, pki: PKI) -> Iterator[Target]:
    yield from _run_target(tmp_path, "db", pki)


async def _logon(target: Target, credential: CertKey, user: str = "alice") -> SessionResult:
    return await open_desktop_session(target.address, target.server_ca, user, pem(credential), [], TIMEOUT)


async def _connect_db(
    target: Target, credential: CertKey, chain: Sequence[CertKey], user: str = "alice"
) -> SessionResult:
    return await open_db_session(
        target.address,
        target.server_ca,
        user,
        pem(credential),
        key_pem(credential),
        [pem(c) for c in chain],
        TIMEOUT,
    )


async def test_desktop_trusts_the_override_once_it_is_in_ntauth_without_restart(
    desktop: Target, pki: PKI
) -> None:
    assert await _logon(desktop, leaf(pki.self_signed)) == SessionResult(True, "", "example-desktop")

    override_leaf = leaf(pki.override)
    refused = await _logon(desktop, override_leaf)
    assert refused == SessionResult(
        False,
        "issuing CA 'O=mycluster,CN=mycluster override CA' is not in the NTAuth store",
        "example-desktop",
    )
    add_trust(desktop.directory, "desktop", ntauth=[pem(pki.override)])
    assert (await _logon(desktop, override_leaf)).reason == "chain does not reach a trusted root"
    add_trust(desktop.directory, "desktop", ca=[pem(pki.intermediate, pki.root)])
    assert await _logon(desktop, override_leaf) == SessionResult(True, "", "example-desktop")
    log = ClusterLayout(desktop.directory).target("desktop").log.read_text()
    assert "logon user='alice' success=True" in log


async def test_desktop_refuses_bad_credentials(desktop: Target, pki: PKI) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    cases = {
        "missing EKU smartcardLogon": leaf(pki.self_signed, ekus=[ExtendedKeyUsageOID.CLIENT_AUTH]),
        "UPN SAN 'bob@mycluster.test' does not name user 'alice'": leaf(pki.self_signed, "bob"),
        "certificate expired at ": leaf(pki.self_signed, not_before=past),
    }
    for reason, credential in cases.items():
        result = await _logon(desktop, credential)
        assert not result.success and result.reason.startswith(reason), result


async def test_desktop_client_verifies_the_target_certificate(desktop: Target, pki: PKI) -> None:
    result = await open_desktop_session(
        desktop.address, pem(pki.root), "alice", pem(leaf(pki.self_signed)), [], TIMEOUT
    )
    assert result == SessionResult(
        False, "TLS handshake refused: certificate verify failed: unable to get local issuer certificate", ""
    )


async def test_db_trusts_the_external_root_for_override_chains(db: Target, pki: PKI) -> None:
    add_trust(db.directory, "db", ca=[pem(pki.root)], replace=True)
    override_leaf = leaf(pki.override, ekus=[ExtendedKeyUsageOID.CLIENT_AUTH])
    accepted = await _connect_db(db, override_leaf, [pki.override, pki.intermediate])
    assert accepted == SessionResult(True, "", "example-db")

    self_signed_leaf = leaf(pki.self_signed, ekus=[ExtendedKeyUsageOID.CLIENT_AUTH])
    refused = await _connect_db(db, self_signed_leaf, [])
    assert refused == SessionResult(False, "TLS handshake refused: tlsv1 alert unknown ca", "")
    add_trust(db.directory, "db", ca=[pem(pki.self_signed)])
    assert await _connect_db(db, self_signed_leaf, []) == SessionResult(True, "", "example-db")

    assert await _connect_db(db, self_signed_leaf, [], user="bob") == SessionResult(
        False, "certificate CN 'alice' does not match user 'bob'", "example-db"
    )
    log = ClusterLayout(db.directory).target("db").log.read_text()
    assert "TLS handshake refused: " in log


def test_db_target_is_a_real_tls_server_for_openssl(db: Target, pki: PKI, tmp_path: Path) -> None:
    add_trust(db.directory, "db", ca=[pem(pki.root)], replace=True)

    def s_client(credential: CertKey, chain: Sequence[CertKey]) -> subprocess.CompletedProcess[bytes]:
        (tmp_path / "leaf.pem").write_bytes(pem(credential))
        (tmp_path / "leaf.key").write_bytes(key_pem(credential))
        argv = ["openssl", "s_client", "-connect", db.address, "-quiet", "-verify_return_error"]
        argv += ["-CAfile", str(ClusterLayout(db.directory).pki.server_ca_cert), "-verify_hostname", "db"]
        argv += ["-cert", str(tmp_path / "leaf.pem"), "-key", str(tmp_path / "leaf.key")]
        if chain:
            (tmp_path / "chain.pem").write_bytes(pem(*chain))
            argv += ["-cert_chain", str(tmp_path / "chain.pem")]
        return subprocess.run(argv, input=b'{"user": "alice"}\n', capture_output=True, timeout=30)

    client_auth = [ExtendedKeyUsageOID.CLIENT_AUTH]
    accepted = s_client(leaf(pki.override, ekus=client_auth), [pki.override, pki.intermediate])
    assert b'{"success": true, "reason": "", "database": "example-db"}' in accepted.stdout, accepted.stderr
    refused = s_client(leaf(pki.self_signed, ekus=client_auth), [])
    assert refused.returncode != 0 and b"alert unknown ca" in refused.stderr, refused.stderr


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
    result = await open_desktop_session(address, pem(pki.root), "alice", pem(leaf(pki.self_signed)), [], 2.0)
    assert result == SessionResult(False, f"cannot reach desktop target at {address}: Connection refused", "")


async def test_client_gives_up_after_its_timeout(pki: PKI) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the TLS handshake
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        result = await open_desktop_session(
            address, pem(pki.root), "alice", pem(leaf(pki.self_signed)), [], 0.5
        )
    finally:
        server.close()
    assert result == SessionResult(False, f"desktop target at {address} did not answer within 0.5s", "")
