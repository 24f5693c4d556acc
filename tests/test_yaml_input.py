"""`authctl create` input does what it says: a saved copy replaces only the revision it was read at,
whatever `authctl get ca_overrides` prints is accepted back (several documents, YAML or JSON), and
every encoding problem is one line naming UTF-8. Driven through authctl against a real cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.cli.runner import CliResult
from authsim.cluster.resources.yaml_codec import dump_yaml

Doc = dict[str, Any]


def document(ca_type: str, entries: list[Doc] | None = None, name: str = "mycluster") -> str:
    """An override as a user writes it: no metadata.revision."""
    spec = {"certificate_overrides": entries} if entries else {}
    metadata = {"name": name}
    return dump_yaml(
        {
            "kind": "cert_authority_override",
            "sub_kind": ca_type,
            "version": "v1",
            "metadata": metadata,
            "spec": spec,
        }
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("yamlin") / "c", nodes=1) as running:
        yield running


def authctl(cluster: LocalCluster, *args: str) -> CliResult:
    """`authctl ARGS`, which must succeed."""
    result = cluster.authctl(*args)
    assert result.exit_code == 0, (args, result.stderr)
    return result


def stored(cluster: LocalCluster, ca_type: str) -> Doc:
    data: Doc = json.loads(authctl(cluster, "get", f"ca_overrides/{ca_type}", "--format", "json").stdout)
    return data


def reset(cluster: LocalCluster, tmp_path: Path, *ca_types: str) -> None:
    """Each of `ca_types` an empty override, whatever was stored (a document without a revision)."""
    for ca_type in ca_types:
        path = tmp_path / f"empty-{ca_type}.yaml"
        path.write_text(document(ca_type))
        authctl(cluster, "create", "-f", str(path))


def stage_entry(cluster: LocalCluster, tmp_path: Path, ca_type: str) -> Doc:
    """Someone else's write: a disabled entry for the node's own key of `ca_type`, acknowledged."""
    keys = json.loads(authctl(cluster, "status", "--format", "json").stdout)["keys"]
    key_hash = next(k["public_key_hash"] for k in keys if k["ca_type"] == ca_type)
    path = tmp_path / f"staged-{ca_type}.yaml"
    entry = {"public_key": key_hash, "disabled": True}
    path.write_text(document(ca_type, [entry]))
    authctl(cluster, "create", "-f", str(path))
    staged = stored(cluster, ca_type)
    assert staged["spec"]["certificate_overrides"] == [entry]
    return staged


def saved(cluster: LocalCluster, path: Path, *args: str) -> Path:
    """What `authctl get ARGS` prints, saved in `path`."""
    path.write_text(authctl(cluster, "get", *args).stdout)
    return path


def test_create_f_of_a_saved_copy_replaces_only_the_revision_it_was_read_at(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    reset(cluster, tmp_path, "windows")
    copy = saved(cluster, tmp_path / "windows.yaml", "ca_overrides/windows")
    read_at = stored(cluster, "windows")["metadata"]["revision"]
    staged = stage_entry(cluster, tmp_path, "windows")  # acknowledged after the copy was read

    refused = cluster.authctl("create", "-f", str(copy))
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    revision = staged["metadata"]["revision"]
    assert refused.stderr == (
        f"error: revision mismatch: ca_overrides/windows is at revision {revision}, your copy is from "
        f"revision {read_at}: it changed meanwhile, work from the latest state "
        "(`authctl get ca_overrides/windows`); to write your copy over whatever is stored: "
        f"`authctl create {copy} -f --overwrite`\n"
    )
    assert stored(cluster, "windows") == staged
    checked = cluster.authctl("create", "-f", str(copy), "--check")
    assert checked.exit_code == 1 and checked.stdout.startswith("revision mismatch: ")
    assert checked.stderr == "error: cert_authority_override windows: 1 problem\n"

    plain = cluster.authctl("create", str(copy))  # without -f: a create, whatever the revision says
    assert plain.exit_code == 1 and "ca_overrides/windows already exists" in plain.stderr
    assert stored(cluster, "windows") == staged

    fresh = saved(cluster, tmp_path / "fresh.yaml", "ca_overrides/windows")
    updated = authctl(cluster, "create", "-f", str(fresh))
    assert updated.stdout.startswith("cert_authority_override windows updated (revision ")
    assert stored(cluster, "windows")["spec"] == staged["spec"]

    overwritten = authctl(cluster, "create", "-f", str(copy), "--overwrite")
    assert overwritten.stdout.startswith("cert_authority_override windows written (revision ")
    assert stored(cluster, "windows")["spec"] == {}

    usage = cluster.authctl("create", str(copy), "--overwrite")
    assert usage.exit_code == 2 and "--overwrite goes with -f" in usage.stderr


def test_create_f_of_a_copy_whose_resource_was_removed_is_refused_with_the_way_on(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    reset(cluster, tmp_path, "db_client")
    copy = saved(cluster, tmp_path / "db_client.yaml", "ca_overrides/db_client")
    authctl(cluster, "rm", "ca_overrides/db_client")
    refused = cluster.authctl("create", "-f", str(copy))
    assert refused.exit_code == 1
    assert refused.stderr == (
        "error: ca_overrides/db_client no longer exists: create it again; to write your copy over "
        f"whatever is stored: `authctl create {copy} -f --overwrite`\n"
    )
    created = authctl(cluster, "create", str(copy))  # a plain create does not look at the revision
    assert created.stdout.startswith("cert_authority_override db_client created (revision ")


@pytest.mark.parametrize(("fmt", "encoding"), [("yaml", "utf-8"), ("json", "utf-8"), ("yaml", "utf-16")])
def test_what_get_ca_overrides_prints_create_f_writes_back(
    cluster: LocalCluster, tmp_path: Path, fmt: str, encoding: str
) -> None:
    """Both overrides, as YAML documents, a JSON list, or saved by an editor as UTF-16 (with its BOM)."""
    reset(cluster, tmp_path, "windows", "db_client")
    every = tmp_path / f"all.{fmt}"
    every.write_bytes(authctl(cluster, "get", "ca_overrides", "--format", fmt).stdout.encode(encoding))
    written = authctl(cluster, "create", "-f", str(every))
    assert [line.rsplit(" (", 1)[0] for line in written.stdout.splitlines()] == [
        "cert_authority_override db_client updated",
        "cert_authority_override windows updated",
    ]
    one = saved(cluster, tmp_path / f"windows.{fmt}", "ca_overrides/windows", "--format", fmt)
    written = authctl(cluster, "create", "-f", str(one))
    assert written.stdout.startswith("cert_authority_override windows updated")


def test_several_documents_are_written_only_if_none_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    reset(cluster, tmp_path, "windows", "db_client")
    every = saved(cluster, tmp_path / "all.yaml", "ca_overrides")
    windows = stored(cluster, "windows")
    staged = stage_entry(cluster, tmp_path, "db_client")  # db_client changes after the copy was read

    refused = cluster.authctl("create", "-f", str(every))
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(
        f"error: {every}: nothing written, 1 of 2 documents refused: ca_overrides/db_client: "
        "revision mismatch: ca_overrides/db_client is at revision "
    )
    assert refused.stderr.endswith(f"(every problem: `authctl create {every} -f --check`)\n")
    assert stored(cluster, "windows") == windows and stored(cluster, "db_client") == staged

    checked = cluster.authctl("create", "-f", str(every), "--check")
    assert checked.exit_code == 1
    lines = checked.stdout.splitlines()
    assert lines[0].startswith("cert_authority_override db_client: revision mismatch: ")
    assert lines[1:] == ["cert_authority_override windows: no problems (nothing written)"]
    assert checked.stderr == f"error: {every}: 1 problem in 1 of 2 documents\n"

    both = authctl(cluster, "create", "-f", str(every), "--overwrite")
    assert len(both.stdout.splitlines()) == 2
    assert stored(cluster, "db_client")["spec"] == {}


def test_a_file_naming_a_ca_type_twice_is_refused_naming_the_documents(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    reset(cluster, tmp_path, "windows")
    before = stored(cluster, "windows")
    path = tmp_path / "twice.yaml"
    path.write_text(document("windows") + "---\n" + document("windows"))
    refused = cluster.authctl("create", "-f", str(path))
    assert refused.stderr == (
        "error: document 2: sub_kind: windows again (document 1 is one too): one document per CA type\n"
    )
    assert stored(cluster, "windows") == before


WINDOWS = document("windows")
NOT_UTF8 = "not UTF-8 text (or UTF-16 with a byte-order mark)"
ENCODING_CASES = {
    "latin-1": (
        WINDOWS.replace("mycluster", "caf\u00e9").encode("latin-1"),
        f"{NOT_UTF8}: byte 0xe9 at offset {WINDOWS.index('mycluster') + 3}",
    ),
    "utf-16-le without a byte-order mark": (
        WINDOWS.encode("utf-16-le"),
        f"{NOT_UTF8}: a NUL byte at offset 1 (UTF-16 without a byte-order mark?)",
    ),
    "utf-16-be without a byte-order mark": (
        WINDOWS.encode("utf-16-be"),
        f"{NOT_UTF8}: a NUL byte at offset 0 (UTF-16 without a byte-order mark?)",
    ),
    "a NUL byte": (
        WINDOWS.replace("v1", "v\x001").encode(),
        f"{NOT_UTF8}: a NUL byte at offset {WINDOWS.index('v1') + 1} (UTF-16 without a byte-order mark?)",
    ),
    "a control character": (
        b"kind: a\x07b\n",
        "character U+0007 at offset 7: YAML allows no control characters",
    ),
    "empty": (b"", "the input holds no document (expected a cert_authority_override: YAML or JSON, UTF-8)"),
    "only a comment": (b"# nothing\n", "the input holds no document"),
}


@pytest.mark.parametrize("case", list(ENCODING_CASES))
def test_input_that_is_not_utf_8_yaml_text_is_one_line_saying_why(
    cluster: LocalCluster, tmp_path: Path, case: str
) -> None:
    data, expected = ENCODING_CASES[case]
    path = tmp_path / "input.yaml"
    path.write_bytes(data)
    refused = cluster.authctl("create", "-f", str(path))
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"error: resource: {expected}"), refused.stderr
