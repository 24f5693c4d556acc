"""A node's configuration file (`nodes/<name>/node.yaml`) and host id."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from authsim.auth_node.events import DEFAULT_RETENTION
from authsim.cluster.errors import ClusterError, ValidationError
from authsim.cluster.layout import NodeLayout
from authsim.cluster.store import EtcdTLS
from authsim.cluster.store.keys import checked_cluster_name
from authsim.hsm import DEFAULT_CALL_TIMEOUT, TokenConfig, load_token_config
from authsim.hsm.provision import HSM_INPROCESS, HSM_MODES, HSM_PROCESS


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node process needs to start; paths are absolute."""

    name: str
    cluster_name: str
    host_id: str
    listen: str  # host:port of the gRPC server
    etcd_endpoints: tuple[str, ...]
    node_dir: Path
    pkcs11_module: str
    token_label: str
    etcd_tls: EtcdTLS | None = None  # client TLS to etcd; absent from node.yaml files written before it
    event_retention: int = DEFAULT_RETENTION  # session-start events the cluster keeps (the newest)
    crl_dir: str = ""  # where the node mirrors the stored CRLs (DER), named in windows leaves; "": nowhere
    hsm: str = HSM_INPROCESS  # `process`: the token is reached through the node's HSM process
    hsm_timeout: float = DEFAULT_CALL_TIMEOUT  # seconds a token call may take (its deadline)

    @property
    def layout(self) -> NodeLayout:
        """Where the node's files are in `node_dir`."""
        return NodeLayout(self.node_dir)

    def token(self) -> TokenConfig:
        return load_token_config(
            self.node_dir, self.token_label, self.pkcs11_module, hsm_process=self.hsm == HSM_PROCESS
        )

    @property
    def log_file(self) -> Path:
        return self.layout.log

    def save(self) -> Path:
        data = asdict(self)
        data["node_dir"] = str(self.node_dir)
        data["etcd_endpoints"] = list(self.etcd_endpoints)
        data["etcd_tls"] = self.etcd_tls.to_dict() if self.etcd_tls else None
        path = self.layout.config
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ClusterError(f"cannot read node config {path}: {e.strerror}") from None
        data["node_dir"] = Path(data["node_dir"])
        data["etcd_endpoints"] = tuple(data["etcd_endpoints"])
        data["etcd_tls"] = EtcdTLS.from_dict(data.get("etcd_tls"))
        try:
            checked_cluster_name(data["cluster_name"])
        except ValidationError as e:
            raise ClusterError(f"node config {path}: {e}") from None
        retention = data.get("event_retention", DEFAULT_RETENTION)
        if type(retention) is not int or retention < 1:
            raise ClusterError(
                f"node config {path}: event_retention must be a whole number >= 1, not {retention!r}"
            )
        hsm = data.get("hsm", HSM_INPROCESS)
        if hsm not in HSM_MODES:
            raise ClusterError(f"node config {path}: hsm must be one of {', '.join(HSM_MODES)}, not {hsm!r}")
        timeout = data.get("hsm_timeout", DEFAULT_CALL_TIMEOUT)
        if type(timeout) not in (int, float) or timeout <= 0:
            raise ClusterError(
                f"node config {path}: hsm_timeout must be a number of seconds > 0, not {timeout!r}"
            )
        return cls(**data)


def ensure_host_id(node_dir: Path) -> str:
    """The node's host id: a UUID made once and kept in `host_id`."""
    path = NodeLayout(node_dir).host_id
    if path.exists():
        return path.read_text().strip()
    host_id = str(uuid.uuid4())
    path.write_text(host_id + "\n")
    return host_id
