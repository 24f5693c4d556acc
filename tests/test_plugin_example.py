"""The README's example of the pytest plugin, kept here verbatim so it is known to work."""

import json
from pathlib import Path

import pytest

from authsim.cluster.api import LocalCluster
from authsim.cluster.local.external_ca import init


@pytest.mark.authsim(nodes=2, cluster_name="acme")
def test_override_reaches_issued_credentials(authsim_cluster: LocalCluster, tmp_path: Path) -> None:
    external = init(tmp_path / "extca")  # a stand-in external CA
    certs = authsim_cluster.override_certs(external, "db_client")  # node -> cert for its own key
    active = json.loads(authsim_cluster.authctl("get", "cas/db_client", "--format", "json").stdout)
    key = active["spec"]["active_keys"]["tls"][0]
    node = next(n for n in authsim_cluster.node_names if authsim_cluster.host_id(n) == key["key"]["host_id"])
    (tmp_path / "o.pem").write_text(certs[node])
    assert (
        authsim_cluster.authctl(
            "auth", "create-override", "--type=db_client", str(tmp_path / "o.pem"), node=node
        ).exit_code
        == 0
    )
    info = authsim_cluster.sign("db_client", "alice", tmp_path / "alice", node=node)
    assert info["ca_override"] == {"active": True, "public_key_hash": key["public_key_hash"]}
