"""Audit events for override writes through real nodes (issue 13 item 7): every write, success or
refusal, records exactly one event naming the caller by its certificate's CN; a check-only write records
none; `get events --kind/--code` select on the node, page by page; a write whose event cannot be
recorded (etcd's RBAC refuses the node the events prefix) still succeeds. Real etcd, node processes and
SoftHSM tokens; session events come from a real exercise or are written straight into etcd.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aetcd import rpc
from aetcd.utils import prefix_range_end
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import AuthSimError, ValidationError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.state import admin_address
from authsim.cluster.mtls import TLSIdentity
from authsim.cluster.resources.x509 import public_key_hash
from authsim.cluster.store import EtcdStore
from authsim.cluster.store.keys import events_prefix, override_key
from authsim.cluster.store.rbac import cluster_role
from tests.test_events import ClusterEtcd, event_at, write_events

CLUSTER = "mycluster"
AUDITOR = "auditor-alice"  # the CN of a second admin certificate: events must name it, not "admin"
EVENT_WAIT = 10.0  # seconds an event may take to show up (it is recorded beside the reply, not before)


@dataclass
class World:
    """A 2-node cluster, an override certificate per node for its windows key, a second admin identity."""

    cluster: LocalCluster
    ca: ExternalCA
    certs: dict[str, str]  # node -> override certificate (PEM) for the windows key it holds
    hashes: dict[str, str]  # node -> that key's public key hash
    active: str  # the node holding the active windows key
    auditor: TLSIdentity
    etcd: ClusterEtcd

    def client(self, node: str) -> NodeClient:
        """A client of `node` presenting the AUDITOR certificate."""
        entry = self.cluster.state.node(node)
        return NodeClient(admin_address(self.cluster.directory, entry), self.auditor, entry.name)

    def call(self, node: str, method: str, request: Any, request_id: str) -> Any:
        with self.client(node) as client:
            return client.call(method, request, request_id=request_id)

    def refused(self, node: str, method: str, request: Any, request_id: str) -> str:
        """The message of the error `method` is refused with."""
        with pytest.raises(AuthSimError) as refusal:
            self.call(node, method, request, request_id)
        return str(refusal.value)

    def resource(self) -> pb.CertAuthorityOverride:
        with self.client(self.active) as client:
            reply = client.call("ListOverrides", pb.GetOverrideRequest(type="windows"))
        resource: pb.CertAuthorityOverride = reply.overrides[0]
        return resource


def _auditor_identity(directory: Path, out: Path) -> TLSIdentity:
    """A client certificate with CN AUDITOR from the cluster's admin CA (which the nodes accept)."""
    layout = ClusterLayout(directory)
    ca_cert = x509.load_pem_x509_certificate(layout.pki.admin_ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(layout.pki.admin_ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AUDITOR)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir()
    identity = TLSIdentity(out / "auditor.crt", out / "auditor.key", layout.admin.server_ca)
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    identity.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return identity


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("audit-events")
    ca = init(tmp / "extca")
    with local_cluster(tmp / "c", nodes=2) as cluster:
        state = cluster.state
        etcd = ClusterEtcd(EtcdStore(state.etcd.endpoints, tls=state.etcd.tls), asyncio.new_event_loop())
        try:
            etcd.run(etcd.store.connect())
            certs = cluster.override_certs(ca, "windows")
            hashes = {
                n: public_key_hash(x509.load_pem_x509_certificate(c.encode()).public_key())
                for n, c in certs.items()
            }
            ca_doc = json.loads(cluster.authctl("get", "cas/windows", "--format", "json").stdout)
            active_host = ca_doc["spec"]["active_keys"]["tls"][0]["key"]["host_id"]
            active = next(n for n in cluster.node_names if cluster.host_id(n) == active_host)
            auditor = _auditor_identity(cluster.directory, tmp / "auditor")
            yield World(cluster, ca, certs, hashes, active, auditor, etcd)
        finally:
            etcd.run(etcd.store.close())
            etcd.loop.close()


@pytest.fixture
def w(world: World) -> World:
    """The world with no events and no windows override (removed in etcd: no write, no event)."""
    world.etcd.run(world.etcd.store.delete_prefix(events_prefix(CLUSTER)))
    world.etcd.run(world.etcd.store.delete_prefix(override_key(CLUSTER, "windows")))
    return world


def listed(cluster: LocalCluster, *options: str) -> list[dict[str, Any]]:
    result = cluster.authctl("get", "events", "--format", "json", *options)
    assert result.exit_code == 0, result.stderr
    events: list[dict[str, Any]] = json.loads(result.stdout)
    return events


def override_events(cluster: LocalCluster, count: int) -> list[dict[str, Any]]:
    """The override events, once `count` are recorded; and still `count` a moment later (no extra)."""
    deadline = time.monotonic() + EVENT_WAIT
    while len(events := listed(cluster, "--kind", "override")) < count:
        assert time.monotonic() < deadline, f"{len(events)} override events of {count}: {events}"
        time.sleep(0.05)
    time.sleep(0.3)
    assert listed(cluster, "--kind", "override") == events
    return events


def expected(
    node: str, operation: str, code: str, reply: pb.WriteResponse, request_id: str, public_key: str = ""
) -> dict[str, Any]:
    """The fields an event of a successful write must hold (beside its time and uid)."""
    fields = {
        "attempts": reply.attempts,
        "auth_node": node,
        "ca_type": "windows",
        "changed": True,
        "cluster_name": CLUSTER,
        "code": code,
        "event": "cert_auth_override.delete" if code == "TCO04I" else "cert_auth_override.upsert",
        "operation": operation,
        "request_id": request_id,
        "revision": reply.revision,
        "success": True,
        "user": AUDITOR,
    }
    return fields | ({"public_key": public_key} if public_key else {})


def without_time(event: dict[str, Any]) -> dict[str, Any]:
    assert dt.datetime.fromisoformat(event["time"]) and event["uid"]
    return {k: v for k, v in event.items() if k not in ("time", "uid")}


def test_each_write_kind_records_one_event_with_what_it_wrote(w: World) -> None:
    """create/update/delete of an entry, create/update/upsert/delete of the resource: one event each,
    with the reference's code, the caller's CN, the node, the revision, attempts and request id it was
    told; an entry deleted through `authctl` names the CLI's identity, `admin`."""
    other = next(n for n in w.cluster.node_names if n != w.active)
    mine, theirs = w.hashes[w.active], w.hashes[other]
    wanted = []

    add = pb.CreateOverrideRequest(type="windows", certificate=w.certs[w.active])
    reply = w.call(w.active, "CreateOverride", add, "add-active")
    wanted.append(expected(w.active, "create_override", "TCO02I", reply, "add-active", mine))
    staged = pb.CreateOverrideRequest(type="windows", certificate=w.certs[other], disabled=True)
    reply = w.call(other, "CreateOverride", staged, "add-other")
    wanted.append(expected(other, "create_override", "TCO02I", reply, "add-other", theirs))
    enable = pb.UpdateOverrideRequest(type="windows", public_key=theirs, set_disabled=False)
    reply = w.call(other, "UpdateOverride", enable, "enable-other")
    wanted.append(expected(other, "update_override", "TCO02I", reply, "enable-other", theirs))
    remove = pb.DeleteOverrideRequest(type="windows", public_key=theirs)
    reply = w.call(other, "DeleteOverride", remove, "remove-other")
    wanted.append(expected(other, "delete_override", "TCO03I", reply, "remove-other", theirs))

    resource = w.resource()
    update = pb.WriteOverrideRequest(resource=resource, mode=pb.UPDATE)
    reply = w.call(other, "WriteOverrideResource", update, "update")
    wanted.append(expected(other, "update", "TCO01I", reply, "update"))
    upsert = pb.WriteOverrideRequest(resource=resource, mode=pb.UPSERT)
    reply = w.call(w.active, "WriteOverrideResource", upsert, "upsert")
    wanted.append(expected(w.active, "upsert", "TCO01I", reply, "upsert"))
    drop = pb.DeleteOverrideResourceRequest(type="windows", force=True)
    reply = w.call(other, "DeleteOverrideResource", drop, "drop")
    wanted.append(expected(other, "delete", "TCO04I", reply, "drop"))
    resource.revision = 0
    create = pb.WriteOverrideRequest(resource=resource, mode=pb.CREATE)
    reply = w.call(w.active, "WriteOverrideResource", create, "create")
    wanted.append(expected(w.active, "create", "TCO01I", reply, "create"))

    by_cli = w.cluster.authctl(
        "auth", "delete-override", "--type=windows", "--public-key", mine, "--force", node=other
    )
    assert by_cli.exit_code == 0, by_cli.stderr
    events = override_events(w.cluster, len(wanted) + 1)
    assert [without_time(e) for e in events[:-1]] == wanted
    assert events[-1]["user"] == "admin" and events[-1]["code"] == "TCO03I"
    assert events[-1]["public_key"] == mine and events[-1]["request_id"]
    assert all(e["attempts"] >= 1 for e in events)


def test_a_refused_write_records_a_failure_naming_the_field_and_rule(w: World) -> None:
    """Each refusal records its write's failure code (TCO0nW), the message the caller got as `error`,
    the request id and no revision; nothing about it reads as a success."""
    other = next(n for n in w.cluster.node_names if n != w.active)
    csr = w.call(w.active, "CreateOverrideCSR", pb.CreateOverrideCSRRequest(type="windows"), "csr")
    not_a_ca = w.ca.sign_csr(csr.csrs[0].pem.encode(), defects=frozenset({"not-ca"}))
    bad = pb.CreateOverrideRequest(
        type="windows", certificate=not_a_ca.public_bytes(serialization.Encoding.PEM).decode()
    )
    reasons = {"bad-cert": w.refused(w.active, "CreateOverride", bad, "bad-cert")}
    good = pb.CreateOverrideRequest(type="windows", certificate=w.certs[w.active])
    w.call(w.active, "CreateOverride", good, "good")
    disable = pb.UpdateOverrideRequest(type="windows", public_key=w.hashes[w.active], set_disabled=True)
    reasons["disable"] = w.refused(w.active, "UpdateOverride", disable, "disable")
    stale = pb.WriteOverrideRequest(resource=w.resource(), mode=pb.UPDATE)
    stale.resource.revision -= 1
    reasons["stale"] = w.refused(other, "WriteOverrideResource", stale, "stale")
    missing = pb.DeleteOverrideResourceRequest(type="db_client")
    reasons["missing"] = w.refused(other, "DeleteOverrideResource", missing, "missing")
    unknown = pb.DeleteOverrideRequest(type="nope", public_key=w.hashes[w.active])
    reasons["unknown"] = w.refused(other, "DeleteOverride", unknown, "unknown")

    assert "spec.certificate_overrides[0]" in reasons["bad-cert"] and "CA" in reasons["bad-cert"]
    assert "disabling the enabled override of the active key" in reasons["disable"]
    assert reasons["stale"].startswith("revision mismatch")
    assert "ca_overrides/db_client not found" in reasons["missing"]
    assert reasons["unknown"].startswith("type: unknown CA type 'nope'")
    events = {e["request_id"]: e for e in override_events(w.cluster, 6)}
    assert events["good"]["code"] == "TCO02I" and events["good"]["success"] is True
    failures = {
        "bad-cert": ("TCO02W", "create_override", w.active, "windows"),
        "disable": ("TCO02W", "update_override", w.active, "windows"),
        "stale": ("TCO01W", "update", other, "windows"),
        "missing": ("TCO04W", "delete", other, "db_client"),
        "unknown": ("TCO03W", "delete_override", other, "nope"),
    }
    for request_id, (code, operation, node, ca_type) in failures.items():
        event = events[request_id]
        assert event["code"] == code and event["operation"] == operation, event
        assert event["auth_node"] == node and event["ca_type"] == ca_type and event["user"] == AUDITOR
        assert event["success"] is False and event["error"] == reasons[request_id]
        assert event["attempts"] == 0 and "revision" not in event and "changed" not in event
    assert events["bad-cert"]["public_key"] == public_key_hash(not_a_ca.public_key())
    assert events["disable"]["public_key"] == w.hashes[w.active]


def test_a_check_only_write_records_nothing(w: World) -> None:
    """`authctl create --check` (check_only) writes nothing and records nothing; the write after it
    records its one event (so the check's would have been recorded before it)."""
    entry = pb.CertificateOverride(certificate=w.certs[w.active])
    resource = pb.CertAuthorityOverride(cluster_name=CLUSTER, type="windows", certificate_overrides=[entry])
    check = pb.WriteOverrideRequest(resource=resource, mode=pb.UPSERT, check_only=True)
    assert not w.call(w.active, "WriteOverrideResource", check, "check").problems
    reply = w.call(w.active, "WriteOverrideResource", pb.WriteOverrideRequest(resource=resource), "write")
    [event] = override_events(w.cluster, 1)
    assert event["request_id"] == "write" and event["revision"] == reply.revision


def test_get_events_selects_by_kind_and_code_on_every_page(w: World) -> None:
    """A real session event and override writes, then 60 session events straight into etcd: `--kind`
    and `--code` (any case) select on the node; a page whose events are all unselected still leads to
    the next; `--limit` counts the selected; FollowEvents selects too; an unknown code is refused."""
    session = w.cluster.exercise("db_client", "alice")
    assert session["success"] is True, session
    with w.client(w.active) as client:
        start = client.call("ListEvents", pb.ListEventsRequest()).revision
    add = pb.CreateOverrideRequest(type="windows", certificate=w.certs[w.active], disabled=True)
    w.call(w.active, "CreateOverride", add, "add")
    enable = pb.UpdateOverrideRequest(type="windows", public_key=w.hashes[w.active], set_disabled=False)
    w.call(w.active, "UpdateOverride", enable, "enable")
    override_events(w.cluster, 2)
    now = time.time_ns()
    w.etcd.run(write_events(w.etcd.store, CLUSTER, [(now + i, event_at(now + i)) for i in range(60)]))

    assert [e["request_id"] for e in listed(w.cluster, "--kind", "override")] == ["add", "enable"]
    sessions = listed(w.cluster, "--kind", "session")
    assert len(sessions) == 61 and sessions[0]["sid"] == session["sid"]
    assert all(e["event"] in ("db.session.start", "windows.desktop.session.start") for e in sessions)
    for code in ("TCO02I", "tco02i"):
        assert [e["request_id"] for e in listed(w.cluster, "--code", code)] == ["add", "enable"]
    assert [e["request_id"] for e in listed(w.cluster, "--kind", "override", "--limit", "1")] == ["enable"]
    assert listed(w.cluster, "--code", "TDB00I", "--limit", "2") == sessions[-2:]
    assert listed(w.cluster, "--kind", "session", "--code", "TCO02I") == []

    with w.client(w.active) as client:  # pages of 10: the override events are in the first
        request = pb.ListEventsRequest(page_size=10, kind="override")
        pages = []
        while True:
            reply = client.call("ListEvents", request)
            pages.append([json.loads(e)["request_id"] for e in reply.events])
            if not reply.next:
                break
            after, revision = reply.next, reply.revision
            request = pb.ListEventsRequest(after=after, revision=revision, page_size=10, kind="override")
        assert pages[0] == ["add", "enable"] and len(pages) == 7 and not any(pages[1:])
        with pytest.raises(
            ValidationError, match=r"^kind: unknown event kind 'sessions' \(known: session, override\)"
        ):
            client.call("ListEvents", pb.ListEventsRequest(kind="sessions"))
        follow = pb.FollowEventsRequest(after_revision=start, kind="override")
        for reply in client.stream("FollowEvents", follow):  # leaving the loop cancels the stream
            assert json.loads(reply.events[0])["request_id"] == "add"
            break

    refused = w.cluster.authctl("get", "events", "--code", "TCO09I")
    assert refused.exit_code != 0
    assert (
        "code: unknown event code 'TCO09I' (known: TDP00I, TDP00W, TDB00I, TDB00W, TCO01I" in refused.stderr
    )
    wrong_kind = w.cluster.authctl("get", "events", "--kind", "sessions")
    assert wrong_kind.exit_code != 0 and "'sessions' is not one of 'session', 'override'" in wrong_kind.stderr


def test_a_write_whose_event_cannot_be_recorded_still_succeeds(w: World) -> None:
    """etcd's RBAC refuses the nodes the events prefix: the write succeeds as usual, its event is not
    recorded, and the node's log says so; with the permission back, events are recorded again."""
    role = cluster_role(CLUSTER)
    prefix = events_prefix(CLUSTER).encode()
    permission = rpc.Permission(
        permType=rpc.Permission.READWRITE, key=prefix, range_end=prefix_range_end(prefix)
    )
    log = ClusterLayout(w.cluster.directory).node(w.active).log
    logged = len(log.read_text().splitlines())
    revoke = rpc.AuthRoleRevokePermissionRequest(role=role, key=prefix, range_end=prefix_range_end(prefix))
    w.etcd.run(w.etcd.store.auth("RoleRevokePermission", revoke))
    try:
        add = pb.CreateOverrideRequest(type="windows", certificate=w.certs[w.active])
        reply = w.call(w.active, "CreateOverride", add, "unrecorded")
        assert reply.changed and reply.request_id == "unrecorded"
        deadline = time.monotonic() + EVENT_WAIT
        while not any("not recorded" in line for line in log.read_text().splitlines()[logged:]):
            assert time.monotonic() < deadline, "the node logged nothing about the event it could not record"
            time.sleep(0.05)
        [line] = [line for line in log.read_text().splitlines()[logged:] if "not recorded" in line]
        assert "TCO02I" in line and "WARNING" in line
    finally:
        grant = rpc.AuthRoleGrantPermissionRequest(name=role, perm=permission)
        w.etcd.run(w.etcd.store.auth("RoleGrantPermission", grant))
    assert listed(w.cluster, "--kind", "override") == []
    remove = pb.DeleteOverrideRequest(type="windows", public_key=w.hashes[w.active], force=True)
    w.call(w.active, "DeleteOverride", remove, "recorded")
    assert [e["request_id"] for e in override_events(w.cluster, 1)] == ["recorded"]
