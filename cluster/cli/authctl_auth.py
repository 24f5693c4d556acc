"""`authctl auth ...`: CSRs for the keys a node holds, and the per-node override entry edits."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from authsim.auth_node.issuance import user_problems
from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.cli import completion
from authsim.cluster.cli.node_choice import NodeChoice
from authsim.cluster.cli.pem_files import ca_public_key, read_pem_certificate
from authsim.cluster.cli.safe_text import escaped
from authsim.cluster.errors import AuthSimError, ValidationError, exact_node_commands, quoted
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.resources.cert_authority import ROTATING_PHASES, ROTATION_PHASES
from authsim.cluster.resources.x509 import public_key_hash
from authsim.cluster.secret_files import name_problems, write_all

type_option = click.option(
    "--type",
    "ca_type",
    required=True,
    shell_complete=completion.ca_types,
    help="CA type: windows or db_client",
)
_FILE_SAFE = re.compile(r"[A-Za-z0-9._@-]+")  # a user name that can be part of a file name
FC = TypeVar("FC", bound=Callable[..., Any])
force_option = click.option(
    "--force", is_flag=True, help="skip the checks against the CA (never the per-node ownership rule)"
)


KEY_HELP = "its public key hash, or a unique prefix of at least 8 hex characters (as shown: 16)"


def _out_prefix(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """--out PREFIX: an existing folder, with or without a trailing `/`, means the files go inside it."""
    if value and not value.endswith(os.sep) and Path(value).is_dir():
        return value + os.sep
    return value or ""


def out_option(help: str, required: bool = False) -> Callable[[FC], FC]:
    """The --out PREFIX option of every command writing files named PREFIX...: one rule for folders."""
    return click.option(
        "--out",
        required=required,
        default=None if required else "",
        callback=_out_prefix,
        help=f"{help}; an existing folder (trailing / or not) means: inside it",
    )


def is_folder(prefix: str) -> bool:
    """Whether an --out PREFIX names a folder (the files go inside it, named without a prefix)."""
    return prefix.endswith(os.sep)


@click.group(help="CA override commands, run against the node that holds the key.")
def auth() -> None:
    pass


@auth.command(
    "create-override-csr",
    help="CSRs for the keys of CA TYPE: by default every node signs them for the keys of its own token "
    "(asked through etcd); with --local-only only the chosen node's keys.",
)
@type_option
@click.option(
    "--subject", default="", help="RFC 4514 subject, e.g. 'OU=My Organization Unit,CN=My Windows CA'"
)
@click.option("--public-key", "public_key", default="", help=f"only this key: {KEY_HELP}")
@out_option("write one file per CSR: PREFIX<type>-<hash prefix>-csr.pem")
@click.option("--local-only", is_flag=True, help="only the keys in the chosen node's token (no etcd request)")
@click.option("--all-nodes", is_flag=True, help="every node's keys: the default (kept for scripts)")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=30.0,
    show_default=True,
    help="seconds to wait for the nodes' answers; a node that does not answer is a warning",
)
@click.pass_obj
def create_override_csr(
    nodes: NodeChoice,
    ca_type: str,
    subject: str,
    public_key: str,
    out: str,
    local_only: bool,
    all_nodes: bool,
    timeout: float,
) -> None:
    if local_only and all_nodes:
        raise click.UsageError("give --local-only or --all-nodes, not both")
    request = pb.CreateOverrideCSRRequest(
        type=ca_type,
        subject=subject,
        public_key_hash=public_key,
        gather=not local_only,
        timeout_seconds=timeout,
    )
    with nodes.client() as client:
        client.timeout = max(client.timeout, timeout + GATHER_MARGIN)
        reply = client.call("CreateOverrideCSR", request)
    csrs = list(reply.csrs)
    for warning in reply.warnings:
        click.echo(f"warning: {escaped(exact_node_commands(warning, nodes.args))}", err=True)
    if not csrs:
        raise AuthSimError(f"no CSR for CA {ca_type}: see the warnings above")
    if not out:
        for csr in csrs:
            click.echo(csr.pem, nl=False)
    else:
        files = {path: csr.pem.encode() for csr, path in zip(csrs, csr_paths(out, csrs), strict=True)}
        write_outputs(files, public=files.keys())


GATHER_MARGIN = 10.0  # seconds the RPC deadline leaves the node beyond --timeout to reply


def csr_paths(prefix: str, csrs: list[pb.OverrideCSR]) -> list[Path]:
    """`PREFIX<type>-<hash prefix>-csr.pem`, the shortest hash prefix (≥ 8) unique among these CSRs."""
    length = short_hash_length([c.public_key_hash for c in csrs])
    return [Path(f"{prefix}{c.ca_type}-{c.public_key_hash[:length]}-csr.pem") for c in csrs]


def short_hash_length(hashes: list[str]) -> int:
    """The shortest prefix length (≥ 8) that tells these key hashes apart, for file names."""
    length = 8
    while length < 64 and len({h[:length] for h in hashes}) < len(set(hashes)):
        length += 1
    return length


def _pems(paths: tuple[str, ...]) -> list[str]:
    """Every certificate in the given files, in order (a file may hold several)."""
    pems: list[str] = []
    for path in paths:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValidationError([f"{path}: no PEM certificate in it"]) from None
        pems.extend(c.public_bytes(Encoding.PEM).decode().strip() for c in certs)
    return pems


def _report(action: str, reply: pb.WriteResponse) -> None:
    if not reply.changed:
        click.echo(
            f"override {reply.public_key[:16]} already as requested: nothing written "
            f"(revision {reply.revision})"
        )
        return
    click.echo(
        f"override {reply.public_key[:16]} {action}: revision {reply.revision}, "
        f"{reply.attempts} attempt{'s' if reply.attempts != 1 else ''}"
    )


@auth.command(
    "create-override", help="Add this node's override entry: CERT, then its chain towards the root."
)
@type_option
@click.argument("cert", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("chain", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--disabled", is_flag=True, help="stage the entry disabled (any node may stage)")
@force_option
@click.pass_obj
def create_override(
    nodes: NodeChoice, ca_type: str, cert: str, chain: tuple[str, ...], disabled: bool, force: bool
) -> None:
    certificate = _pems((cert,))
    if len(certificate) != 1:
        raise ValidationError([f"{cert}: holds {len(certificate)} certificates, expected exactly one"])
    request = pb.CreateOverrideRequest(
        type=ca_type, certificate=certificate[0], chain=_pems(chain), disabled=disabled, force=force
    )
    with nodes.client() as client:
        _report("added", client.call("CreateOverride", request))


@auth.command("update-override", help="Change the entry for one public key.")
@type_option
@click.option("--public-key", "public_key", required=True, help=f"the entry's key: {KEY_HELP}")
@click.option("--set-disabled", type=click.BOOL, default=None, help="true or false")
@click.option("--set-cert", type=click.Path(dir_okay=False), default=None, help="new override certificate")
@click.option("--set-chain", multiple=True, type=click.Path(dir_okay=False), help="new chain files")
@click.option("--clear-chain", is_flag=True, help="remove the chain")
@force_option
@click.pass_obj
def update_override(
    nodes: NodeChoice,
    ca_type: str,
    public_key: str,
    set_disabled: bool | None,
    set_cert: str | None,
    set_chain: tuple[str, ...],
    clear_chain: bool,
    force: bool,
) -> None:
    if set_chain and clear_chain:
        raise click.UsageError("give --set-chain or --clear-chain, not both")
    request = pb.UpdateOverrideRequest(
        type=ca_type,
        public_key=public_key,
        set_chain=_pems(set_chain),
        clear_chain=clear_chain,
        force=force,
        set_certificate=_pems((set_cert,))[0] if set_cert else "",
    )
    if set_disabled is not None:
        request.set_disabled = set_disabled
    with nodes.client() as client:
        _report("updated", client.call("UpdateOverride", request))


@auth.command("delete-override", help="Remove the entry for one public key.")
@type_option
@click.option("--public-key", "public_key", required=True, help=f"the entry's key: {KEY_HELP}")
@force_option
@click.pass_obj
def delete_override(nodes: NodeChoice, ca_type: str, public_key: str, force: bool) -> None:
    request = pb.DeleteOverrideRequest(type=ca_type, public_key=public_key, force=force)
    with nodes.client() as client:
        _report("deleted", client.call("DeleteOverride", request))


@auth.command("pub-key-hash", help="The public key hash (hex SHA-256 of the SPKI) of a certificate.")
@click.option("--cert", required=True, type=click.Path(dir_okay=False, allow_dash=True), help="PEM file or -")
def pub_key_hash(cert: str) -> None:
    click.echo(public_key_hash(ca_public_key(read_pem_certificate(cert))))


@auth.command(
    "sign",
    help="Issue client credentials signed with this node's active key of CA TYPE. With one --user, "
    "writes PREFIX.crt, .key, .chain.pem and .json; with several, PREFIX-USER.* for each, in one call.",
)
@type_option
@click.option("--user", "users", required=True, multiple=True, help="who a credential is for; repeatable")
@out_option("PREFIX of the files written (PREFIX.crt, ...; a folder: FOLDER/USER.crt, ...)", required=True)
@click.option(
    "--ttl", type=click.IntRange(1, 30 * 24 * 3600), default=3600, show_default=True, help="seconds"
)
@click.pass_obj
def sign(nodes: NodeChoice, ca_type: str, users: tuple[str, ...], out: str, ttl: int) -> None:
    prefixes = _credential_prefixes(out, users)
    _refuse_unwritable_names([Path(f"{p}{suffix}") for p in prefixes for suffix in CREDENTIAL_SUFFIXES])
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in users]
    requests = [
        pb.SignRequest(
            type=ca_type,
            user=user,
            public_key=key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
            ttl_seconds=ttl,
        )
        for user, key in zip(users, keys, strict=True)
    ]
    with nodes.signer_client(ca_type) as client:
        if len(requests) == 1:
            replies = [client.call("Sign", requests[0])]
        else:
            replies = list(client.call("SignBatch", pb.SignBatchRequest(requests=requests)).credentials)
    files: dict[Path, bytes] = {}
    for prefix, key, reply in zip(prefixes, keys, replies, strict=True):
        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        files.update(credential_files(prefix, reply, key_pem))
    write_outputs(files, public=[p for p in files if not p.name.endswith(".key")])
    for reply in replies:
        state = "active" if reply.ca_override.active else "not active (self-signed CA)"
        click.echo(
            escaped(f"issuer {reply.issuer}; override {state}, key {reply.ca_override.public_key_hash[:16]}")
        )
        if reply.not_after_clipped:
            click.echo(
                escaped(
                    f"warning: {reply.node_name}'s issuing certificate ends before the requested TTL: "
                    f"the credential's not_after is clipped to {reply.not_after}"
                ),
                err=True,
            )


CREDENTIAL_SUFFIXES = (".key", ".crt", ".chain.pem", ".json")


def _credential_prefixes(out: str, users: tuple[str, ...]) -> list[Path]:
    """Each user's file prefix: PREFIX for one user, PREFIX-USER for several, FOLDER/USER when --out is
    a folder. A user that becomes part of a file name must be short and file-safe (length first)."""
    if len(users) == 1 and not is_folder(out):
        return [Path(out)]
    for user in users:
        problems = user_problems(user)  # the node's rule, length first
        if problems:
            raise ValidationError([f"--{problems[0]}"])
        if not _FILE_SAFE.fullmatch(user):
            raise ValidationError(
                [
                    f"--user {quoted(user)}: it becomes part of a file name (several users, or --out a "
                    "folder): use letters, digits, '.', '_', '@' and '-'"
                ]
            )
    if is_folder(out):
        return [Path(out, user) for user in users]
    return [Path(f"{out}-{user}") for user in users]


def credential_files(prefix: Path, reply: pb.SignResponse, key_pem: bytes) -> dict[Path, bytes]:
    """PREFIX.key (0600), PREFIX.crt (the leaf), PREFIX.chain.pem (above the leaf), PREFIX.json."""
    files = {
        ".key": key_pem,
        ".crt": reply.certificate.encode(),
        ".chain.pem": "".join(pem.strip() + "\n" for pem in reply.chain).encode(),
        ".json": json.dumps(
            {
                "ca_override": {
                    "active": reply.ca_override.active,
                    "public_key_hash": reply.ca_override.public_key_hash,
                },
                "serial": reply.serial,
                "issuer": reply.issuer,
                "not_after": reply.not_after,
                "not_after_clipped": reply.not_after_clipped,
                "node": reply.node_name,
            },
            indent=2,
        ).encode()
        + b"\n",
    }
    return {Path(f"{prefix}{suffix}"): data for suffix, data in files.items()}


def write_outputs(files: dict[Path, bytes], public: Iterable[Path]) -> None:
    """Write the files of one command all or none (private unless in `public`); one-line errors."""
    _refuse_unwritable_names(files)
    try:
        write_all(files, public=set(public))
    except OSError as e:
        raise AuthSimError(
            f"--out: cannot write {e.filename}: {e.strerror}; none of the {len(files)} files was written"
        ) from None
    for path in files:
        click.echo(f"Wrote {path}")


def _refuse_unwritable_names(paths: Iterable[Path]) -> None:
    """A name too long for the file system is refused before anything is asked for or written."""
    problems = name_problems(list(paths), "--out")
    if problems:
        raise ValidationError(problems)


@auth.command(
    "rotate",
    help="Rotate CA TYPE by phases (--phase, or --auto through init, update_clients, update_servers, "
    "standby), waiting until every node has done its part. Without either: make every additional "
    "trusted key active, so each node signs with its own (refused during a phased rotation).",
)
@type_option
@click.option("--phase", type=click.Choice(ROTATION_PHASES), default=None, help="the phase to move to")
@click.option("--auto", is_flag=True, help="walk the phases up to standby, stopping where one is refused")
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=60.0,
    show_default=True,
    help="seconds to wait for the nodes' parts of each phase",
)
@click.pass_obj
def rotate(nodes: NodeChoice, ca_type: str, phase: str | None, auto: bool, timeout: float) -> None:
    if phase and auto:
        raise click.UsageError("give --phase or --auto, not both")
    with nodes.client() as client:
        if phase is None and not auto:
            _promote(client, ca_type)
            return
        phases = [phase] if phase else _remaining_phases(client.get_cert_authority(ca_type).rotation)
        for step in phases:
            _move_and_wait(client, ca_type, step, timeout)


def _promote(client: NodeClient, ca_type: str) -> None:
    reply: pb.WriteResponse = client.call("RotateCertAuthority", pb.RotateRequest(type=ca_type))
    if reply.changed:
        click.echo(f"cert_authority {ca_type}: every key is active now (revision {reply.revision})")
    else:
        click.echo(f"cert_authority {ca_type}: no additional keys, nothing to do (revision {reply.revision})")


WALK = ("init", "update_clients", "update_servers", "standby")
POLL_INTERVAL = 0.3  # seconds between two looks at the nodes' parts


def _remaining_phases(rotation: pb.Rotation) -> list[str]:
    """--auto: the unfinished current phase, then the ones after it up to standby (a new rotation
    when the last one is over)."""
    current = rotation.phase or "standby"
    unfinished = any(n.done != current for n in rotation.nodes)
    if current in ROTATING_PHASES:
        return list(WALK[WALK.index(current) :])
    return [current] if unfinished else list(WALK)


def _move_and_wait(client: NodeClient, ca_type: str, phase: str, timeout: float) -> None:
    """Ask for `phase`, then print each node's part as it is done; an error past the deadline."""
    reply: pb.WriteResponse = client.call("RotateCertAuthority", pb.RotateRequest(type=ca_type, phase=phase))
    state = "moved to" if reply.changed else "already in"
    click.echo(f"cert_authority {ca_type}: rotation {state} phase {phase} (revision {reply.revision})")
    deadline = time.monotonic() + timeout
    reported: set[str] = set()
    while True:
        rotation = client.get_cert_authority(ca_type).rotation
        if rotation.phase != phase:
            raise AuthSimError(f"rotation of {ca_type}: moved on to phase {rotation.phase} meanwhile")
        for part in rotation.nodes:
            if part.done == phase and part.host_id not in reported:
                reported.add(part.host_id)
                click.echo(escaped(f"  node {_node(part)}: {_what_was_done(phase, part)}"))
        pending = [_node(part) for part in rotation.nodes if part.done != phase]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise AuthSimError(
                f"rotation of {ca_type}: after {timeout:g} s, phase {phase} is not done on node(s) "
                f"{', '.join(pending)} (a stopped node does its part when it starts again; run this "
                "command again to wait for it)"
            )
        time.sleep(POLL_INTERVAL)


def _node(part: pb.NodeRotation) -> str:
    return part.node_name or f"(host {part.host_id})"


def _what_was_done(phase: str, part: pb.NodeRotation) -> str:
    new, old = part.new_key[:16], ", ".join(k[:16] for k in part.old_keys)
    return {
        "init": f"new key {new} made in its token, trusted as an additional key",
        "update_clients": f"signs with its new key {new}",
        "update_servers": f"serves with its new key {new}",
        "standby": f"old key(s) {old} destroyed in its token",
        "rollback": f"new key {new or '(none)'} destroyed, signs with its old key(s) {old} again",
    }[phase]
