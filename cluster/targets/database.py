"""The database target: a client logging in to the database's real PostgreSQL server with a certificate.

A TLS server (`sessions`) answering one session request with `{"success", "reason", "database"}`:
it logs in as role `user` over TLS presenting the leaf and its chain (`pg_client.login`), and
PostgreSQL decides (`hostssl … cert`: the chain to its `ssl_ca_file`, the CN naming the role); its
refusal is the reason. The role is made on demand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.layout import ClusterLayout
from authsim.cluster.mtls import TLSIdentity
from authsim.cluster.targets import pg_client
from authsim.cluster.targets.crls import crls_in_force
from authsim.cluster.targets.sessions import Answer, SessionRequest, serve_sessions

DATABASE_NAME = pg_client.DATABASE


def database_answer(cluster_dir: Path, pg_port: int) -> Answer:
    """The database's verdict on a session: a certificate login at PostgreSQL on `pg_port`."""
    layout = ClusterLayout(cluster_dir).postgres

    def answer(request: SessionRequest) -> tuple[bool, str]:
        pg_client.install_crls(layout, pg_port, crls_in_force(cluster_dir, "db"))
        pg_client.create_role(layout, pg_port, request.user)
        chain = b"".join(c.public_bytes(Encoding.PEM) for c in request.chain)
        return pg_client.login(layout, pg_port, request.leaf_pem + chain, request.key, request.user)

    return answer


async def start_database(
    cluster_dir: Path, identity: TLSIdentity, host: str, port: int, pg_port: int
) -> asyncio.Server:
    """Listen on `host:port` (0 = any free port), logging users in at PostgreSQL on `pg_port`."""
    answer = database_answer(cluster_dir, pg_port)
    return await serve_sessions(identity, host, port, answer, "database", DATABASE_NAME)
