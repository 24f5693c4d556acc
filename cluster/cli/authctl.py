"""`authctl`: the admin CLI; talks to one chosen node over mutually authenticated gRPC."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from cryptography import x509
from rich.table import Table

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.cli import completion
from authsim.cluster.cli.authctl_auth import auth
from authsim.cluster.cli.authctl_crl import crl, revoke
from authsim.cluster.cli.common import (
    UNHEALTHY_EXIT,
    cluster_dir_of_cluster,
    dir_option,
    format_option,
    make_console,
    print_data,
    run_cli,
)
from authsim.cluster.cli.effective_cas import export, read_snapshot
from authsim.cluster.cli.events import EventSelection, show_events, since_unix_ns
from authsim.cluster.cli.examples import add_examples
from authsim.cluster.cli.node_choice import NodeChoice
from authsim.cluster.cli.safe_text import cell, cell_lines
from authsim.cluster.errors import (
    AuthSimError,
    ConflictError,
    NotFoundError,
    OutcomeUnknownError,
    UnavailableError,
    ValidationError,
    one_line,
    quoted,
)
from authsim.cluster.local.state import cluster_dir
from authsim.cluster.local.status import Reachability, expiry_line, reachability
from authsim.cluster.resources import clock
from authsim.cluster.resources.ca_types import CA_TYPES, resolve_ca_type
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.effective import EffectiveKey, effective_keys, effective_status
from authsim.cluster.resources.expiry import expiry_level
from authsim.cluster.resources.override import (
    CertAuthorityOverride,
    parse_override_documents,
    parse_override_yaml,
)
from authsim.cluster.resources.stored import cert_authority_fix, override_fix
from authsim.cluster.resources.x509 import display_name
from authsim.cluster.resources.yaml_codec import dump_yaml

console = make_console()
FORMATS = click.Choice(["yaml", "json", "text"])


@click.group(help="Administer an authsim cluster through one of its Auth nodes.")
@click.version_option(package_name="authsim", message="%(prog)s %(version)s")
@dir_option
@click.option(
    "--node",
    default=None,
    shell_complete=completion.node_names,
    help="node to talk to, by name (default: the first healthy node)",
)
@click.option("--auth-server", default=None, help="node address host:port instead of --node")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, node: str | None, auth_server: str | None) -> None:
    if node and auth_server:
        raise click.UsageError("give --node or --auth-server, not both")
    ctx.obj = NodeChoice(cluster_dir(directory), node, auth_server, list(ctx.obj or []))


CA_KINDS = ("cas", "cert_authority", "cert_authorities")
OVERRIDE_KINDS = ("ca_overrides", "ca_override", "cert_authority_override", "cert_authority_overrides")


GET_TAKES = "cas[/TYPE], ca_overrides[/TYPE] or events"
EDIT_TAKES = "ca_overrides/TYPE (a CA's keys are the nodes' own: see `authctl auth --help`)"
RM_TAKES = "ca_overrides/TYPE, or cas/TYPE of a stored CA that breaks a rule"


def _split(resource: str, kinds: tuple[str, ...], need_name: bool, command: str, takes: str) -> str:
    """The TYPE of a KIND[/TYPE] `resource` that `authctl COMMAND` takes; anything else is refused,
    saying what the command does take."""
    kind, _, name = resource.partition("/")
    if kind not in kinds or (need_name and not name):
        raise ValidationError([f"resource: `authctl {command}` takes {takes}, not {quoted(resource)}"])
    return name


@cli.command(help="Show a resource: cas[/TYPE] (every CA type without TYPE), ca_overrides[/TYPE] or events.")
@click.argument("resource", shell_complete=completion.any_resource)
@click.option("--format", "fmt", type=FORMATS, default="yaml", show_default=True, help="output format")
@click.option("--limit", type=click.IntRange(1), default=None, help="events: only the newest N")
@click.option(
    "--since",
    default=None,
    help="events: only those recorded at or after TIME, ISO 8601 (UTC unless it names a zone) "
    "or an age: 90s, 15m, 2h, 1d",
)
@click.option(
    "--kind",
    type=click.Choice(["session", "override"]),
    default=None,
    help="events: only session starts or only override writes",
)
@click.option("--code", default=None, help="events: only those with this code (TDB00I, TCO02W, ...)")
@click.option("--follow", is_flag=True, help="events: then print each new event as it is recorded")
@click.option("--count", type=click.IntRange(1), default=None, help="events: with --follow, stop after N new")
@click.pass_obj
def get(
    nodes: NodeChoice,
    resource: str,
    fmt: str,
    limit: int | None,
    since: str | None,
    kind: str | None,
    code: str | None,
    follow: bool,
    count: int | None,
) -> None:
    if resource == "events":
        if count and not follow:
            raise click.UsageError("--count goes with --follow")
        since_ns = since_unix_ns(since) if since else 0
        selection = EventSelection(since_ns, limit or 0, kind or "", code or "")
        with nodes.client() as client:
            show_events(client, console, fmt, selection, follow, count or 0)
        return
    if limit or since or kind or code or follow or count:
        raise click.UsageError(
            "--limit, --since, --kind, --code, --follow and --count are options of `get events`"
        )
    if resource.partition("/")[0] in OVERRIDE_KINDS:
        name = _split(resource, OVERRIDE_KINDS, False, "get", GET_TAKES)
        with nodes.client() as client:
            reply = client.call("ListOverrides", pb.GetOverrideRequest(type=name))
            found = [CertAuthorityOverride.from_proto(o) for o in reply.overrides]
            cas = {o.ca_type: CertAuthority.from_proto(client.get_cert_authority(o.ca_type)) for o in found}
        problems = {o.type: list(o.problems) for o in reply.overrides if o.problems}
        _print_overrides(found, problems, cas, nodes.host_names(), fmt, single=bool(name))
        for ca_type, broken in problems.items():
            _warn_broken(f"ca_overrides/{ca_type}", broken, override_fix(ca_type))
        return
    name = _split(resource, CA_KINDS, False, "get", GET_TAKES)
    _show_cert_authorities(nodes, [name] if name else list(CA_TYPES), fmt, single=bool(name))


def _show_cert_authorities(nodes: NodeChoice, ca_types: list[str], fmt: str, single: bool) -> None:
    """`get cas[/TYPE]`: each CA, and in its status each key's holder and override (each CA read as one
    snapshot with its override). Several: YAML documents, a JSON list, or one table each."""
    with nodes.client() as client:
        snapshots = [read_snapshot(client, ca_type) for ca_type in ca_types]
    names = nodes.host_names()
    documents = []
    for snapshot in snapshots:
        ca = CertAuthority.from_proto(snapshot.ca)
        found = snapshot.override
        override = None if found is None else CertAuthorityOverride.from_proto(found)
        keys = effective_keys(ca, override)
        status = effective_status(keys, 0 if override is None else override.revision, names)
        data = ca.to_dict() | {"status": status}
        if snapshot.ca.problems:
            data = {k: v for k, v in data.items() if k != "spec"} | {
                "status": {"problems": list(snapshot.ca.problems)}
            }
        documents.append(data)
        if fmt == "text":
            print_cert_authority(ca, keys, names)
    if fmt == "yaml":
        click.echo("---\n".join(dump_yaml(d) for d in documents), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(documents[0] if single else documents, indent=2))
    for snapshot in snapshots:
        ca_type, found = snapshot.ca.type, snapshot.override
        if snapshot.ca.problems:
            _warn_broken(f"cas/{ca_type}", list(snapshot.ca.problems), cert_authority_fix(ca_type))
        elif found is not None and found.problems:
            _warn_broken(f"ca_overrides/{ca_type}", list(found.problems), override_fix(ca_type))


def _warn_broken(name: str, problems: list[str], fix: str) -> None:
    """One line on stderr: a stored resource breaks rules (listed in its status) and how to fix it."""
    count = f"{len(problems)} rule{'s' if len(problems) > 1 else ''}"
    click.echo(
        f"warning: stored {name} breaks {count} (see status.problems), nothing uses it: {fix}", err=True
    )


def _print_overrides(
    found: list[CertAuthorityOverride],
    problems: dict[str, list[str]],
    cas: dict[str, CertAuthority],
    names: dict[str, str],
    fmt: str,
    single: bool,
) -> None:
    documents = []
    for o in found:
        data = o.to_dict()
        if o.ca_type in problems:
            data["status"] = {**data["status"], "problems": problems[o.ca_type]}
        documents.append(data)
    if fmt == "yaml":
        click.echo("---\n".join(dump_yaml(d) for d in documents), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(documents[0] if single else documents, indent=2))
    else:
        for resource in found:
            holders = {p.public_key_hash: p.key.host_id for _, p in cas[resource.ca_type].all_keys()}
            console.print(
                cell(
                    f"cert_authority_override {resource.ca_type}  cluster {resource.cluster_name}  "
                    f"revision {resource.revision}"
                )
            )
            for problem in problems.get(resource.ca_type, []):
                console.print(f"  breaks: {one_line(problem)}", markup=False)
            table = Table("PUBLIC KEY HASH", "NODE", "SUBJECT", "NOT AFTER", "EXPIRY ALERT", "DISABLED")
            now = clock.now()
            for entry in resource.certificate_overrides:
                subject, not_after, level = "-", "-", "-"
                if entry.certificate:
                    try:
                        cert = x509.load_pem_x509_certificate(entry.certificate.encode())
                        subject, not_after = (
                            one_line(display_name(cert.subject)),
                            cert.not_valid_after_utc.strftime("%Y-%m-%d"),
                        )
                        alert = expiry_level(cert.not_valid_before_utc, cert.not_valid_after_utc, now)
                        level = alert.label if alert else "-"
                    except ValueError:
                        subject = "(unreadable certificate)"
                host = holders.get(entry.key_hash, "")
                table.add_row(
                    cell(entry.key_hash[:16]),
                    cell(names.get(host, host or "not a CA key")),
                    cell(subject),
                    cell(not_after),
                    cell(level),
                    cell("yes" if entry.disabled else "no"),
                )
            console.print(table)


def _print_problems(problems: list[str]) -> None:
    for problem in problems:
        click.echo(one_line(problem))


def _with_check_hint(error: ValidationError, command: str) -> ValidationError:
    """`error`, pointing at the full list when its message names only the first problems."""
    if str(error).endswith("more problems") or str(error).endswith("more problem"):
        message = f"{error} (every problem: `{command}`)"
        return ValidationError(error.problems, message)
    return error


def _write(
    nodes: NodeChoice, resource: CertAuthorityOverride, mode: pb.WriteMode, force: bool
) -> pb.WriteResponse:
    with nodes.client() as client:
        request = pb.WriteOverrideRequest(resource=resource.to_proto(), mode=mode, force=force)
        reply: pb.WriteResponse = client.call("WriteOverrideResource", request)
        return reply


@cli.command(help="Open a session on the downstream target with a fresh credential; records the event.")
@click.option(
    "--type",
    "ca_type",
    required=True,
    shell_complete=completion.ca_types,
    help="windows (desktop target) or db_client (database target)",
)
@click.option("--user", required=True, help="the user the credential is for")
@click.pass_obj
def exercise(nodes: NodeChoice, ca_type: str, user: str) -> None:
    with nodes.signer_client(ca_type) as client:
        reply = client.call("Exercise", pb.ExerciseRequest(type=ca_type, user=user))
    event = json.loads(reply.event)
    click.echo(json.dumps(event, indent=2, sort_keys=True))
    if not event["success"]:
        raise AuthSimError(
            f"session refused by the {resolve_ca_type(ca_type).target} target: {event['error']}"
        )


@cli.command(
    help="Create the resources in a YAML or JSON file: one document, or several as `authctl get "
    "ca_overrides` prints them. Without -f an existing resource is refused (metadata.revision is not "
    "looked at). With -f a document that carries metadata.revision (a copy saved from `authctl get`) "
    "replaces the resource only while it is still at that revision, else it is refused as changed "
    "meanwhile; --overwrite replaces whatever is stored, and a document without metadata.revision "
    "always does. --force does not do that: it only skips the checks against the CA. Several "
    "documents are all checked first and none is written if one is refused; then they are written one "
    "by one, and if one is refused at that point (a write in between), those written before it stay."
)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "-f",
    "replace",
    is_flag=True,
    help="replace the resource when it exists; with metadata.revision, only if still at that revision",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="with -f: replace whatever revision is stored (metadata.revision is not compared)",
)
@click.option(
    "--force", is_flag=True, help="skip the checks against the CA (never the per-node ownership rule)"
)
@click.option("--check", is_flag=True, help="write nothing: list every problem of the write, one a line")
@click.pass_obj
def create(nodes: NodeChoice, file: str, replace: bool, overwrite: bool, force: bool, check: bool) -> None:
    if overwrite and not replace:
        raise click.UsageError("--overwrite goes with -f")
    text = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    flags = [
        flag for flag, given in (("-f", replace), ("--overwrite", overwrite), ("--force", force)) if given
    ]
    again = " ".join(["authctl create", shlex.quote(file), *flags])  # this command, in a hint
    try:
        resources = parse_override_documents(text)
    except ValidationError as e:
        if check:
            _print_problems(e.problems)
            raise AuthSimError(f"{file}: {len(e.problems)} problem{'s' * (len(e.problems) > 1)}") from None
        raise _with_check_hint(e, f"{again} --check") from None
    writes = [Write(r, _write_mode(r, replace, overwrite), force) for r in resources]
    if check:
        _check_all(nodes, writes, file, again)
    elif len(writes) == 1:
        _report(writes[0], _write_one(nodes, writes[0], again))
    else:
        _write_all(nodes, writes, file, again)


@dataclass(frozen=True)
class Write:
    """One document of `authctl create`, and how it is written."""

    resource: CertAuthorityOverride
    mode: pb.WriteMode
    force: bool

    @property
    def name(self) -> str:
        return f"ca_overrides/{self.resource.ca_type}"


_VERBS = {pb.CREATE: "created", pb.UPSERT: "written", pb.UPDATE: "updated"}


def _write_mode(resource: CertAuthorityOverride, replace: bool, overwrite: bool) -> pb.WriteMode:
    """CREATE without -f; with -f UPDATE (only at the document's revision) when it names one, else UPSERT."""
    if not replace:
        return pb.CREATE
    return pb.UPDATE if resource.revision and not overwrite else pb.UPSERT


def _request(write: Write, check_only: bool = False) -> pb.WriteOverrideRequest:
    return pb.WriteOverrideRequest(
        resource=write.resource.to_proto(), mode=write.mode, force=write.force, check_only=check_only
    )


def _write_one(nodes: NodeChoice, write: Write, again: str) -> pb.WriteResponse:
    """Write one document; a refusal says how to see every problem, or how to replace a newer revision."""
    try:
        with nodes.client() as client:
            reply: pb.WriteResponse = client.call("WriteOverrideResource", _request(write))
            return reply
    except ValidationError as e:
        raise _with_check_hint(e, f"{again} --check") from None
    except AuthSimError as e:
        raise _with_overwrite_hint(e, write, again) from None


def _with_overwrite_hint(error: AuthSimError, write: Write, again: str) -> AuthSimError:
    """A guarded replace refused for its revision: `error`, and how to replace the stored one anyway."""
    if write.mode != pb.UPDATE or not isinstance(error, (ConflictError, NotFoundError)):
        return error
    return type(error)(f"{error}; to write your copy over whatever is stored: `{again} --overwrite`")


def _report(write: Write, reply: pb.WriteResponse) -> None:
    click.echo(
        f"cert_authority_override {write.resource.ca_type} {_VERBS[write.mode]} (revision {reply.revision})"
    )


def _problems(nodes: NodeChoice, write: Write, again: str) -> list[str]:
    """Every problem the node finds with `write`, nothing written; a refusal that is no rule's (the
    resource exists, a newer revision) is its one problem. A node that cannot answer is an error."""
    try:
        with nodes.client() as client:
            reply: pb.WriteResponse = client.call("WriteOverrideResource", _request(write, check_only=True))
    except UnavailableError:
        raise
    except AuthSimError as e:
        return [str(_with_overwrite_hint(e, write, again))]
    return list(reply.problems)


def _check_all(nodes: NodeChoice, writes: list[Write], file: str, again: str) -> None:
    """`--check`: every problem of every document, one a line (with several, each names its resource);
    exit status 1 if any."""
    several = len(writes) > 1
    found = {w.name: _problems(nodes, w, again) for w in writes}
    for write in writes:
        label = f"cert_authority_override {write.resource.ca_type}"
        if not found[write.name]:
            click.echo(f"{label}: no problems (nothing written)")
        _print_problems([f"{label}: {p}" if several else p for p in found[write.name]])
    count = sum(len(p) for p in found.values())
    if count and not several:
        raise AuthSimError(f"cert_authority_override {writes[0].resource.ca_type}: {_problem_count(count)}")
    if count:
        refused = sum(1 for p in found.values() if p)
        raise AuthSimError(f"{file}: {_problem_count(count)} in {refused} of {len(writes)} documents")


def _problem_count(count: int) -> str:
    return f"{count} problem{'s' * (count > 1)}"


def _write_all(nodes: NodeChoice, writes: list[Write], file: str, again: str) -> None:
    """Several documents: each checked first, none written if one is refused; then each written in
    turn. A refusal at that point (a write in between) keeps what is written; the error says which."""
    refused = []
    for write in writes:
        problems = _problems(nodes, write, again)
        if problems:
            more = f" (and {_problem_count(len(problems) - 1)} more)" if len(problems) > 1 else ""
            refused.append(f"{write.name}: {problems[0]}{more}")
    if refused:
        raise AuthSimError(
            f"{file}: nothing written, {len(refused)} of {len(writes)} documents refused: "
            + "; ".join(refused)
            + f" (every problem: `{again} --check`)"
        )
    for index, write in enumerate(writes):
        try:
            reply = _write_one(nodes, write, again)
        except AuthSimError as e:
            written = ", ".join(w.name for w in writes[:index]) or "none"
            missed = ", ".join(w.name for w in writes[index:])
            raise AuthSimError(
                f"{write.name}: {e}; written before it, and kept: {written}; not written: {missed}"
            ) from None
        _report(write, reply)


@cli.command(help="Edit ca_overrides/TYPE in $EDITOR; saved only if nobody changed it meanwhile.")
@click.argument("resource", shell_complete=completion.override)
@click.option(
    "--force", is_flag=True, help="skip the checks against the CA (never the per-node ownership rule)"
)
@click.pass_obj
def edit(nodes: NodeChoice, resource: str, force: bool) -> None:
    name = _split(resource, OVERRIDE_KINDS, True, "edit", EDIT_TAKES)
    with nodes.client() as client:
        reply = client.call("ListOverrides", pb.GetOverrideRequest(type=name))
    original = CertAuthorityOverride.from_proto(reply.overrides[0]).to_yaml()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"ca_overrides-{name}-", delete=False) as f:
        f.write(original)
        path = Path(f.name)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    if subprocess.run([*shlex.split(editor), str(path)]).returncode != 0:
        raise AuthSimError(f"editor {editor!r} failed; your text is in {path}")
    edited = path.read_bytes()
    if edited == original.encode():
        path.unlink()
        click.echo("no changes")
        return
    try:
        result = _write(nodes, parse_override_yaml(edited, revision_required=True), pb.UPDATE, force)
    except AuthSimError as e:
        if isinstance(e, ValidationError):
            e = _with_check_hint(e, "authctl create -f FILE --check")
        message = f"{e}; your edited text is kept in {_keep(path, name)}"
        if isinstance(e, OutcomeUnknownError):
            raise OutcomeUnknownError(message, e.request_id) from None
        raise AuthSimError(message) from None
    path.unlink()
    click.echo(f"cert_authority_override {name} updated (revision {result.revision})")


def _keep(edited: Path, name: str) -> Path:
    """Move the edited text to a file of its own in the current folder (in place if that fails)."""
    try:
        fd, kept = tempfile.mkstemp(prefix=f"ca_overrides-{name}.", suffix=".yaml", dir=Path.cwd())
    except OSError:
        return edited
    with os.fdopen(fd, "wb") as f:
        f.write(edited.read_bytes())
    edited.unlink()
    return Path(kept)


@cli.command(help="Remove ca_overrides/TYPE, or a stored cas/TYPE that breaks a rule.")
@click.argument("resource", shell_complete=completion.removable)
@click.option("--force", is_flag=True, help="also when it holds an enabled override of an active key")
@click.pass_obj
def rm(nodes: NodeChoice, resource: str, force: bool) -> None:
    if resource.partition("/")[0] in CA_KINDS:
        name = _split(resource, CA_KINDS, True, "rm", RM_TAKES)
        with nodes.client() as client:
            removed = client.call("DeleteCertAuthority", pb.DeleteCertAuthorityRequest(type=name))
        click.echo(
            f"cert_authority {name} removed (revision {removed.revision}): restart the nodes "
            "(`authsim down && authsim up`) to record their keys again"
        )
        return
    name = _split(resource, OVERRIDE_KINDS, True, "rm", RM_TAKES)
    with nodes.client() as client:
        reply = client.call(
            "DeleteOverrideResource", pb.DeleteOverrideResourceRequest(type=name, force=force)
        )
    click.echo(f"cert_authority_override {name} removed (revision {reply.revision})")


@cli.command(
    help="Show the node (its host id, token and the CA keys its token holds), and whether etcd, every "
    "node of the dir's cluster.yaml and every target answer from here. Exit status: 0 when all are "
    "healthy (SERVING, no stored resource breaking a rule), 1 when one is not (listed under "
    "`unhealthy`) or no node answers, 2 when the dir holds no cluster."
)
@format_option("text")
@click.pass_obj
def status(nodes: NodeChoice, fmt: str) -> None:
    if nodes.auth_server is None:
        cluster_dir_of_cluster(str(nodes.directory))
    with nodes.client() as client:
        reply = client.node_status()
    seen = None if nodes.auth_server else reachability(nodes.directory)
    unhealthy = (seen.unhealthy() if seen else []) + [f"problem: {p}" for p in reply.problems]
    data = {
        "node": reply.node_name,
        "host_id": reply.host_id,
        "cluster_name": reply.cluster_name,
        "token_label": reply.token_label,
        "keys": [
            {"ca_type": k.ca_type, "role": k.role, "public_key_hash": k.public_key_hash, "key_id": k.key_id}
            for k in reply.keys
        ],
        "problems": list(reply.problems),
        "expiry_alerts": [
            {
                "ca_type": e.ca_type,
                "public_key_hash": e.public_key_hash,
                "node": e.node_name,
                "level": e.level,
                "not_after": e.not_after,
                "disabled": e.disabled,
            }
            for e in reply.expiry_alerts
        ],
        "healthy": not unhealthy,
        "unhealthy": unhealthy,
    }
    if seen is not None:
        data |= {
            "etcd": {"endpoints": seen.etcd_endpoints, "health": seen.etcd_health, "error": seen.etcd_error},
            "nodes": [{"name": r.name, "address": r.address, "health": r.health} for r in seen.nodes],
            "targets": [{"name": r.name, "address": r.address, "health": r.health} for r in seen.targets],
        }
    if fmt == "text":
        _print_node_status(reply, seen)
        down = [part for part in unhealthy if not part.startswith("problem: ")]
        if down:
            console.print(f"unhealthy: {', '.join(down)}", markup=False, style="red")
    else:
        print_data(data, fmt)
    if unhealthy:
        raise click.exceptions.Exit(UNHEALTHY_EXIT)


def _print_node_status(reply: pb.NodeStatus, seen: Reachability | None) -> None:
    console.print(
        cell(
            f"node {reply.node_name}  host id {reply.host_id}  cluster {reply.cluster_name}  "
            f"token {reply.token_label}"
        )
    )
    table = Table("CA TYPE", "ROLE", "PUBLIC KEY HASH", "KEY ID")
    for column in table.columns:
        column.overflow = "fold"
    for k in reply.keys:
        table.add_row(cell(k.ca_type), cell(k.role), cell(k.public_key_hash), cell(k.key_id))
    console.print(table)
    if seen is not None:
        parts = Table("PART", "ADDRESS", "HEALTH")
        parts.columns[1].no_wrap = True
        parts.add_row(cell("etcd"), cell_lines("\n".join(seen.etcd_endpoints)), cell(seen.etcd_health))
        for row in seen.nodes + seen.targets:
            parts.add_row(cell(row.name), cell(row.address), cell(row.health))
        console.print(parts)
        if seen.etcd_error:
            console.print(f"etcd: {one_line(seen.etcd_error)}", markup=False, style="red")
    for problem in reply.problems:
        console.print(f"problem: {one_line(problem)}", markup=False, style="red")
    for alert in reply.expiry_alerts:
        console.print(one_line(expiry_line(alert)), markup=False, style="yellow")


def print_cert_authority(ca: CertAuthority, keys: list[EffectiveKey], host_names: dict[str, str]) -> None:
    """The CA's keys, each with its holder and override state; then each override entry's certificate."""
    console.print(
        cell(
            f"cert_authority {ca.ca_type}  cluster {ca.cluster_name}  revision {ca.revision}  "
            f"rotation {ca.rotation_state}"
        )
    )
    table = Table("ROLE", "PUBLIC KEY HASH", "HOST ID", "NODE", "NOT AFTER", "OVERRIDE")
    for key in keys:
        cert = x509.load_pem_x509_certificate(key.pair.cert_pem.encode())
        table.add_row(
            cell(key.role),
            cell(key.pair.public_key_hash[:16]),
            cell(key.pair.key.host_id),
            cell(host_names.get(key.pair.key.host_id, "?")),
            cell(cert.not_valid_after_utc.strftime("%Y-%m-%d")),
            cell(key.state),
        )
    console.print(table)
    entries = [k for k in keys if k.entry is not None]
    if not entries:
        return
    overrides = Table("OVERRIDE OF KEY", "STATE", "SUBJECT", "ISSUER", "NOT AFTER", "CHAIN")
    for key in entries:
        found = key.override_dict()
        overrides.add_row(
            cell(key.pair.public_key_hash[:16]),
            cell(key.state),
            cell(found.get("subject", "-")),
            cell(found.get("issuer", "-")),
            cell(found.get("not_after", "-")[:10] or "-"),
            cell(found.get("chain_length", "-")),
        )
    console.print(overrides)


auth.add_command(revoke)
auth.add_command(crl)
cli.add_command(auth)
auth.add_command(export)


add_examples(cli, "authctl")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(cli, argv, "authctl")


if __name__ == "__main__":
    sys.exit(main())
