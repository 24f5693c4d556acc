"""The desktop's real MIT Kerberos KDC (cluster.local.kdc): PKINIT smart-card logons, decided by the KDC.

A cluster's windows credential issued under an enabled override gets a TGT; one issued after the
override is disabled, or one of bob presented as alice, is refused, with the KDC's own reason. Hand-made
leaves pin down the UPN form MIT krb5 1.20 accepts: `alice@<domain>` exactly, asked for as that
enterprise name (not `alice`, not `alice@<REALM>`).
"""

from __future__ import annotations

import datetime as dt
import socket
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authsim.cluster.errors import ClusterError, ValidationError
from authsim.cluster.local import launcher, processes
from authsim.cluster.local.kdc import SUPERVISED, Kdc
from authsim.cluster.resources.x509 import key_usage
from authsim.cluster.targets.kerberos import LogonResult
from authsim.cluster.targets.server_log import end_of, since
from authsim.cluster.targets.trust import read_trust
from tests.certs import CertKey, external_ca, rsa_key
from tests.downstream import CLUSTER, DOMAIN, Overridden, overridden_cluster

UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
SMARTCARD_LOGON = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")
UNKNOWN_ISSUER = (
    "PREAUTH_FAILED: Failed to verify received certificate (depth {}): unable to get local issuer"
)
NAME_MISMATCH = "PREAUTH_FAILED: Client name mismatch"


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overridden]:
    with overridden_cluster(tmp_path_factory.mktemp("kdc"), "windows") as flow:
        yield flow


@pytest.fixture(scope="module")
def kdc(flow: Overridden) -> Iterator[Kdc]:
    """The cluster's KDC, trusting only the external root, with users alice and bob (the one `up`
    started is stopped: this test runs its own on the same database)."""
    launcher.down(flow.cluster.directory, only={"kdc"})
    kdc = Kdc.setup(flow.cluster.directory, CLUSTER, DOMAIN, [flow.ca.root])
    kdc.start()
    try:
        kdc.add_user("alice")
        kdc.add_user("bob")
        yield kdc
    finally:
        kdc.stop()


def workstation(flow: Overridden) -> list[x509.Certificate]:
    """A domain workstation's certificates: the desktop's NTAuth store (the cluster's self-signed windows
    CA), the override (the issuing CA NTAuth would know) and the external intermediate and root."""
    ntauth = read_trust(flow.cluster.directory, "desktop").ntauth
    return [*ntauth, flow.override, flow.ca.intermediate, flow.ca.root]


def logon(kdc: Kdc, flow: Overridden, user: str, as_user: str | None = None) -> LogonResult:
    credential = flow.sign(user)
    return kdc.logon(credential.cert, credential.key, as_user or user, workstation(flow))


def test_a_windows_credential_under_an_enabled_override_gets_a_tgt(flow: Overridden, kdc: Kdc) -> None:
    credential = flow.sign("alice")
    assert credential.override_active and credential.chain == b""
    assert kdc.logon(credential.cert, credential.key, "alice", workstation(flow)) == LogonResult(True, "")


def test_a_credential_of_bob_presented_as_alice_is_refused_by_the_kdc(flow: Overridden, kdc: Kdc) -> None:
    assert logon(kdc, flow, "bob", as_user="alice") == LogonResult(False, NAME_MISMATCH)
    assert logon(kdc, flow, "bob").ok


def test_after_the_override_is_disabled_the_kdc_refuses_in_its_own_words(flow: Overridden, kdc: Kdc) -> None:
    with flow.disabled():
        credential = flow.sign("alice")
    assert not credential.override_active
    refused = kdc.logon(credential.cert, credential.key, "alice", workstation(flow))
    assert not refused.ok and refused.reason.startswith(UNKNOWN_ISSUER.format(0)), refused
    assert refused.reason.split(": ", 1)[1] in kdc.layout.log.read_text()  # the KDC's own line
    assert logon(kdc, flow, "alice").ok  # enabled again: accepted again


def test_reload_anchors_restarts_the_kdc_on_its_port_with_the_new_trust(flow: Overridden, kdc: Kdc) -> None:
    under_override = flow.sign("alice")
    with flow.disabled():
        self_signed = flow.sign("alice")
    port, pid, offset = kdc.port, kdc.pid, end_of(kdc.layout.log)
    kdc.reload_anchors(read_trust(flow.cluster.directory, "desktop").ntauth)
    try:
        # the supervisor (the PID `down` stops) stays; the krb5kdc it runs was started again
        assert kdc.port == port and kdc.pid == pid and processes.is_running(pid, kdc.marker)
        assert f"{SUPERVISED} on {kdc.address}" in since(kdc.layout.log, offset)
        assert kdc.logon(self_signed.cert, self_signed.key, "alice", workstation(flow)).ok
        refused = kdc.logon(under_override.cert, under_override.key, "alice", workstation(flow))
        assert refused.reason.startswith(UNKNOWN_ISSUER.format(2)), refused  # leaf, override, intermediate
    finally:
        kdc.reload_anchors([flow.ca.root])
    assert kdc.logon(under_override.cert, under_override.key, "alice", workstation(flow)).ok


# --- hand-made leaves: what MIT krb5 matches, and the KDC's files --------------------------------------


@dataclass(frozen=True)
class Lab:
    """A KDC for domain `lab.test` (no cluster) trusting an external root, and the CA issuing leaves."""

    directory: Path
    kdc: Kdc
    issuing: CertKey
    root: CertKey

    def logon(
        self, leaf: CertKey, user: str = "alice", store: Sequence[x509.Certificate] | None = None
    ) -> LogonResult:
        cert = leaf.cert.public_bytes(serialization.Encoding.PEM)
        key = leaf.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return self.kdc.logon(
            cert, key, user, [self.issuing.cert, self.root.cert] if store is None else store
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    issuing, root = external_ca(levels=2)
    directory = tmp_path_factory.mktemp("lab")
    kdc = Kdc.setup(directory, "lab", "lab.test", [root.cert])
    kdc.start()
    try:
        kdc.add_user("alice")
        yield Lab(directory, kdc, issuing, root)
    finally:
        kdc.stop()


def windows_leaf(
    issuer: CertKey, upn: str, ekus: Sequence[x509.ObjectIdentifier] = (SMARTCARD_LOGON,)
) -> CertKey:
    """A smart-card credential with UPN SAN `upn`, as Active Directory Certificate Services issues it."""
    key = rsa_key(60)
    now = dt.datetime.now(dt.timezone.utc)
    value = upn.encode()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, upn.split("@")[0])]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(["digital_signature", "key_encipherment"]), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, *ekus]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.OtherName(UPN, bytes([0x0C, len(value)]) + value)]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    return CertKey(builder.sign(issuer.key, hashes.SHA256()), key)


def test_the_kdc_accepts_the_ad_style_upn_user_at_domain_and_no_other_form(lab: Lab) -> None:
    assert lab.kdc.realm == "LAB.TEST" and lab.kdc.principal("alice") == "alice\\@lab.test@LAB.TEST"
    assert lab.logon(windows_leaf(lab.issuing, "alice@lab.test")) == LogonResult(True, "")
    for upn in ("alice@LAB.TEST", "alice", "alice@other.test", "bob@lab.test"):
        assert lab.logon(windows_leaf(lab.issuing, upn)) == LogonResult(False, NAME_MISMATCH), upn


def test_the_kdc_checks_the_smartcard_logon_eku(lab: Lab) -> None:
    refused = lab.logon(windows_leaf(lab.issuing, "alice@lab.test", ekus=()))
    assert refused == LogonResult(False, "PREAUTH_FAILED: Inconsistent key purpose"), refused


def test_a_client_that_cannot_build_its_own_chain_gives_up_before_asking(lab: Lab) -> None:
    refused = lab.logon(windows_leaf(lab.issuing, "alice@lab.test"), store=[lab.root.cert])
    assert refused.reason.startswith("kinit: Pre-authentication failed: Failed to verify own certificate"), (
        refused
    )


def test_the_kdc_files_are_private_and_its_database_is_made_once(lab: Lab) -> None:
    layout = lab.kdc.layout
    for path, mode in [(layout.directory, 0o700), (layout.database_dir, 0o700), (layout.stash, 0o600)]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert stat.S_IMODE(layout.key.stat().st_mode) == 0o600
    assert "pkinit" not in layout.krb5_conf.read_text()  # the KDC reads it too: no client trust in it
    stash = layout.stash.read_bytes()
    again = Kdc.setup(lab.directory, "lab", "lab.test", [lab.root.cert])
    assert again.layout == layout and layout.stash.read_bytes() == stash
    lab.kdc.stop()
    lab.kdc.start()  # on its port, with its database: alice is still there
    assert lab.logon(windows_leaf(lab.issuing, "alice@lab.test")).ok


def test_names_the_kdc_cannot_take_and_a_busy_port_are_refused(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^user: the KDC takes letters, digits"):
        lab.kdc.add_user("alice smith")
    with pytest.raises(ValidationError, match=r"^domain: a DNS name"):
        Kdc.setup(tmp_path, "lab", "lab test", [lab.root.cert])
    kdc = Kdc.setup(tmp_path, "lab", "lab.test", [lab.root.cert])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        kdc.port = taken.getsockname()[1]
        try:
            with pytest.raises(ClusterError, match=r"(?s)krb5kdc did not start on .*Address already in use"):
                kdc.start()
            assert not kdc.running()
        finally:
            kdc.stop()
