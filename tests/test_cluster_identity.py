"""One cluster per identity: dirs on one etcd never merge silently; purge and `forget` clear a cluster's
keys from etcd; cluster names follow a DNS-label rule. Real etcd, real node processes, the real CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from authsim.auth_node.config import NodeConfig
from authsim.cluster.api.local_cluster import LocalCluster
from authsim.cluster.cli import authsim as authsim_cli
from authsim.cluster.cli.runner import CliResult, run_in_process
from authsim.cluster.errors import ClusterError
from authsim.cluster.local import launcher
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.state import ClusterState
from authsim.cluster.store import EtcdStore, EtcdTLS
from authsim.cluster.store.identity import ClusterIdentity, create_cluster
from authsim.cluster.store.keys import cluster_prefix, events_prefix, identity_key, node_key

RULE = "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"


def authsim(*args: str) -> CliResult:
    return run_in_process(authsim_cli.main, args)


def etcd_count(etcd: list[str], tls: EtcdTLS | None, name: str) -> int:
    """Keys of cluster `name` in etcd: resources, node and target records, identity, events."""

    async def count() -> int:
        async with EtcdStore(etcd, tls=tls) as store:
            return sum([await store.count_prefix(p) for p in (cluster_prefix(name), events_prefix(name))])

    return asyncio.run(count())


def stored_identity(etcd: list[str], tls: EtcdTLS | None, name: str) -> dict[str, str]:
    async def read() -> dict[str, str]:
        async with EtcdStore(etcd, tls=tls) as store:
            found = await store.get(identity_key(name))
        assert found is not None
        data: dict[str, str] = json.loads(found.value)
        return data

    return asyncio.run(read())


@pytest.fixture
def name(etcd_server: EtcdServer, etcd_tls: EtcdTLS) -> Iterator[str]:
    """A cluster name no other test uses; its keys are deleted from the session etcd afterwards."""
    cluster_name = f"idt-{uuid.uuid4().hex[:12]}"
    yield cluster_name

    async def wipe() -> None:
        async with EtcdStore([etcd_server.endpoint], tls=etcd_tls) as store:
            for prefix in (cluster_prefix(cluster_name), events_prefix(cluster_name)):
                await store.delete_prefix(prefix)

    asyncio.run(wipe())


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Cluster dirs under tmp_path; every process a cluster in one of them runs is stopped afterwards."""
    made: list[Path] = []

    def make(label: str) -> Path:
        made.append(tmp_path / label)
        return made[-1]

    yield make
    for directory in made:
        launcher.down(directory)  # by PID; nothing when already stopped or purged


@pytest.fixture
def etcd_args(etcd_server: EtcdServer, etcd_tls: EtcdTLS) -> list[str]:
    """`--etcd` and the TLS options that reach the session etcd."""
    return [
        *("--etcd", etcd_server.endpoint),
        *("--etcd-cacert", str(etcd_tls.cacert), "--etcd-cert", str(etcd_tls.cert)),
        *("--etcd-key", str(etcd_tls.key)),
    ]


def up(directory: Path, name: str, etcd_args: list[str], *more: str) -> CliResult:
    return authsim(
        "up", "--dir", str(directory), "--nodes", "1", "--cluster-name", name, *etcd_args, *more, "--detach"
    )


def started(directory: Path, name: str, etcd_args: list[str], *more: str) -> ClusterState:
    done = up(directory, name, etcd_args, *more)
    assert done.exit_code == 0, done.stderr
    return ClusterState.load(directory)


def test_a_second_dir_on_the_same_etcd_is_refused_naming_the_first_cluster(
    name: str, cluster_dir: Callable[[str], Path], etcd_args: list[str]
) -> None:
    first_dir, second_dir = cluster_dir("first"), cluster_dir("second")
    first = started(first_dir, name, etcd_args)
    assert first.cluster_id is not None and str(uuid.UUID(first.cluster_id)) == first.cluster_id

    done = up(second_dir, name, etcd_args)

    assert done.exit_code == 1 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: etcd at {etcd_args[1]} already holds cluster '{name}' ")
    assert f"(id {first.cluster_id}, made by '{first_dir}' at " in done.stderr
    assert "`authsim up --join` adds this dir's nodes to it" in done.stderr
    assert "another --cluster-name makes a cluster of its own" in done.stderr
    assert not second_dir.exists()  # refused before anything was written


def test_the_cluster_id_is_in_the_dir_and_in_etcd_with_the_dir_that_made_it(
    name: str, cluster_dir: Callable[[str], Path], etcd_args: list[str], etcd_tls: EtcdTLS
) -> None:
    directory = cluster_dir("c")
    state = started(directory, name, etcd_args)

    assert yaml.safe_load(ClusterState.path(directory).read_text())["cluster_id"] == state.cluster_id
    stored = stored_identity([etcd_args[1]], etcd_tls, name)
    assert (stored["cluster_id"], stored["directory"]) == (state.cluster_id, str(directory))
    assert stored["created"].endswith("+00:00")
    status = authsim("status", "--dir", str(directory))
    assert f"cluster {name}  id {state.cluster_id}  etcd" in status.stdout


def test_the_embedded_etcd_keeps_the_cluster_id_too(name: str, cluster_dir: Callable[[str], Path]) -> None:
    directory = cluster_dir("embedded")
    state = started(directory, name, [])
    assert state.cluster_id is not None
    # as the admin (etcd root); the embedded etcd has RBAC on
    assert stored_identity(state.etcd.endpoints, state.etcd.tls, name)["cluster_id"] == state.cluster_id
    launcher.down(directory)
    assert started(directory, name, []).cluster_id == state.cluster_id  # a restart keeps it


def test_join_takes_the_stored_id_and_leaves_the_first_dirs_targets(
    name: str, cluster_dir: Callable[[str], Path], etcd_args: list[str], etcd_tls: EtcdTLS
) -> None:
    first_dir, joined_dir = cluster_dir("first"), cluster_dir("joined")
    first = started(first_dir, name, etcd_args)

    joined = started(joined_dir, name, etcd_args, "--join")

    assert joined.cluster_id == first.cluster_id
    assert joined.targets == {}  # the cluster's targets stay the first dir's
    host = LocalCluster(joined_dir).host_id("node1")
    ca = json.loads(LocalCluster(first_dir).authctl("get", "cas/windows", "--format", "json").stdout)
    keys = ca["spec"]["active_keys"]["tls"] + ca["spec"]["additional_trusted_keys"]["tls"]
    assert host in [k["key"]["host_id"] for k in keys]
    assert LocalCluster(first_dir).exercise("db_client", "alice")["success"] is True
    launcher.down(joined_dir)
    assert started(joined_dir, name, etcd_args).cluster_id == first.cluster_id  # no --join needed again
    keys = etcd_count([etcd_args[1]], etcd_tls, name)
    refused = authsim("down", "--dir", str(joined_dir), "--purge", "--purge-etcd")
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"error: {joined_dir} joined cluster '{name}', made by '{first_dir}': --purge-etcd deletes only a "
        "cluster this dir made (`authsim forget` deletes any, once no dir runs it)\n"
    )
    assert joined_dir.exists() and etcd_count([etcd_args[1]], etcd_tls, name) == keys


def test_join_needs_a_cluster_to_join(
    name: str, cluster_dir: Callable[[str], Path], etcd_args: list[str]
) -> None:
    done = up(cluster_dir("lonely"), name, etcd_args, "--join")
    assert done.exit_code == 1
    assert (
        done.stderr == f"error: --join: etcd at {etcd_args[1]} holds no cluster '{name}' with an id to join\n"
    )
    done = up(cluster_dir("embedded"), name, [], "--join")
    assert done.exit_code == 1 and "--join joins a cluster on an existing etcd" in done.stderr


def test_purge_etcd_leaves_no_key_and_a_fresh_up_gets_a_new_id_and_no_stale_nodes(
    name: str, cluster_dir: Callable[[str], Path], etcd_args: list[str], etcd_tls: EtcdTLS
) -> None:
    etcd = [etcd_args[1]]
    old_dir = cluster_dir("old")
    old = started(old_dir, name, etcd_args)
    old_host = LocalCluster(old_dir).host_id("node1")
    assert LocalCluster(old_dir).exercise("db_client", "alice")["success"] is True  # an event, too
    keys = etcd_count(etcd, etcd_tls, name)

    done = authsim("down", "--dir", str(old_dir), "--purge", "--purge-etcd")

    assert done.exit_code == 0, done.stderr
    assert f"deleted {keys} keys of the cluster from etcd" in done.stdout
    assert not old_dir.exists() and etcd_count(etcd, etcd_tls, name) == 0

    new_dir = cluster_dir("new")
    new = started(new_dir, name, etcd_args)
    assert new.cluster_id not in (None, old.cluster_id)
    ca = json.loads(LocalCluster(new_dir).authctl("get", "cas/windows", "--format", "json").stdout)
    keys_of = [
        k["key"]["host_id"]
        for k in ca["spec"]["active_keys"]["tls"] + ca["spec"]["additional_trusted_keys"]["tls"]
    ]
    assert keys_of == [LocalCluster(new_dir).host_id("node1")]
    assert etcd_count(etcd, etcd_tls, name) > 0
    assert stored_identity(etcd, etcd_tls, name)["cluster_id"] == new.cluster_id
    assert old_host not in keys_of


def test_purge_without_purge_etcd_says_the_data_stays_and_forget_removes_it(
    name: str, cluster_dir: Callable[[str], Path], etcd_args: list[str], etcd_tls: EtcdTLS
) -> None:
    etcd = [etcd_args[1]]
    directory = cluster_dir("gone")
    state = started(directory, name, etcd_args)
    keys = etcd_count(etcd, etcd_tls, name)

    done = authsim("down", "--dir", str(directory), "--purge")

    assert done.exit_code == 0, done.stderr
    command = (
        f"authsim forget --etcd {etcd[0]} --cluster-name {name} --cluster-id {state.cluster_id} "
        f"--etcd-cacert {etcd_tls.cacert} --etcd-cert {etcd_tls.cert} --etcd-key {etcd_tls.key}"
    )
    assert f"the cluster's data stays in etcd at {etcd[0]}; remove it with: {command}\n" in done.stdout
    assert not directory.exists() and etcd_count(etcd, etcd_tls, name) == keys
    refused = up(cluster_dir("next"), name, etcd_args)  # the name is still taken
    assert refused.exit_code == 1 and f"(id {state.cluster_id}, made by '{directory}'" in refused.stderr

    forget = ["forget", "--cluster-name", name, *etcd_args]
    shown = authsim(*forget)  # no id given: shows what it would delete, deletes nothing
    assert shown.exit_code == 1 and shown.stderr.count("\n") == 1
    assert f"holds cluster '{name}' id {state.cluster_id} (made by '{directory}' at " in shown.stderr
    assert (
        f"{keys} keys; nothing deleted: stop its nodes, then give --cluster-id {state.cluster_id}"
        in shown.stderr
    )
    other_id = str(uuid.uuid4())
    wrong = authsim(*forget, "--cluster-id", other_id)
    assert wrong.exit_code == 1 and f", not id {other_id}: nothing deleted" in wrong.stderr
    assert etcd_count(etcd, etcd_tls, name) == keys

    deleted = authsim(*forget, "--cluster-id", str(state.cluster_id))

    assert deleted.exit_code == 0, deleted.stderr
    assert deleted.stdout == f"deleted {keys} keys of cluster {name} from etcd at {etcd[0]}\n"
    assert etcd_count(etcd, etcd_tls, name) == 0
    again = authsim(*forget, "--cluster-id", str(state.cluster_id))
    assert again.exit_code == 0 and "holds no key of cluster" in again.stdout


def test_a_dir_whose_cluster_was_replaced_on_etcd_is_refused_naming_both_ids(
    name: str, cluster_dir: Callable[[str], Path], etcd_args: list[str]
) -> None:
    old_dir, new_dir = cluster_dir("old"), cluster_dir("new")
    old = started(old_dir, name, etcd_args)
    launcher.down(old_dir)
    assert (
        authsim("forget", "--cluster-name", name, *etcd_args, "--cluster-id", str(old.cluster_id)).exit_code
        == 0
    )
    new = started(new_dir, name, etcd_args)

    done = up(old_dir, name, etcd_args)

    assert done.exit_code == 1 and done.stderr.count("\n") == 1
    assert f"{old_dir} belongs to cluster '{name}' id {old.cluster_id}, but etcd at" in done.stderr
    assert f"holds cluster '{name}' id {new.cluster_id} (made by '{new_dir}' at " in done.stderr
    assert ClusterState.load(old_dir).cluster_id == old.cluster_id
    assert all(n.pid is None for n in ClusterState.load(old_dir).nodes)  # nothing started


async def test_of_concurrent_first_ups_exactly_one_makes_the_cluster(
    store: EtcdStore, key_prefix: str
) -> None:
    name = key_prefix.strip("/").replace("/", "-")
    try:
        ours = [ClusterIdentity.new(Path(f"/dir{i}")) for i in range(8)]
        outcomes = await asyncio.gather(*(create_cluster(store, name, identity) for identity in ours))
        winners = [identity for identity, taken in zip(ours, outcomes, strict=True) if taken is None]
        assert len(winners) == 1
        for taken in outcomes:
            assert taken is None or (taken.identity == winners[0] and taken.keys == 1)
    finally:
        await store.delete_prefix(cluster_prefix(name))


async def test_a_new_cluster_does_not_adopt_keys_left_without_an_id(
    store: EtcdStore, key_prefix: str
) -> None:
    name = key_prefix.strip("/").replace("/", "-")
    try:
        await store.create(node_key(name, "dead-host"), b'{"name": "node9", "address": "127.0.0.1:1"}')
        taken = await create_cluster(store, name, ClusterIdentity.new(Path("/fresh")))
        assert taken is not None and (taken.identity, taken.keys) == (None, 1)
        assert await store.get(identity_key(name)) is None
    finally:
        await store.delete_prefix(cluster_prefix(name))


@pytest.mark.parametrize("bad", ["my cluster/x", "MyCluster", "-a", "a-", "a" * 64, "", "a.b", "x\n"])
def test_cluster_names_outside_the_rule_are_refused_with_the_rule(bad: str, tmp_path: Path) -> None:
    shown = bad.replace("\n", "\\n")
    expected = f"error: cluster name '{shown}': {RULE}\n"
    done = authsim("up", "--dir", str(tmp_path / "c"), "--cluster-name", bad, "--detach")
    assert (done.exit_code, done.stderr) == (1, expected)
    assert not (tmp_path / "c").exists()
    pki = ["provision", "pki", "--dir", str(tmp_path / "pki"), "--nodes", "node1", "--cluster-name", bad]
    assert authsim(*pki).stderr == expected
    node = [
        "provision",
        "node",
        "--dir",
        str(tmp_path / "n"),
        "--pki",
        str(tmp_path / "pki"),
        "--name",
        "node1",
    ]
    assert authsim(*node, "--etcd", "127.0.0.1:2379", "--cluster-name", bad).stderr == expected
    assert not (tmp_path / "pki").exists() and not (tmp_path / "n").exists()
    forget = authsim("forget", "--etcd", "127.0.0.1:2379", "--cluster-name", bad, "--cluster-id", "none")
    assert forget.stderr == expected


def test_a_node_config_with_a_bad_cluster_name_is_refused(tmp_path: Path) -> None:
    config = NodeConfig(
        "node1", "my cluster/x", "host", "127.0.0.1:1", ("127.0.0.1:2",), tmp_path, "/lib.so", "t"
    )
    path = config.save()
    with pytest.raises(ClusterError) as refused:
        NodeConfig.load(path)
    assert str(refused.value) == f"node config {path}: cluster name 'my cluster/x': {RULE}"


@pytest.mark.parametrize("good", ["a", "0", "a" * 63, "my-cluster-2", "mycluster"])
def test_cluster_names_inside_the_rule_are_accepted(good: str, tmp_path: Path) -> None:
    config = NodeConfig("node1", good, "host", "127.0.0.1:1", ("127.0.0.1:2",), tmp_path, "/lib.so", "t")
    assert NodeConfig.load(config.save()).cluster_name == good
