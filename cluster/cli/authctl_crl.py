"""`authctl auth revoke` and `authctl auth crl`: revoke a credential, export the CRLs of a CA's keys."""

from __future__ import annotations

import time
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.cli.authctl_auth import out_option, type_option, write_outputs
from authsim.cluster.cli.node_choice import NodeChoice
from authsim.cluster.cli.pem_files import read_pem_block
from authsim.cluster.errors import NodeUnavailableError, NotFoundError
from authsim.cluster.local.node_client import NodeClient

WAIT_SECONDS = 15.0  # how long `revoke` waits for the holder to sign CRLs listing the serial
POLL_SECONDS = 0.2


@click.command(
    "revoke",
    help="Revoke a credential of CA TYPE: its serial joins the CRLs of the key that issued it, signed by "
    "the node holding that key. Waits until they are.",
)
@type_option
@click.option("--serial", default="", help="the credential's serial, hex")
@click.option("--public-key", "public_key", default="", help="with --serial: the issuing key's hash prefix")
@click.option(
    "--cert", default=None, type=click.Path(dir_okay=False, allow_dash=True), help="the credential (PEM)"
)
@click.option(
    "--wait",
    "wait",
    type=click.FloatRange(0),
    default=WAIT_SECONDS,
    show_default=True,
    help="seconds to wait for the key's holder to sign CRLs that list the serial",
)
@click.pass_obj
def revoke(
    nodes: NodeChoice, ca_type: str, serial: str, public_key: str, cert: str | None, wait: float
) -> None:
    if bool(serial) == bool(cert):
        raise click.UsageError("give --serial or --cert (one of them)")
    if cert and public_key:
        raise click.UsageError("--public-key goes with --serial: a certificate names its issuing key")
    certificate = read_pem_block(cert, "CERTIFICATE").decode() if cert else ""
    request = pb.RevokeCredentialRequest(
        type=ca_type, serial=serial, public_key=public_key, certificate=certificate
    )
    with nodes.client() as client:
        reply: pb.RevokeCredentialResponse = client.call("RevokeCredential", request)
        key = reply.public_key_hash[:16]
        if reply.already_revoked:
            click.echo(f"serial {reply.serial} of key {key} was already revoked: nothing written")
        else:
            click.echo(f"serial {reply.serial} revoked under key {key} (revision {reply.revision})")
        listed = _wait_listed(client, ca_type, reply, wait)
    click.echo(f"CRL number {listed.crl_number} of key {key}, signed by node {reply.holder}, lists it:")
    click.echo("  self-signed CA certificate's CRL")
    for override in listed.overrides:
        click.echo(f"  override certificate {override.fingerprint[:16]}'s CRL")


def _wait_listed(
    client: NodeClient, ca_type: str, reply: pb.RevokeCredentialResponse, wait: float
) -> pb.KeyCRL:
    """The key's CRLs once every one of them lists the serial; NodeUnavailableError after `wait` s."""
    deadline = time.monotonic() + wait
    serial = int(reply.serial, 16)
    while True:
        listing: pb.ListCRLsResponse = client.call("ListCRLs", pb.ListCRLsRequest(type=ca_type))
        found: pb.KeyCRL = next(k for k in listing.keys if k.public_key_hash == reply.public_key_hash)
        pems = [found.crl, *(o.crl for o in found.overrides)] if found.crl else []
        if pems and all(_lists(pem, serial) for pem in pems):
            return found
        if time.monotonic() >= deadline:
            raise NodeUnavailableError(
                f"revoked in the cluster's spec, but no CRL of key {reply.public_key_hash[:16]} lists serial "
                f"{reply.serial} after {wait:g}s: node {reply.holder}, which holds the key, signs them "
                "(is it running? `authsim status`)"
            )
        time.sleep(POLL_SECONDS)


def _lists(pem: str, serial: int) -> bool:
    return x509.load_pem_x509_crl(pem.encode()).get_revoked_certificate_by_serial_number(serial) is not None


@click.command(
    "crl",
    help="Write the CRLs of every key of CA TYPE: PREFIX<type>-<hash8>.crl (issued by the self-signed CA "
    "certificate) and PREFIX<type>-override-<hash8>.crl (issued by the key's override certificate).",
)
@type_option
@out_option("PREFIX of the files written")
@click.option("--der", is_flag=True, help="DER instead of PEM")
@click.pass_obj
def crl(nodes: NodeChoice, ca_type: str, out: str, der: bool) -> None:
    with nodes.client() as client:
        listing: pb.ListCRLsResponse = client.call("ListCRLs", pb.ListCRLsRequest(type=ca_type))
    unsigned = [k for k in listing.keys if not k.crl]
    if unsigned:
        names = ", ".join(f"{k.public_key_hash[:16]} (node {k.node_name or k.host_id})" for k in unsigned)
        raise NotFoundError(f"no CRL signed yet for key {names}: the node holding it signs it once it runs")
    length = _unique_length([k.public_key_hash for k in listing.keys])
    files: dict[Path, bytes] = {}
    for key in listing.keys:
        short = key.public_key_hash[:length]
        files[Path(f"{out}{ca_type}-{short}.crl")] = _encoded(key.crl, der)
        for override in key.overrides:  # one entry per key: one override CRL per key
            files[Path(f"{out}{ca_type}-override-{short}.crl")] = _encoded(override.crl, der)
    write_outputs(files, public=files.keys())


def _unique_length(hashes: list[str]) -> int:
    """The shortest hash prefix (at least 8) that tells these keys apart."""
    length = 8
    while length < 64 and len({h[:length] for h in hashes}) < len(set(hashes)):
        length += 1
    return length


def _encoded(pem: str, der: bool) -> bytes:
    if not der:
        return pem.encode()
    return x509.load_pem_x509_crl(pem.encode()).public_bytes(Encoding.DER)
