"""Revoked credentials refused by the real servers behind the targets, fresh ones still accepted: the
database's PostgreSQL and the desktop's MIT KDC (restarted by its supervisor when the CRLs change, its
PID in `cluster.yaml` staying true, so `authsim down` leaves no KDC).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from authsim.auth_node.target_sessions import SessionResult, open_desktop_session
from authsim.cluster.cli.authsim import main as authsim_main
from authsim.cluster.cli.runner import run_in_process
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import downstream, processes
from authsim.cluster.targets.database import database_answer
from authsim.cluster.targets.sessions import SessionRequest
from tests.downstream import Credential, Overridden, overridden_cluster

TIMEOUT = 30.0
KDC_REVOKED = "PREAUTH_FAILED: Failed to verify received certificate (depth 0): certificate revoked"


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Overridden]]:
    """The windows and db_client overrides of node1 enabled; the external root in the database's CA
    bundle, the external chain in the desktop's (the KDC's anchors), the override in its NTAuth store."""
    tmp = tmp_path_factory.mktemp("revoke")
    with overridden_cluster(tmp, "windows") as windows:
        cluster = windows.cluster
        db_file = tmp / "db_client-override.pem"
        db_file.write_text(cluster.override_certs(windows.ca, "db_client")["node1"] + "\n")
        db = Overridden(cluster, windows.ca, "db_client", db_file, windows.out)
        db.ok("auth", "create-override", "--type=db_client", str(db_file), str(windows.ca.chain_path))
        authsim("trust", "--target", "db", "--ca", str(windows.ca.directory / "root.pem"), flow=db)
        authsim("trust", "--target", "desktop", "--ntauth", str(windows.override_file), flow=windows)
        authsim("trust", "--target", "desktop", "--ca", str(windows.ca.chain_path), "--replace", flow=windows)
        yield {"windows": windows, "db_client": db}


def authsim(*args: str, flow: Overridden) -> str:
    result = run_in_process(authsim_main, [args[0], "--dir", str(flow.cluster.directory), *args[1:]])
    assert result.exit_code == 0, (args, result.stderr)
    return result.stdout


def revoke(flow: Overridden, user: str) -> None:
    """`authctl auth revoke --cert` of the newest credential of `user`."""
    newest = max(flow.out.glob(f"{flow.ca_type}-{user}-*.crt"), key=lambda p: p.stat().st_mtime_ns)
    said = flow.ok("auth", "revoke", f"--type={flow.ca_type}", "--cert", str(newest))
    assert "revoked under key" in said


def external_crls(flow: Overridden, tmp_path: Path) -> Path:
    crl_file = tmp_path / "extca.crl"
    crl_file.write_bytes(flow.ca.crls())
    return crl_file


def db_session(flow: Overridden, credential: Credential, user: str) -> tuple[bool, str]:
    """The db target's verdict (its real code: CRLs installed, then a login at PostgreSQL)."""
    directory = flow.cluster.directory
    port = int(flow.cluster.state.servers["postgres"].address.rsplit(":", 1)[1])
    request = SessionRequest(
        user,
        x509.load_pem_x509_certificate(credential.cert),
        x509.load_pem_x509_certificates(credential.chain),
        credential.key,
    )
    return database_answer(directory, port)(request)


def desktop_session(flow: Overridden, credential: Credential, user: str) -> SessionResult:
    """A session on the desktop target `up` started: the NTAuth check, then a logon at the KDC."""
    (result,) = desktop_sessions(flow, (credential, user))
    return result


def desktop_sessions(flow: Overridden, *sessions: tuple[Credential, str]) -> list[SessionResult]:
    """Sessions on the desktop target, all at once."""
    cluster = flow.cluster
    server_ca = ClusterLayout(cluster.directory).pki.server_ca_cert.read_bytes()
    address = cluster.state.targets["desktop"].address

    async def all_at_once() -> list[SessionResult]:
        opened = (
            open_desktop_session(address, server_ca, user, credential.cert, credential.key, [], TIMEOUT)
            for credential, user in sessions
        )
        return list(await asyncio.gather(*opened))

    return asyncio.run(all_at_once())


def krb5kdc_of(supervisor: int | None) -> list[int]:
    """The PIDs of the children of the KDC's supervisor (its krb5kdc)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children]


def test_postgres_refuses_a_revoked_credential_and_accepts_a_fresh_one(
    flows: dict[str, Overridden], tmp_path: Path
) -> None:
    flow = flows["db_client"]
    alice = flow.sign("alice")
    assert db_session(flow, alice, "alice") == (True, "")
    revoke(flow, "alice")
    published = list(ClusterLayout(flow.cluster.directory).crl_dir.glob("db_client-*.crl"))
    assert len(published) == 2  # the self-signed CA's and the override's
    # PostgreSQL checks every issuer of the chain: the external CA's CRLs are the admin's to give
    authsim("trust", "--target", "db", "--crl", str(external_crls(flow, tmp_path)), flow=flow)
    ok, reason = db_session(flow, alice, "alice")
    assert not ok
    assert "revoked" in reason, reason
    assert db_session(flow, flow.sign("bob"), "bob") == (True, "")
    assert db_session(flow, flow.sign("alice"), "alice") == (True, "")


def test_the_kdc_refuses_a_revoked_windows_credential_in_its_own_words(
    flows: dict[str, Overridden], tmp_path: Path
) -> None:
    flow = flows["windows"]
    cluster = flow.cluster
    kdc_log = ClusterLayout(cluster.directory).kdc.log
    supervisor = cluster.state.servers["kdc"].pid
    alice = flow.sign("alice")
    assert alice.override_active
    assert desktop_session(flow, alice, "alice").success
    before = krb5kdc_of(supervisor)
    revoke(flow, "alice")
    # two sessions at once, while the KDC must take the new CRL: one restart, both verdicts by it
    refused, fresh = desktop_sessions(flow, (alice, "alice"), (flow.sign("bob"), "bob"))
    assert refused == SessionResult(False, KDC_REVOKED, "example-desktop"), refused
    assert refused.reason.split(": ", 1)[1] in kdc_log.read_text()  # the KDC's own line
    assert fresh.success, fresh
    assert desktop_session(flow, flow.sign("alice"), "alice").success
    # the external CA's CRLs given too (`authsim trust --crl`): every issuer checked, same verdicts
    authsim("trust", "--target", "desktop", "--crl", str(external_crls(flow, tmp_path)), flow=flow)
    assert desktop_session(flow, alice, "alice").reason == KDC_REVOKED
    assert desktop_session(flow, flow.sign("alice"), "alice").success
    # one supervisor all along, the PID `up` recorded; it runs one krb5kdc, started again meanwhile
    assert cluster.state.servers["kdc"].pid == supervisor
    after = krb5kdc_of(supervisor)
    assert len(after) == 1 and after != before


def test_down_leaves_no_kdc_process(flows: dict[str, Overridden]) -> None:
    cluster = flows["windows"].cluster
    entry = cluster.state.servers["kdc"]
    assert downstream.server_running(cluster.directory, "kdc", entry)
    (krb5kdc,) = krb5kdc_of(entry.pid)
    assert "desktop KDC" in cluster.stop()
    assert not processes.is_running(entry.pid, downstream.server_marker(cluster.directory, "kdc"))
    assert not Path(f"/proc/{krb5kdc}").exists()
    assert not ClusterLayout(cluster.directory).kdc.serving.exists()
