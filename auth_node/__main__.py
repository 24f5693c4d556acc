"""Entry point of a node process: `python -m authsim.auth_node --config nodes/<name>/node.yaml`."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import sys
from pathlib import Path

from authsim.auth_node.config import NodeConfig
from authsim.auth_node.request_log import NodeLogFile
from authsim.auth_node.server import run_node
from authsim.cluster.errors import AuthSimError
from authsim.hsm import Pkcs11KeyStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="authsim.auth_node", description="Run one authsim Auth node.")
    parser.add_argument("--config", type=Path, required=True, help="path to the node's node.yaml")
    parser.add_argument(
        "--log", type=Path, default=None, help="log to this file, rotated by size (default: stderr)"
    )
    args = parser.parse_args(argv)
    name = args.config.parent.name
    try:
        node = NodeConfig.load(args.config)
        name = node.name
        if node.etcd_tls is not None:
            node.etcd_tls.checked()  # a missing TLS file: one line naming it, not a traceback later
        logging.basicConfig(
            level=logging.INFO,
            format=f"%(asctime)s {node.name} %(levelname)s %(name)s: %(message)s",
            handlers=[NodeLogFile(args.log)] if args.log else None,
        )
        faulthandler.enable()  # a crash in a C extension leaves the Python stacks in the node's log
        keystore = Pkcs11KeyStore.open(node.token(), node.host_id, node.name, call_timeout=node.hsm_timeout)
    except AuthSimError as e:
        print(f"auth_node {name}: error: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_node(node, keystore))
    except AuthSimError as e:  # e.g. its port is taken: one line the launcher reads
        print(f"auth_node {name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        keystore.close()


if __name__ == "__main__":
    sys.exit(main())
