"""Nodes that cannot touch their token files (issue 16): `hsm="process"` started as root runs each node
as its own user (authsim-<node>) and each HSM process as authsim-hsm, accepting only its node's uid.
Checked as an attacker would: the node user cannot open token files, other uids cannot use the HSM's
socket (refused by the file's mode, or closed by p11-kit's uid check), the node still signs, and
`down` stops every process."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import hsm_users, processes
from authsim.cluster.local.hsm_process import hsm_marker
from authsim.hsm import P11_KIT_CLIENT_MODULE
from tests.attacker import passable_dir

# Opens the token through the HSM socket (P11_KIT_SERVER_ADDRESS) with the PIN on stdin and signs.
SIGN = """
import sys, pkcs11
from pkcs11 import KeyType, Mechanism
token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
with token.open(user_pin=sys.stdin.read().strip()) as session:
    public, private = session.generate_keypair(KeyType.RSA, 2048, store=False)
    print(len(private.sign(b"x", mechanism=Mechanism.SHA256_RSA_PKCS)))
"""


@dataclass
class World:
    cluster: LocalCluster
    pids: list[int]  # every node's and HSM process's PID, for the `down` check


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with passable_dir() as tmp, local_cluster(tmp / "c", nodes=2, hsm="process") as cluster:
        pids = [p for n in cluster.state.nodes for p in (n.pid, n.hsm_pid) if p is not None]
        yield World(cluster, pids)


def _as(user: str, argv: list[str], env: dict[str, str] | None = None, stdin: str = "") -> str:
    """Run `argv` as `user` (setpriv: no fork of this process); its stdout and stderr."""
    entry = pwd.getpwnam(user)
    cmd = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--", *argv]
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=30, check=False)
    return done.stdout + done.stderr


def _uid(pid: int | None) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


def _sign_through(cluster: LocalCluster, user: str, node: str) -> str:
    """`user` opening `node`'s token through its HSM socket, with its PIN, and signing."""
    layout = ClusterLayout(cluster.directory).node(node)
    env = {"PATH": "/usr/bin:/bin", "P11_KIT_SERVER_ADDRESS": f"unix:path={layout.hsm_socket}"}

    argv = [sys.executable, "-c", SIGN, P11_KIT_CLIENT_MODULE, f"authsim-{node}"]
    return _as(user, argv, env, layout.pin.read_text())


def test_each_node_runs_as_its_own_user_and_each_hsm_as_the_hsm_user(world: World) -> None:
    for entry in world.cluster.state.nodes:
        assert entry.user == f"authsim-{entry.name}"
        assert _uid(entry.pid) == pwd.getpwnam(entry.user).pw_uid
        assert _uid(entry.hsm_pid) == pwd.getpwnam(hsm_users.HSM_USER).pw_uid


def test_the_node_user_cannot_open_its_token_files(world: World) -> None:
    layout = ClusterLayout(world.cluster.directory).node("node1")
    token_files = [p for p in layout.tokens.rglob("*") if p.is_file()]
    assert token_files  # SoftHSM's object files: the keys, wrapped by the PIN
    said = _as("authsim-node1", ["cat", str(token_files[0])])
    assert "Permission denied" in said
    assert "Permission denied" in _as("authsim-node1", ["ls", str(layout.tokens)])
    assert "Permission denied" in _as("authsim-node1", ["cat", str(layout.so_pin)])
    assert "Permission denied" in _as("authsim-node2", ["ls", str(layout.directory)])


def test_the_node_user_signs_through_its_hsm_and_no_other_user_can(world: World) -> None:
    assert _sign_through(world.cluster, "authsim-node1", "node1").strip() == "256"
    said = _sign_through(world.cluster, "authsim-node2", "node1")  # socket 0600, node1's
    assert "256" not in said and "NoSuchToken" in said
    said = _sign_through(world.cluster, "nobody", "node1")  # cannot pass the socket folder
    assert "256" not in said and ("NoSuchToken" in said or "Permission denied" in said)


def test_the_hsm_closes_a_connection_from_another_uid(world: World) -> None:
    """Root passes the socket's mode; p11-kit's uid check closes its connection before any reply."""
    layout = ClusterLayout(world.cluster.directory).node("node1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(layout.hsm_socket))
        try:
            sock.sendall(b"\0")
            answer = sock.recv(64)
        except (BrokenPipeError, ConnectionResetError):  # closed before the byte went out
            answer = b""
    assert answer == b""
    expected = pwd.getpwnam("authsim-node1").pw_uid
    assert f"connecting uid (0) doesn't match expected ({expected})" in layout.hsm_log.read_text()


def test_the_node_still_signs(world: World) -> None:
    cluster = world.cluster
    ca = json.loads(cluster.authctl("get", "cas/windows", "--format", "json").stdout)
    active_host = ca["spec"]["active_keys"]["tls"][0]["key"]["host_id"]
    active = next(n for n in cluster.node_names if cluster.host_id(n) == active_host)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with cluster.client(active) as client:
        reply = client.call("Sign", pb.SignRequest(type="windows", user="alice", public_key=der))
    assert "BEGIN CERTIFICATE" in reply.certificate


def test_down_stops_every_node_and_hsm_process(world: World) -> None:
    state = world.cluster.state
    markers = [hsm_marker(world.cluster.directory, n.name) for n in state.nodes]
    groups = [os.getpgid(n.hsm_pid) for n in state.nodes if n.hsm_pid]
    world.cluster.stop()
    assert not any(processes.is_running(pid, "") for pid in world.pids)
    left = subprocess.run(["pgrep", "-g", ",".join(map(str, groups))], capture_output=True, text=True)
    assert left.stdout == ""  # no p11-kit-remote left of any HSM
    for marker in markers:
        assert subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout == b""
