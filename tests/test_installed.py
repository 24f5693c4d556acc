"""authsim installed (not editable) into a user's project that has its own `cluster` package.

The wheel adds only `authsim.*` import names and ships `py.typed`; the project's pytest loads the
`authsim_cluster` fixture from the installed plugin and its own `cluster` package side by side.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "auth_node", "cluster", "hsm", "build_backend"]

CONSUMER_TEST = """
import json

import pytest

import authsim.cluster
from cluster.settings import OWNER


@pytest.mark.authsim(nodes=1, cluster_name="consumer")
def test_my_hsm_flow(authsim_cluster):
    assert OWNER == "the consumer"
    print("authsim from", authsim.cluster.__file__)
    ca = json.loads(authsim_cluster.authctl("get", "cas/windows", "--format", "json").stdout)
    assert ca["metadata"]["name"] == "consumer"
"""


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def copy_of_the_sources(source: Path) -> Path:
    source.mkdir(exist_ok=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    return source


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (the build leaves nothing in the checkout)."""
    source = copy_of_the_sources(tmp_path_factory.mktemp("source"))
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, source)
    [built] = dist.glob("authsim-*.whl")
    return built


def test_the_wheel_adds_only_authsim_import_names_and_is_typed(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"authsim"}
    assert {"authsim/auth_node/py.typed", "authsim/cluster/py.typed", "authsim/hsm/py.typed"} <= set(names)
    assert "authsim/cluster/api/pytest_plugin.py" in names


def test_a_non_editable_install_leaves_the_source_tree_as_it_was(tmp_path: Path) -> None:
    source = copy_of_the_sources(tmp_path / "source")
    before = tree(source)
    target = tmp_path / "target"
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-t",
        target,
        ".",
        cwd=source,
    )
    assert (target / "authsim" / "cluster" / "py.typed").exists()
    assert tree(source) == before  # no build/, no authsim.egg-info/


def test_a_project_with_its_own_cluster_package_runs_the_fixture(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    # authsim's dependencies come from this environment, but not its editable authsim (a .pth line
    # adds a path; only a site dir's own .pth files run, so the editable finder stays out).
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "authsim_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    project = tmp_path / "project"
    (project / "cluster").mkdir(parents=True)
    (project / "cluster" / "__init__.py").write_text("")
    (project / "cluster" / "settings.py").write_text('OWNER = "the consumer"\n')
    (project / "tests").mkdir()
    (project / "tests" / "test_flow.py").write_text(CONSUMER_TEST)

    out = run(python, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests", cwd=project, timeout=600)
    assert "1 passed" in out
    assert f"authsim from {site}/authsim/cluster/__init__.py" in out
    version = run(python, "-c", "from importlib.metadata import version; print(version('authsim'))").strip()
    for script in ("authsim", "authctl"):
        assert run(venv / "bin" / script, "--version") == f"{script} {version}\n"
