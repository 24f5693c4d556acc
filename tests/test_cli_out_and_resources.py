"""authctl's --out PREFIX and resource arguments, as a newcomer meets them: an existing folder means
"inside it", `get cas` lists every CA type, a refused resource is told what the command does take, and a
too-long --user is refused for its length. Driven through authctl against a real 1-node cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.cli.authctl import cli
from authsim.cluster.cli.runner import CliResult
from authsim.cluster.resources.ca_types import CA_TYPES


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("outres") / "c", nodes=1) as running:
        yield running


def ok(cluster: LocalCluster, *args: str) -> CliResult:
    result = cluster.authctl(*args)
    assert result.exit_code == 0, (args, result.stderr)
    return result


def refused(cluster: LocalCluster, *args: str) -> str:
    """The one-line error of `authctl ARGS`, which must fail."""
    result = cluster.authctl(*args)
    assert result.exit_code != 0, (args, result.stdout)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
def test_out_an_existing_folder_means_inside_it(cluster: LocalCluster, tmp_path: Path, slash: str) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    out = f"{folder}{slash}"
    ok(cluster, "auth", "create-override-csr", "--type=windows", "--out", out)
    ok(cluster, "auth", "export", "--type=windows", "--out", out)
    ok(cluster, "auth", "sign", "--type=db_client", "--user=alice", "--out", out)
    ok(cluster, "auth", "sign", "--type=db_client", "--user=bob", "--user=carol", "--out", out)
    assert names(tmp_path) == ["out"]  # nothing beside the folder
    files = names(folder)
    windows = [n for n in files if n.startswith("windows-")]  # one key: its CSR and its export
    assert len(windows) == 2 and len([n for n in windows if n.endswith("-csr.pem")]) == 1
    for user in ("alice", "bob", "carol"):
        assert {f"{user}{s}" for s in (".key", ".crt", ".chain.pem", ".json")} <= set(files)


def test_out_not_a_folder_stays_a_prefix(cluster: LocalCluster, tmp_path: Path) -> None:
    ok(cluster, "auth", "create-override-csr", "--type=windows", "--out", f"{tmp_path}/node1-")
    ok(cluster, "auth", "sign", "--type=db_client", "--user=alice", "--out", f"{tmp_path}/cred")
    files = names(tmp_path)
    assert [n for n in files if n.startswith("node1-windows-") and n.endswith("-csr.pem")]
    assert "cred.crt" in files and "cred.key" in files


def _out_options(group: click.Group, path: str = "authctl") -> dict[str, click.Parameter]:
    found: dict[str, click.Parameter] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= _out_options(command, f"{path} {name}")
        found |= {f"{path} {name}": p for p in command.params if p.name == "out"}
    return found


def test_every_out_prefix_option_follows_the_folder_rule() -> None:
    """One rule for every PREFIX option: the callback that turns an existing folder into FOLDER/."""
    options = _out_options(cli)
    assert set(options) == {
        "authctl auth create-override-csr",
        "authctl auth sign",
        "authctl auth export",
        "authctl auth crl",
    }
    callbacks = {option.callback for option in options.values()}
    assert len(callbacks) == 1 and None not in callbacks
    for command, option in options.items():
        assert "an existing folder" in (getattr(option, "help", "") or ""), command


def test_get_cas_without_a_type_lists_every_ca_type(cluster: LocalCluster) -> None:
    documents = list(yaml.safe_load_all(ok(cluster, "get", "cas").stdout))
    assert [d["sub_kind"] for d in documents] == list(CA_TYPES)
    as_json = json.loads(ok(cluster, "get", "cas", "--format", "json").stdout)
    assert as_json == documents
    single = json.loads(ok(cluster, "get", "cas/windows", "--format", "json").stdout)
    assert single == documents[0]  # with TYPE: the one document, as before
    text = ok(cluster, "get", "cas", "--format", "text").stdout
    assert all(f"cert_authority {t}  cluster mycluster" in text for t in CA_TYPES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("edit", "cas/windows"), "resource: `authctl edit` takes ca_overrides/TYPE"),
        (("rm", "events"), "resource: `authctl rm` takes ca_overrides/TYPE, or cas/TYPE of a stored CA"),
        (("rm", "cas"), "resource: `authctl rm` takes ca_overrides/TYPE, or cas/TYPE of a stored CA"),
        (("get", "widgets"), "resource: `authctl get` takes cas[/TYPE], ca_overrides[/TYPE] or events"),
    ],
)
def test_a_resource_a_command_does_not_take_is_refused_saying_what_it_takes(
    cluster: LocalCluster, args: tuple[str, ...], message: str
) -> None:
    said = refused(cluster, *args)
    assert message in said and f"not '{args[1]}'" in said
    assert "known:" not in said  # no list of resources the command then refuses


def test_a_user_too_long_is_refused_for_its_length(cluster: LocalCluster, tmp_path: Path) -> None:
    """300 letters break the length rule, not the file-name characters: the length is what is said."""
    long = "a" * 300
    length = "user: at most 64 bytes of UTF-8 (a certificate CN), got 300 bytes"
    for users in ([long], [long, "bob"]):
        for out in (str(tmp_path / "cred"), str(tmp_path)):
            said = refused(
                cluster, "auth", "sign", "--type=db_client", *[f"--user={u}" for u in users], "--out", out
            )
            assert length in said and "letters, digits" not in said, said
    assert names(tmp_path) == []
    said = refused(cluster, "auth", "sign", "--type=db_client", "--user=a/b", "--out", str(tmp_path))
    assert "--user 'a/b': it becomes part of a file name" in said
