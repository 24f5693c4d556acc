"""A target process: `python -m authsim.cluster.targets --dir D --kind desktop|db --listen H:P --server H:P`
(the server: the desktop's KDC, the database's PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from authsim.cluster.errors import AuthSimError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.resources.ca_types import desktop_domain
from authsim.cluster.store.keys import checked_cluster_name
from authsim.cluster.targets._tls import KINDS, target_identity
from authsim.cluster.targets.database import start_database
from authsim.cluster.targets.desktop import start_desktop

log = logging.getLogger("target")


async def serve(cluster_dir: Path, kind: str, host: str, port: int, cluster_name: str, server: str) -> None:
    """Run the target until SIGTERM or SIGINT, then stop listening and return."""
    identity = target_identity(cluster_dir, checked_cluster_name(cluster_name), kind)
    if kind == "desktop":
        listening = await start_desktop(
            cluster_dir, identity, host, port, desktop_domain(cluster_name), server
        )
    else:
        listening = await start_database(cluster_dir, identity, host, port, int(server.rsplit(":", 1)[1]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    trust_dir = ClusterLayout(cluster_dir).target(kind).directory
    log.info("%s target listening on %s:%d (server %s, trust in %s)", kind, host, port, server, trust_dir)
    await stop.wait()
    listening.close()
    log.info("%s target stopped", kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="authsim.cluster.targets", description="Run one authsim downstream target."
    )
    parser.add_argument("--dir", type=Path, required=True, help="the cluster dir")
    parser.add_argument("--kind", choices=KINDS, required=True, help="which target")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on")
    parser.add_argument("--cluster-name", required=True, help="the cluster's name (server certificate's O)")
    parser.add_argument(
        "--server",
        required=True,
        metavar="HOST:PORT",
        help="the real server: the KDC (desktop), PostgreSQL (db)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    host, port = args.listen.rsplit(":", 1)
    try:
        asyncio.run(serve(args.dir.absolute(), args.kind, host, int(port), args.cluster_name, args.server))
    except AuthSimError as e:
        print(f"cluster.targets {args.kind}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
