"""`authctl exercise` on a cluster made by `up`, decided by the real servers `up` started beside the
nodes: the desktop's MIT Kerberos KDC (a PKINIT logon) and the database's PostgreSQL (a certificate login).

Both overrides are enabled; the desktop's CA bundle (the KDC's anchors) and the database's are the
external root and intermediate only, the desktop's NTAuth store holds the cluster's own windows CA and
the override. So a credential issued after an override is disabled passes the NTAuth check and is
refused by the server itself, whose words are the event's reason. `down` leaves no KDC or PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.target_sessions import SessionResult, open_db_session, open_desktop_session
from authsim.cluster.cli.trust import trust
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import downstream, processes
from tests.downstream import Overridden, overridden_cluster

KDC_UNKNOWN_ISSUER = (
    "PREAUTH_FAILED: Failed to verify received certificate (depth 0): unable to get local issuer"
)
PG_UNVERIFIED = "LOG: could not accept SSL connection: certificate verify failed"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Overridden]]:
    """One cluster made by `up`, an enabled override of node1's active windows and db_client keys, and
    the targets' trust set with `authsim trust` (which reloads the servers)."""
    tmp = tmp_path_factory.mktemp("downstream")
    with overridden_cluster(tmp, "windows") as windows:
        cluster = windows.cluster
        db_file = tmp / "db_client-override.pem"
        db_file.write_text(cluster.override_certs(windows.ca, "db_client")["node1"] + "\n")
        db = Overridden(cluster, windows.ca, "db_client", db_file, windows.out)
        db.ok("auth", "create-override", "--type=db_client", str(db_file), str(windows.ca.chain_path))
        root = tmp / "root.pem"
        root.write_bytes(windows.ca.root.public_bytes(Encoding.PEM))
        for args in (
            ["--target", "desktop", "--ntauth", str(windows.override_file)],
            ["--target", "desktop", "--ca", str(windows.ca.chain_path), "--replace"],
            ["--target", "db", "--ca", str(root), "--replace"],
        ):
            result = CliRunner().invoke(trust, ["--dir", str(cluster.directory), *args])
            assert result.exit_code == 0, result.output
        yield {"windows": windows, "db_client": db}


def exercise(flow: Overridden, user: str = "alice") -> dict[str, object]:
    return flow.cluster.exercise(flow.ca_type, user, node="node1")


def test_under_enabled_overrides_the_kdc_and_postgres_accept(flows: dict[str, Overridden]) -> None:
    for flow in flows.values():
        event = exercise(flow)
        assert event["success"] is True and "error" not in event, event
        assert event["ca_override"]["active"] is True, event  # type: ignore[index]
    layout = ClusterLayout(flows["windows"].cluster.directory)
    assert "ISSUE: " in layout.kdc.log.read_text()  # the KDC issued alice a TGT
    assert "alice\\@mycluster.test@MYCLUSTER.TEST for krbtgt/MYCLUSTER.TEST" in layout.kdc.log.read_text()


def test_after_disabling_the_servers_refuse_in_their_own_words(flows: dict[str, Overridden]) -> None:
    expected = {"windows": KDC_UNKNOWN_ISSUER, "db_client": PG_UNVERIFIED}
    for ca_type, flow in flows.items():
        with flow.disabled():
            event = exercise(flow)
        assert event["success"] is False and event["ca_override"]["active"] is False, event  # type: ignore[index]
        assert str(event["error"]).startswith(expected[ca_type]), event
        assert exercise(flow)["success"] is True  # enabled again: accepted again


def session(flow: Overridden, kind: str, user: str, as_user: str, chain: bool = True) -> SessionResult:
    """A session on the target `up` registered, with `user`'s credential presented as `as_user`."""
    cluster = flow.cluster
    credential = flow.sign(user)
    address = cluster.state.targets[kind].address
    server_ca = ClusterLayout(cluster.directory).pki.server_ca_cert.read_bytes()
    chain_pems = [credential.chain] if chain and credential.chain else []
    opener = open_desktop_session if kind == "desktop" else open_db_session
    return asyncio.run(
        opener(address, server_ca, as_user, credential.cert, credential.key, chain_pems, TIMEOUT)
    )


def test_a_credential_of_bob_presented_as_alice_is_refused_by_the_kdc(flows: dict[str, Overridden]) -> None:
    refused = session(flows["windows"], "desktop", "bob", as_user="alice")
    assert refused == SessionResult(False, "PREAUTH_FAILED: Client name mismatch", "example-desktop")


def test_a_leaf_without_its_chain_is_refused_by_postgres(flows: dict[str, Overridden]) -> None:
    refused = session(flows["db_client"], "db", "alice", as_user="alice", chain=False)
    assert refused == SessionResult(False, PG_UNVERIFIED, "postgres")
    assert session(flows["db_client"], "db", "alice", as_user="alice").success


def test_down_leaves_no_kdc_or_postgres_process(flows: dict[str, Overridden]) -> None:
    cluster = flows["windows"].cluster
    servers = cluster.state.servers  # as `up` (and `authsim trust`, restarting the KDC) recorded them
    assert set(servers) == {"kdc", "postgres"}
    for name, entry in servers.items():
        assert downstream.server_running(cluster.directory, name, entry), name
    stopped = cluster.stop()
    assert {"desktop KDC", "db PostgreSQL"} <= set(stopped)
    for name, entry in servers.items():
        assert not processes.is_running(entry.pid, downstream.server_marker(cluster.directory, name)), name
