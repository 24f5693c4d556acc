"""Revoked credentials refused by the real PostgreSQL behind the db target, fresh ones still accepted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from authsim.cluster.cli.authsim import main as authsim_main
from authsim.cluster.cli.runner import run_in_process
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.targets.database import database_answer
from authsim.cluster.targets.sessions import SessionRequest
from tests.downstream import Credential, Overridden, overridden_cluster


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overridden]:
    """The db_client override enabled, the external root in the database's CA bundle."""
    with overridden_cluster(tmp_path_factory.mktemp("revoke"), "db_client") as flow:
        authsim("trust", "--target", "db", "--ca", str(flow.ca.directory / "root.pem"), flow=flow)
        yield flow


def authsim(*args: str, flow: Overridden) -> str:
    result = run_in_process(authsim_main, [args[0], "--dir", str(flow.cluster.directory), *args[1:]])
    assert result.exit_code == 0, (args, result.stderr)
    return result.stdout


def session(flow: Overridden, credential: Credential, user: str) -> tuple[bool, str]:
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


def test_postgres_refuses_a_revoked_credential_and_accepts_a_fresh_one(
    flow: Overridden, tmp_path: Path
) -> None:
    alice = flow.sign("alice")
    assert session(flow, alice, "alice") == (True, "")
    serial = flow.ok("auth", "revoke", "--type=db_client", "--cert", str(next(flow.out.glob("*alice*.crt"))))
    assert "revoked under key" in serial
    published = list(ClusterLayout(flow.cluster.directory).crl_dir.glob("db_client-*.crl"))
    assert len(published) == 2  # the self-signed CA's and the override's
    # PostgreSQL checks every issuer of the chain: the external CA's CRLs are the admin's to give
    crl_file = tmp_path / "extca.crl"
    crl_file.write_bytes(flow.ca.crls())
    given = run_in_process(
        authsim_main,
        ["trust", "--dir", str(flow.cluster.directory), "--target", "db", "--crl", str(crl_file)],
    )
    assert given.exit_code == 0, given.stderr
    ok, reason = session(flow, alice, "alice")
    assert not ok
    assert "revoked" in reason, reason
    assert session(flow, flow.sign("bob"), "bob") == (True, "")
    assert session(flow, flow.sign("alice"), "alice") == (True, "")
