"""pytest plugin: the `authsim_cluster` fixture, a real local cluster for your own HSM-flow tests.

Installed with authsim (entry point `pytest11`). Configure with a marker:

    @pytest.mark.authsim(nodes=3, cluster_name="mycluster")
    def test_my_flow(authsim_cluster):
        ...

Every process the fixture starts (etcd, nodes, targets) is stopped by PID when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from authsim.cluster.api.local_cluster import LocalCluster, local_cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "authsim(nodes=3, cluster_name='mycluster', etcd_endpoints=None): configure authsim_cluster",
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
