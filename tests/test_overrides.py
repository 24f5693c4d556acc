"""CA overrides end to end on real node processes: CSRs, an external CA, per-node CAS appends."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.local.external_ca import ExternalCA, init
from tests.certs import openssl_key_hash

OPENSSL_EXT = """basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always
"""


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("ov") / "c", nodes=3) as running:
        yield running


def own_keys(cluster: LocalCluster, node: str, ca_type: str = "windows") -> list[str]:
    with cluster.client(node) as client:
        return [k.public_key_hash for k in client.node_status().keys if k.ca_type == ca_type]


def csr_subject(path: Path) -> str:
    return openssl("req", "-in", str(path), "-noout", "-subject", "-nameopt", "RFC2253").decode().strip()


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("", "subject=CN=mycluster,O=mycluster"),
        (
            "OU=My Organization Unit,CN=My Windows CA",
            "subject=O=mycluster,OU=My Organization Unit,CN=My Windows CA",
        ),
        ("CN=My Windows CA,O=mycluster", "subject=CN=My Windows CA,O=mycluster"),
        (
            "CN=My Windows CA,O=Example Corp",
            # openssl prints an unknown OID's value as hex DER: UTF8String "mycluster"
            f"subject=1.3.9999.4.1=#{(bytes([0x0C, 9]) + b'mycluster').hex().upper()},"
            "CN=My Windows CA,O=Example Corp",
        ),
    ],
)
def test_csr_subject_cases(cluster: LocalCluster, tmp_path: Path, subject: str, expected: str) -> None:
    args = ["auth", "create-override-csr", "--type=windows", "--local-only", "--out", f"{tmp_path}/"]
    result = cluster.authctl(*args, *(["--subject", subject] if subject else []), node="node2")
    assert result.exit_code == 0, result.stderr
    (path,) = tmp_path.glob("windows-*-csr.pem")
    assert result.stdout == f"Wrote {path}\n"
    verified = subprocess.run(["openssl", "req", "-in", str(path), "-noout", "-verify"], capture_output=True)
    assert verified.returncode == 0 and b"verify OK" in verified.stdout + verified.stderr
    assert csr_subject(path) == expected
    assert [openssl_key_hash(path, "req")] == own_keys(cluster, "node2")
    assert path.name == f"windows-{own_keys(cluster, 'node2')[0][:8]}-csr.pem"


def test_csr_refuses_other_cluster_oid_and_other_nodes_key(cluster: LocalCluster) -> None:
    result = cluster.authctl(
        "auth",
        "create-override-csr",
        "--type=windows",
        "--local-only",
        "--subject",
        "CN=x,1.3.9999.4.1=othercluster",
        node="node1",
    )
    assert result.exit_code == 1
    assert "subject: OID 1.3.9999.4.1 is 'othercluster', not the cluster name 'mycluster'" in result.stderr
    theirs = own_keys(cluster, "node2")[0]
    result = cluster.authctl(
        "auth", "create-override-csr", "--type=windows", "--local-only", "--public-key", theirs, node="node1"
    )
    assert result.exit_code == 1
    assert f"key {theirs[:16]} is held by node node2" in result.stderr


def test_all_nodes_collects_each_nodes_own_csr(cluster: LocalCluster, tmp_path: Path) -> None:
    result = cluster.authctl(
        "auth", "create-override-csr", "--type=db_client", "--all-nodes", "--out", f"{tmp_path}/"
    )
    assert result.exit_code == 0, result.stderr
    written = sorted(tmp_path.glob("db_client-*-csr.pem"))
    assert len(written) == 3
    held = sorted(h for n in cluster.node_names for h in own_keys(cluster, n, "db_client"))
    assert sorted(openssl_key_hash(p, "req") for p in written) == held


def sign_with_openssl(ca: ExternalCA, csr: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    ext = out.parent / "ext.cnf"
    ext.write_text(OPENSSL_EXT)
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.directory / "intermediate.pem"),
        "-CAkey",
        str(ca.directory / "intermediate.key"),
        "-CAcreateserial",
        "-days",
        "365",
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(out),
    )
    return out


def test_seed_flow_with_openssl_as_the_external_ca(tmp_path: Path) -> None:
    """Seed steps 1, 2 and 4: CSRs per node, OpenSSL signs, spec: {} then one append per node."""
    ca = init(tmp_path / "extca")
    with local_cluster(tmp_path / "c", nodes=3) as cluster:
        certs = {}
        for node in cluster.node_names:
            out = tmp_path / node / "csr-"
            result = cluster.authctl(
                "auth", "create-override-csr", "--type=windows", "--local-only", "--out", str(out), node=node
            )
            assert result.exit_code == 0, result.stderr
            (csr,) = out.parent.glob("csr-windows-*-csr.pem")
            certs[node] = sign_with_openssl(ca, csr, tmp_path / node / "override.pem")
        empty = tmp_path / "ca_override_windows.yaml"
        empty.write_text(
            "kind: cert_authority_override\nsub_kind: windows\nversion: v1\n"
            "metadata:\n  name: mycluster\nspec: {}\n"
        )
        created = cluster.authctl("create", str(empty), node="node3")
        assert created.exit_code == 0, created.stderr
        for node, cert in certs.items():
            result = cluster.authctl(
                "auth",
                "create-override",
                "--type=windows",
                str(cert),
                str(ca.directory / "chain.pem"),
                node=node,
            )
            assert result.exit_code == 0, result.stderr
            assert "attempt" in result.stdout and "revision" in result.stdout
        resource = yaml.safe_load(cluster.authctl("get", "ca_overrides/windows").stdout)
        entries = resource["spec"]["certificate_overrides"]
        assert len(entries) == 3
        stored = sorted(entry["public_key"] for entry in entries)
        assert stored == sorted(openssl_key_hash(c) for c in certs.values())
        text = cluster.authctl("get", "ca_overrides/windows", "--format", "text")
        for node in cluster.node_names:
            assert node in text.stdout
        as_json = json.loads(cluster.authctl("get", "ca_overrides/windows", "--format", "json").stdout)
        assert as_json == resource


def test_another_nodes_key_is_refused_and_staging_disabled_is_allowed(tmp_path: Path) -> None:
    ca = init(tmp_path / "extca")
    with local_cluster(tmp_path / "c", nodes=2) as cluster:
        out = f"{tmp_path}/csr/"
        assert (
            cluster.authctl(
                "auth", "create-override-csr", "--type=windows", "--local-only", "--out", out, node="node2"
            ).exit_code
            == 0
        )
        (csr,) = (tmp_path / "csr").glob("*.pem")
        cert = sign_with_openssl(ca, csr, tmp_path / "node2.pem")
        key = openssl_key_hash(cert)
        before = cluster.authctl("get", "ca_overrides/windows")
        refused = cluster.authctl("auth", "create-override", "--type=windows", str(cert), node="node1")
        assert refused.exit_code == 1
        assert "held by node node2" in refused.stderr
        assert before.exit_code == 1 and "not found" in before.stderr
        assert cluster.authctl("get", "ca_overrides/windows").exit_code == 1
        staged = cluster.authctl(
            "auth", "create-override", "--type=windows", str(cert), "--disabled", node="node1"
        )
        assert staged.exit_code == 0, staged.stderr
        again = cluster.authctl(
            "auth", "create-override", "--type=windows", str(cert), "--disabled", node="node1"
        )
        assert "nothing written" in again.stdout
        enable = ("auth", "update-override", "--type=windows", "--public-key", key, "--set-disabled", "false")
        refused = cluster.authctl(*enable, node="node1")
        assert refused.exit_code == 1 and "held by node node2" in refused.stderr
        enabled = cluster.authctl(*enable, node="node2")
        assert enabled.exit_code == 0, enabled.stderr
        entry = yaml.safe_load(cluster.authctl("get", "ca_overrides/windows").stdout)["spec"][
            "certificate_overrides"
        ]
        assert entry[0]["public_key"] == key and not entry[0].get("disabled", False)
        assert cluster.authctl("auth", "pub-key-hash", "--cert", str(cert)).stdout.strip() == key


def fresh_empty_db_client_override(cluster: LocalCluster, directory: Path) -> Path:
    """Replace ca_overrides/db_client with an empty one; the path of its YAML file."""
    cluster.authctl("rm", "ca_overrides/db_client", "--force")
    empty = directory / "empty.yaml"
    empty.write_text(
        "kind: cert_authority_override\nsub_kind: db_client\nversion: v1\n"
        "metadata:\n  name: mycluster\nspec: {}\n"
    )
    assert cluster.authctl("create", str(empty)).exit_code == 0
    return empty


def test_stale_edit_is_refused_and_the_text_kept(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = fresh_empty_db_client_override(cluster, tmp_path)
    # The "editor" lets another admin write first (create -f), then saves its own change.
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import subprocess, sys\n"
        f"subprocess.run([{str(Path(sys.executable).parent / 'authctl')!r},"
        f" '--dir', {str(cluster.directory)!r},"
        f" 'create', '-f', {str(empty)!r}], check=True)\n"
        "text = open(sys.argv[1]).read().replace('spec: {}', 'spec:\\n  certificate_overrides: []')\n"
        "open(sys.argv[1], 'w').write(text + '# my edit\\n')\n"
    )
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    monkeypatch.chdir(tmp_path)
    result = cluster.authctl("edit", "ca_overrides/db_client", node="node3")
    assert result.exit_code == 1
    assert "revision mismatch" in result.stderr and "work from the latest state" in result.stderr
    kept = Path(result.stderr.rsplit("kept in ", 1)[1].strip())
    assert kept.read_text().endswith("# my edit\n")


def test_a_failed_edit_keeps_the_text_under_a_name_of_its_own_and_success_leaves_nothing(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    temp.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where edit makes its working copy
    monkeypatch.chdir(cwd)
    fresh_empty_db_client_override(cluster, tmp_path)
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import sys\n"
        "with open(sys.argv[2], 'ab') as f:  # argv: the text, then the file\n"
        "    f.write(sys.argv[1].encode('latin-1'))\n"
    )
    latin1 = "# caf\u00e9\n"
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor} '{latin1}'")
    kept = []
    for _ in range(2):  # twice within a second: two kept files
        result = cluster.authctl("edit", "ca_overrides/db_client")
        assert result.exit_code == 1
        assert "not UTF-8 text (or UTF-16 with a byte-order mark)" in result.stderr
        kept.append(Path(result.stderr.rsplit("kept in ", 1)[1].strip()))
    assert kept[0] != kept[1] and all(k.parent == cwd for k in kept)
    assert all(k.read_bytes().endswith(latin1.encode("latin-1")) for k in kept)
    assert list(temp.iterdir()) == []

    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor} '# fine\n'")
    result = cluster.authctl("edit", "ca_overrides/db_client")
    assert result.exit_code == 0, result.stderr
    assert list(temp.iterdir()) == [] and sorted(cwd.iterdir()) == sorted(kept)


def test_eight_nodes_append_at_the_same_moment(tmp_path: Path) -> None:
    """8 node processes append their own entry simultaneously, 20 rounds: nothing lost, nothing doubled."""
    ca = init(tmp_path / "extca")
    with local_cluster(tmp_path / "c", nodes=8) as cluster:
        assert (
            cluster.authctl(
                "auth", "create-override-csr", "--type=windows", "--all-nodes", "--out", f"{tmp_path}/csr/"
            ).exit_code
            == 0
        )
        certs = {}
        for csr in (tmp_path / "csr").glob("*.pem"):
            cert = sign_with_openssl(ca, csr, tmp_path / "certs" / csr.name.replace("-csr", ""))
            certs[openssl_key_hash(cert)] = cert.read_text()
        clients = {n: cluster.client(n) for n in cluster.node_names}
        owner = {h: n for n in cluster.node_names for h in own_keys(cluster, n)}
        timings: list[float] = []
        attempts: list[int] = []
        for _ in range(20):
            cluster.authctl("rm", "ca_overrides/windows", "--force")
            barrier = threading.Barrier(8, timeout=30)
            acked: list[pb.WriteResponse] = []

            def append(key: str, barrier: threading.Barrier, acked: list[pb.WriteResponse]) -> None:
                request = pb.CreateOverrideRequest(type="windows", certificate=certs[key])
                barrier.wait()
                acked.append(clients[owner[key]].call("CreateOverride", request))

            threads = [threading.Thread(target=append, args=(k, barrier, acked)) for k in certs]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            timings.append(time.perf_counter() - started)
            attempts.extend(r.attempts for r in acked)
            assert len(acked) == 8
            stored = yaml.safe_load(cluster.authctl("get", "ca_overrides/windows").stdout)
            keys = [e["public_key"] for e in stored["spec"]["certificate_overrides"]]
            assert sorted(keys) == sorted(certs) and len(set(keys)) == 8
        for client in clients.values():
            client.close()
        print(
            f"\n8 simultaneous appends: median {sorted(timings)[10] * 1000:.0f} ms, "
            f"max {max(timings) * 1000:.0f} ms; attempts mean {sum(attempts) / len(attempts):.2f}, "
            f"max {max(attempts)}"
        )
