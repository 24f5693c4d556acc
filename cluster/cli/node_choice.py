"""Which node an authctl command talks to: `--node`, `--auth-server`, or the first healthy node."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from authsim.cluster.errors import AuthSimError, ClusterError
from authsim.cluster.local.launcher import admin_identity
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.state import ClusterState, admin_address, host_names


@dataclass
class NodeChoice:
    """Which node a command goes to, resolved lazily so `--help` needs no cluster."""

    directory: Path
    node: str | None
    auth_server: str | None
    args: list[str] = field(default_factory=list)  # the authctl command's arguments, for hints

    def host_names(self) -> dict[str, str]:
        return host_names(self.directory)

    def client(self) -> NodeClient:
        identity = admin_identity(self.directory)
        if not identity.cert.exists():
            raise ClusterError(
                f"no admin identity in {identity.cert.parent}: run `authsim up --dir {self.directory}`"
            )
        if self.auth_server:
            return NodeClient(self.auth_server, identity)
        state = ClusterState.load(self.directory)
        if self.node:
            entry = state.node(self.node)
            return NodeClient(admin_address(self.directory, entry), identity, entry.name)
        for entry in state.nodes:
            client = NodeClient(admin_address(self.directory, entry), identity, entry.name)
            if client.health() == "SERVING":
                return client
            client.close()
        raise ClusterError(
            f"no node of {self.directory} is SERVING: see `authsim status --dir {self.directory}` "
            "(nodes stopped, or etcd unreachable)"
        )

    def signer_client(self, ca_type: str) -> NodeClient:
        """The chosen node, or by default the node holding the active key of `ca_type` (it can sign)."""
        if self.node or self.auth_server:
            return self.client()
        with self.client() as any_node:
            active = any_node.get_cert_authority(ca_type).active_keys
        hosts = [k.key.host_id for k in active]
        names = self.host_names()
        holder = next((names[h] for h in hosts if h in names), None) or self._node_of(hosts)
        if holder is None:
            return self.client()
        return NodeChoice(self.directory, holder, None).client()

    def _node_of(self, host_ids: list[str]) -> str | None:
        """Ask each node its host id: for an admin dir without the nodes' dirs (docker-compose, remote)."""
        identity = admin_identity(self.directory)
        for entry in ClusterState.load(self.directory).nodes:
            try:
                with NodeClient(admin_address(self.directory, entry), identity, entry.name) as client:
                    if client.node_status().host_id in host_ids:
                        return entry.name
            except AuthSimError:
                continue
        return None
