"""pytest plugin: the `authsim_cluster` fixture, a real local cluster for your own HSM-flow tests.

Installed with authsim (entry point `pytest11`). Configure with a marker:

    @pytest.mark.authsim(nodes=3, cluster_name="mycluster")
    def test_my_flow(authsim_cluster):
        ...

One cluster for a whole test session (2 to 3 s of start-up paid once): the `authsim_cluster_session`
fixture, configured by overriding the `authsim_session_options` fixture in your conftest.py:

    @pytest.fixture(scope="session")
    def authsim_session_options():
        return {"nodes": 2, "cluster_name": "acme"}

HSM outages: each node's token is served by its own HSM process (`hsm="process"`, the default;
`hsm="inprocess"` has the node load SoftHSM itself); `authsim_cluster.hsm("node2").pause_for(3)` makes it
hang for 3 s (`stop`, `start`, `pause`, `resume`, and the `paused()`/`stopped()` context managers script
the rest).

Every process a fixture starts (etcd, nodes, targets, the KDC, PostgreSQL) is stopped by PID when the
test (the session) ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "authsim(nodes=3, cluster_name='mycluster', etcd_endpoints=None, hsm=None, hsm_timeout=None): "
        "configure authsim_cluster",
    )


@pytest.fixture
def authsim_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """A running N-node cluster (real etcd, SoftHSM tokens, node processes) in a fresh temp dir."""
    marker = request.node.get_closest_marker("authsim")
    options = dict(marker.kwargs) if marker else {}
    with local_cluster(tmp_path_factory.mktemp("authsim") / "cluster", **options) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def authsim_session_options() -> dict[str, Any]:
    """The options of `authsim_cluster_session` (those of the `authsim` marker); override to change."""
    return {}


@pytest.fixture(scope="session")
def authsim_cluster_session(
    authsim_session_options: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """One running cluster shared by every test of the session that asks for it; tests that change its
    state (overrides, trust) see each other's changes."""
    directory = tmp_path_factory.mktemp("authsim-session") / "cluster"
    with local_cluster(directory, **authsim_session_options) as cluster:
        yield cluster
