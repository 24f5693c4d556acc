"""Effective CAs: a CA read together with its override resource, and `authctl auth export`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.cli.authctl_auth import out_option, short_hash_length, type_option, write_outputs
from authsim.cluster.cli.node_choice import NodeChoice
from authsim.cluster.cli.safe_text import escaped
from authsim.cluster.errors import UnavailableError
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.effective import EffectiveKey, certificate_summary, effective_keys
from authsim.cluster.resources.override import CertAuthorityOverride
from authsim.cluster.resources.stored import cert_authority_fix, override_fix, stored_error

SNAPSHOT_ATTEMPTS = 5  # reads of the CA before giving up on one that keeps changing
NTAUTH_TYPE = "windows"  # its certificates go to the NTAuth store


@dataclass(frozen=True)
class Snapshot:
    """A CA and its override resource as they stood together at one moment (as the node returned them:
    each may carry the rules its stored value breaks)."""

    ca: pb.CertAuthority
    override: pb.CertAuthorityOverride | None  # None: there is no override resource for this type

    @property
    def cert_authority(self) -> CertAuthority:
        """The CA; StoredDataError naming the rule and the fix when its stored value breaks one."""
        if self.ca.problems:
            name = f"cas/{self.ca.type}"
            raise stored_error(
                name, self.ca.revision, list(self.ca.problems), cert_authority_fix(self.ca.type)
            )
        return CertAuthority.from_proto(self.ca)

    @property
    def override_resource(self) -> CertAuthorityOverride | None:
        """The override resource, None when there is none; issuance under a stored one that breaks a rule
        refuses, so its entries say nothing about what downstream must trust: StoredDataError then."""
        if self.override is None:
            return None
        if self.override.problems:
            name = f"ca_overrides/{self.ca.type}"
            problems = list(self.override.problems)
            raise stored_error(name, self.override.revision, problems, override_fix(self.ca.type))
        return CertAuthorityOverride.from_proto(self.override)


def read_snapshot(client: NodeClient, ca_type: str) -> Snapshot:
    """The CA of `ca_type` and its override resource as one snapshot: the CA is read again after the
    override, and the pair is kept once the CA's revision did not change in between (so the CA read
    was the stored one while the override was read). Three reads when nothing changes."""
    ca = client.get_cert_authority(ca_type)
    for _ in range(SNAPSHOT_ATTEMPTS):
        listed: pb.ListOverridesResponse = client.call("ListOverrides", pb.GetOverrideRequest())
        again = client.get_cert_authority(ca_type)
        if again.revision == ca.revision:
            return Snapshot(again, next((o for o in listed.overrides if o.type == again.type), None))
        ca = again
    raise UnavailableError(
        f"cas/{ca.type} changed during each of {SNAPSHOT_ATTEMPTS} reads of it with its override: "
        "try again when the CA is not being changed"
    )


@click.command(
    "export",
    help="Export what downstream must trust for CA TYPE: for every key of every node, the certificate of "
    "its enabled override, else its self-signed CA certificate. Without --out, PEM on stdout; with --out, "
    "one file per key (PREFIX<type>-<hash>.pem, or .cer with --format der) and each enabled override's "
    "chain in PREFIX<type>-<hash>-chain.pem; for windows, the certutil line that adds each file to NTAuth.",
)
@type_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pem", "der"]),
    default="pem",
    show_default=True,
    help="file format; der (.cer files, as NTAuth takes them) needs --out",
)
@out_option("PREFIX of the files written (all or none)")
@click.option("--self-signed", is_flag=True, help="only the self-signed CA certificates, overrides ignored")
@click.pass_obj
def export(nodes: NodeChoice, ca_type: str, fmt: str, out: str, self_signed: bool) -> None:
    if fmt == "der" and not out:
        raise click.UsageError("--format der writes one file per certificate: give --out PREFIX")
    with nodes.client() as client:
        snapshot = read_snapshot(client, ca_type)
    ca = snapshot.cert_authority
    keys = effective_keys(ca, None if self_signed else snapshot.override_resource)
    if not out:
        for key in keys:
            click.echo(_pem(key), nl=False)
        return
    paths = _export_paths(out, ca.ca_type, keys, fmt)
    files: dict[Path, bytes] = {}
    for key, path in zip(keys, paths, strict=True):
        files[path] = _pem(key).encode() if fmt == "pem" else _der(_pem(key))
        if key.trusted_chain:
            files[_chain_path(path)] = "".join(c.strip() + "\n" for c in key.trusted_chain).encode()
    write_outputs(files, public=files.keys())
    names = nodes.host_names()
    for key, path in zip(keys, paths, strict=True):
        click.echo(_described(key, path, names, self_signed))
        if ca.ca_type == NTAUTH_TYPE:
            click.echo(f"  certutil -dspublish -f {_windows_argument(path)} NTAuthCA")


def _pem(key: EffectiveKey) -> str:
    return key.trusted_certificate.strip() + "\n"


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)


def _export_paths(prefix: str, ca_type: str, keys: list[EffectiveKey], fmt: str) -> list[Path]:
    """`PREFIX<type>-<hash prefix>.pem|.cer`, the shortest hash prefix (≥ 8) unique among the keys."""
    length = short_hash_length([k.pair.public_key_hash for k in keys])
    suffix = ".pem" if fmt == "pem" else ".cer"
    return [Path(f"{prefix}{ca_type}-{k.pair.public_key_hash[:length]}{suffix}") for k in keys]


def _chain_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-chain.pem")


def _described(key: EffectiveKey, path: Path, names: dict[str, str], self_signed: bool) -> str:
    """`PATH: key H (node, role): which certificate it is, and the key's override state`."""
    node = names.get(key.pair.key.host_id, key.pair.key.host_id)
    if key.state == "enabled":
        subject = certificate_summary(key.trusted_certificate)["subject"]
        chain = f", chain in {_chain_path(path)}" if key.trusted_chain else ""
        what = f"override certificate {subject}{chain}"
    else:
        what = "self-signed CA certificate" + ("" if self_signed else f" (override: {key.state})")
    return escaped(f"{path}: key {key.pair.public_key_hash[:16]} ({node}, {key.role}): {what}")


def _windows_argument(path: Path) -> str:
    """`path` as one cmd.exe argument: in double quotes when it holds a space."""
    return f'"{path}"' if " " in str(path) else str(path)
