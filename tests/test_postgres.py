"""The database's real PostgreSQL server (cluster.local.postgres): certificate logins over TLS, decided
by PostgreSQL (`hostssl … cert`, `ssl_ca_file` = the external root only).

A cluster's db_client credential issued under an enabled override logs in as its role when presented
with its chain; without the chain, as another role, or issued after the override is disabled, it is
refused, with PostgreSQL's own words. The CA file is reloaded without a restart. The server runs as the
cluster's user, and its data dir is that user's alone.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsim.cluster.errors import ValidationError
from authsim.cluster.local import launcher, processes
from authsim.cluster.local.postgres import Postgres
from authsim.cluster.targets.pg_client import LoginResult
from authsim.cluster.targets.trust import read_trust
from tests.downstream import CLUSTER, Credential, Overridden, overridden_cluster

UNVERIFIED = "LOG: could not accept SSL connection: certificate verify failed"


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overridden]:
    with overridden_cluster(tmp_path_factory.mktemp("pg"), "db_client") as flow:
        yield flow


@pytest.fixture(scope="module")
def pg(flow: Overridden) -> Iterator[Postgres]:
    """The cluster's PostgreSQL, trusting only the external root, with roles alice and bob (the one
    `up` started is stopped: this test runs its own on the same data dir)."""
    launcher.down(flow.cluster.directory, only={"postgres"})
    pg = Postgres.setup(flow.cluster.directory, CLUSTER, [flow.ca.root])
    pg.start()
    try:
        pg.create_role("alice")
        pg.create_role("bob")
        yield pg
    finally:
        pg.stop()


def login(pg: Postgres, credential: Credential, user: str, chain: bool = True) -> LoginResult:
    return pg.login(credential.cert + (credential.chain if chain else b""), credential.key, user)


def test_a_db_client_credential_with_its_chain_logs_in_as_its_role(flow: Overridden, pg: Postgres) -> None:
    credential = flow.sign("alice")
    assert credential.override_active and credential.chain
    assert login(pg, credential, "alice") == LoginResult(True, "")
    odd = 'o\'brien "x"'  # quoted through psql variables and the connection string
    pg.create_role(odd)
    assert login(pg, flow.sign(odd), odd).ok


def test_a_leaf_without_its_chain_is_refused(flow: Overridden, pg: Postgres) -> None:
    assert login(pg, flow.sign("alice"), "alice", chain=False) == LoginResult(False, UNVERIFIED)


def test_a_credential_of_alice_presented_as_bob_is_refused(flow: Overridden, pg: Postgres) -> None:
    refused = login(pg, flow.sign("alice"), "bob")
    assert not refused.ok
    assert refused.reason.startswith(
        "LOG: provided user name (bob) and authenticated user name (alice) do not match; "
        'FATAL: certificate authentication failed for user "bob"'
    ), refused


def test_after_the_override_is_disabled_postgres_refuses_in_its_own_words(
    flow: Overridden, pg: Postgres
) -> None:
    with flow.disabled():
        credential = flow.sign("alice")
    assert not credential.override_active and credential.chain == b""
    assert login(pg, credential, "alice") == LoginResult(False, UNVERIFIED)
    assert UNVERIFIED.removeprefix("LOG: ") in pg.layout.log.read_text()  # the server's own line
    assert login(pg, flow.sign("alice"), "alice").ok  # enabled again: accepted again


def test_a_reloaded_ca_file_decides_the_next_login_without_a_restart(flow: Overridden, pg: Postgres) -> None:
    under_override = flow.sign("alice")
    with flow.disabled():
        self_signed = flow.sign("alice")
    pid = pg.pid
    pg.reload_client_cas(read_trust(flow.cluster.directory, "db").ca)  # the cluster's self-signed CA
    try:
        assert pg.pid == pid and processes.is_running(pid, pg.marker)
        assert login(pg, self_signed, "alice").ok
        assert login(pg, under_override, "alice") == LoginResult(False, UNVERIFIED)
    finally:
        pg.reload_client_cas([flow.ca.root])
    assert login(pg, under_override, "alice").ok


def test_the_superuser_never_logs_in_with_a_certificate(flow: Overridden, pg: Postgres) -> None:
    refused = login(pg, flow.sign(pg.superuser), pg.superuser)
    assert not refused.ok and "pg_hba.conf rejects connection" in refused.reason, refused


def test_the_server_runs_as_the_clusters_user_and_its_data_dir_is_that_users_alone(pg: Postgres) -> None:
    data = pg.layout.data
    assert stat.S_IMODE(data.stat().st_mode) == 0o700 and data.stat().st_uid == os.geteuid()
    status = Path(f"/proc/{pg.pid}/status").read_text()
    assert f"Uid:\t{os.geteuid()}\t" in status and "CapEff:\t0000000000000000" in status
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs in a user namespace of its own
        assert os.readlink(f"/proc/{pg.pid}/ns/user") != os.readlink("/proc/self/ns/user")


def test_the_data_dir_is_made_once_and_roles_survive_a_restart(flow: Overridden, pg: Postgres) -> None:
    version = pg.layout.data / "PG_VERSION"
    made = version.stat().st_mtime_ns
    again = Postgres.setup(flow.cluster.directory, CLUSTER, [flow.ca.root])
    assert again.layout == pg.layout and version.stat().st_mtime_ns == made
    pg.stop()
    assert not pg.running()
    pg.start()  # on its port, with its data: alice is still a role
    assert login(pg, flow.sign("alice"), "alice").ok


def test_what_postgres_cannot_take_is_refused_and_changes_nothing(pg: Postgres) -> None:
    for user in ("", "a" * 64, "nul\0"):
        with pytest.raises(ValidationError, match=r"^user: a role name of 1 to 63 bytes without NUL"):
            pg.create_role(user)
    bundle = pg.layout.client_ca.read_bytes()
    with pytest.raises(ValidationError, match=r"^client_cas: at least one CA certificate"):
        pg.reload_client_cas([])  # PostgreSQL would keep its old bundle and then not start again
    assert pg.layout.client_ca.read_bytes() == bundle
