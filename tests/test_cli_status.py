"""The CLIs for scripts and newcomers: `status` in text, JSON and YAML with an exit status that says
whether every part is healthy; `up` failing fast on etcd and on a busy --base-port; refusals naming
the command to run on the node that holds a key; shell completion; an example in every --help."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.cli.authctl import cli as authctl_cli
from authsim.cluster.cli.authsim import cli as authsim_cli
from authsim.cluster.errors import exact_node_commands
from authsim.cluster.local import launcher, processes
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.ports import free_port
from authsim.cluster.local.state import ClusterState, EtcdEntry, NodeEntry
from authsim.cluster.store import EtcdTLS

BIN = Path(sys.executable).parent


def run(
    program: str, *args: str, columns: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    if columns is not None:
        environment["COLUMNS"] = str(columns)
    return subprocess.run(
        [str(BIN / program), *args], capture_output=True, text=True, timeout=120, env=environment, check=False
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("status") / "c", nodes=2) as running:
        yield running


def test_a_healthy_cluster_exits_0_and_shows_etcd_nodes_and_targets(cluster: LocalCluster) -> None:
    shown = run("authsim", "status", "--dir", str(cluster.directory), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["healthy"] is True and report["unhealthy"] == []
    assert report["etcd"]["health"] == "SERVING" and report["etcd"]["embedded"] is True
    assert [n["health"] for n in report["nodes"]] == ["SERVING", "SERVING"]
    assert {t["name"] for t in report["targets"]} >= {"desktop target", "db target"}
    as_yaml = run("authsim", "status", "--dir", str(cluster.directory), "--format", "yaml")
    assert as_yaml.returncode == 0 and yaml.safe_load(as_yaml.stdout)["nodes"] == report["nodes"]
    node = run("authctl", "--dir", str(cluster.directory), "status", "--format", "json")
    assert node.returncode == 0, node.stderr
    seen = json.loads(node.stdout)
    assert seen["healthy"] is True and seen["etcd"]["health"] == "SERVING"
    assert [n["name"] for n in seen["nodes"]] == ["node1", "node2"]


def test_the_text_table_fits_80_columns_with_every_address_whole(cluster: LocalCluster) -> None:
    state = cluster.state
    addresses = [n.address for n in state.nodes] + state.etcd.endpoints
    addresses += [t.address for t in state.targets.values()] + [s.address for s in state.servers.values()]
    directory = str(cluster.directory)
    for program, argv in (
        ("authsim", ["status", "--dir", directory]),
        ("authctl", ["--dir", directory, "status"]),
    ):
        shown = run(program, *argv, columns=80)
        assert shown.returncode == 0, shown.stderr
        table_lines = [line for line in shown.stdout.splitlines() if line[:1] in "┏┃┡│└"]
        assert table_lines and all(len(line) <= 80 for line in table_lines), shown.stdout
        lines = shown.stdout.splitlines()
        for address in addresses:
            assert any(address in line for line in lines), f"{program}: {address} not whole:\n{shown.stdout}"


def test_a_refusal_naming_the_holder_gives_the_exact_command_to_run_there(cluster: LocalCluster) -> None:
    keys = json.loads(cluster.authctl("status", "--format", "json", node="node2").stdout)["keys"]
    key = next(k["public_key_hash"] for k in keys if k["ca_type"] == "windows")
    args = ["auth", "create-override-csr", "--type", "windows", "--public-key", key[:16], "--local-only"]
    refused = run("authctl", "--dir", str(cluster.directory), "--node", "node1", *args)
    assert refused.returncode == 1
    expected = f"`authctl --node node2 --dir {cluster.directory} {' '.join(args)}`"
    assert "run create-override-csr on that node (" + expected + ")" in refused.stderr, refused.stderr


def test_a_stopped_node_makes_status_exit_1_and_says_which(cluster: LocalCluster) -> None:
    node2 = cluster.state.node("node2")
    assert processes.stop(node2.pid, launcher.node_marker(cluster.directory, "node2"))
    try:
        shown = run("authsim", "status", "--dir", str(cluster.directory), "--format", "json")
        assert shown.returncode == 1, shown.stderr
        report = json.loads(shown.stdout)
        assert report["healthy"] is False and report["unhealthy"] == ["node2 STOPPED"]
        assert [(n["name"], n["health"]) for n in report["nodes"]] == [
            ("node1", "SERVING"),
            ("node2", "STOPPED"),
        ]
        text = run("authsim", "status", "--dir", str(cluster.directory))
        assert text.returncode == 1 and "unhealthy: node2 STOPPED" in text.stdout
        node = run("authctl", "--dir", str(cluster.directory), "status", "--format", "json")
        assert node.returncode == 1
        assert json.loads(node.stdout)["unhealthy"] == ["node2 UNREACHABLE"]
    finally:
        launcher.up(cluster.directory, launcher.UpOptions())


def test_status_without_a_cluster_exits_2(tmp_path: Path) -> None:
    directory = str(tmp_path)
    for program, argv in (
        ("authsim", ["status", "--dir", directory]),
        ("authctl", ["--dir", directory, "status"]),
    ):
        shown = run(program, *argv)
        assert shown.returncode == 2, (program, shown.stderr)
        assert shown.stderr.startswith(f"error: no cluster in {tmp_path}"), shown.stderr


def test_up_on_an_etcd_that_is_down_fails_within_5_s_naming_it(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    refused = run("authsim", "up", "--dir", str(tmp_path / "c"), "--etcd", endpoint, "--detach")
    assert time.monotonic() - started < 5
    assert refused.returncode == 1
    assert f"etcd unreachable at {endpoint}: connection refused (nothing listens there)" in refused.stderr
    assert not (tmp_path / "c").exists()


def test_up_on_a_tls_etcd_without_the_tls_options_says_so_within_5_s(
    tmp_path: Path, etcd_server: EtcdServer, etcd_tls: EtcdTLS
) -> None:
    started = time.monotonic()
    refused = run("authsim", "up", "--dir", str(tmp_path / "c"), "--etcd", etcd_server.endpoint, "--detach")
    assert time.monotonic() - started < 5
    assert refused.returncode == 1
    assert f"etcd at {etcd_server.endpoint}: it serves TLS" in refused.stderr, refused.stderr
    assert "--etcd-cacert, --etcd-cert and --etcd-key" in refused.stderr
    foreign = EtcdTLS(etcd_tls.cert, etcd_tls.cert, etcd_tls.key)  # its own certificate as the CA: not etcd's
    wrong = run(
        "authsim", "up", "--dir", str(tmp_path / "c"), "--etcd", etcd_server.endpoint, "--detach",
        "--etcd-cacert", str(foreign.cacert),
        "--etcd-cert", str(foreign.cert), "--etcd-key", str(foreign.key),
    )  # fmt: skip
    assert wrong.returncode == 1 and "etcd's certificate is not trusted" in wrong.stderr, wrong.stderr


def test_a_busy_base_port_is_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = run("authsim", "up", "--dir", str(tmp_path / "c"), "--base-port", str(port), "--detach")
    assert refused.returncode == 1
    assert f"--base-port {port}: port {port} (for node1) is in use" in refused.stderr, refused.stderr
    assert not ClusterState.path(tmp_path / "c").exists()


def complete(program: str, words: str, **env: str) -> list[str]:
    """What click's completion protocol (bash) offers for the last word of `words`."""
    line = words.split(" ")
    protocol = {f"_{program.upper()}_COMPLETE": "bash_complete", "COMP_WORDS": words}
    shown = run(program, env={**protocol, "COMP_CWORD": str(len(line) - 1), **env})
    assert shown.returncode == 0, shown.stderr
    return [item.partition(",")[2] for item in shown.stdout.splitlines() if item]


def test_completion_offers_node_names_ca_types_and_resources(tmp_path: Path) -> None:
    state = ClusterState("c", EtcdEntry(["127.0.0.1:2379"], embedded=True))
    state.nodes = [NodeEntry("node1", "127.0.0.1:1"), NodeEntry("node7", "127.0.0.1:2")]
    state.save(tmp_path)
    assert complete("authctl", f"authctl --dir {tmp_path} --node ") == ["node1", "node7"]
    assert complete("authctl", "authctl --node n", AUTHSIM_DIR=str(tmp_path)) == ["node1", "node7"]
    assert complete("authsim", f"authsim hsm stop --dir {tmp_path} node") == ["node1", "node7"]
    assert complete("authctl", "authctl auth sign --type ") == ["windows", "db_client"]
    assert complete("authctl", "authctl get ca") == [
        "cas/windows", "cas/db_client", "ca_overrides", "ca_overrides/windows", "ca_overrides/db_client",
    ]  # fmt: skip
    assert complete("authctl", "authctl edit ") == ["ca_overrides/windows", "ca_overrides/db_client"]
    assert complete("authctl", "authctl --node x", AUTHSIM_DIR=str(tmp_path / "none")) == []


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_every_command_has_an_example_and_every_option_a_finished_help_line() -> None:
    for root, name in ((authsim_cli, "authsim"), (authctl_cli, "authctl")):
        for path, command in _commands(root, name):
            with click.Context(command, info_name=path) as ctx:
                shown = command.get_help(ctx)
            assert "Example" in shown, f"`{path} --help` has no example"
            for param in command.params:
                if isinstance(param, click.Option) and param.name not in ("help", "version"):
                    assert param.help, f"`{path} {param.opts[0]}` has no help"
                    assert not param.help.rstrip().endswith(("'s", " the", " that")), (path, param.help)


def test_exact_node_commands_leave_out_the_node_asked_before() -> None:
    message = "key held by node node2: run this command on that node (`authctl --node node2 …`)"
    args = ["--dir", "/c d", "--node", "node1", "auth", "sign", "--type", "windows", "--auth-server=x:1"]
    assert exact_node_commands(message, args) == (
        "key held by node node2: run this command on that node "
        "(`authctl --node node2 --dir '/c d' auth sign --type windows`)"
    )
