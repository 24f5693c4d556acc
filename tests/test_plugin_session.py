"""The pytest plugin's session-scoped cluster: one cluster, started once, shared by the tests that ask."""

from __future__ import annotations

from typing import Any

import pytest

from authsim.cluster.api import LocalCluster

_seen: list[tuple[str, list[int | None]]] = []


@pytest.fixture(scope="session")
def authsim_session_options() -> dict[str, Any]:
    return {"nodes": 2, "cluster_name": "shared"}


def _identity(cluster: LocalCluster) -> tuple[str, list[int | None]]:
    return str(cluster.directory), [node.pid for node in cluster.state.nodes]


def test_the_session_cluster_takes_the_overridden_options(authsim_cluster_session: LocalCluster) -> None:
    assert authsim_cluster_session.node_names == ["node1", "node2"]
    assert authsim_cluster_session.state.cluster_name == "shared"
    _seen.append(_identity(authsim_cluster_session))


def test_a_second_test_gets_the_same_running_cluster(authsim_cluster_session: LocalCluster) -> None:
    assert _seen == [_identity(authsim_cluster_session)]
    assert authsim_cluster_session.authctl("status").exit_code == 0
