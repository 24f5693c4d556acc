"""The Python API for your own tests: a local cluster you start, reach and stop from Python.

`LocalCluster` / `local_cluster` run a cluster in a directory; the `authsim_cluster` pytest fixture
(`pytest_plugin`, registered when authsim is installed) gives you one in a temp dir.
"""

from authsim.cluster.api.local_cluster import Hsm, LocalCluster, local_cluster
from authsim.cluster.cli.runner import CliResult

__all__ = ["CliResult", "Hsm", "LocalCluster", "local_cluster"]
