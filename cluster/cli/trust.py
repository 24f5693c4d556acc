"""`authsim trust`: configure what the desktop and database targets trust (seed step 3)."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.cli.common import dir_option
from authsim.cluster.errors import ClusterError, ValidationError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local.downstream import reload_trust
from authsim.cluster.local.state import cluster_dir
from authsim.cluster.resources.x509 import display_name
from authsim.cluster.secret_files import write_all
from authsim.cluster.targets.crls import PEM_CRL as _PEM_CRL
from authsim.cluster.targets.trust import TargetKind, add_trust, parse_certificates, read_trust

_FILE = click.Path(exists=True, dir_okay=False)


@click.command(
    help="Add CA certificates to a target's trust; without --ntauth/--ca, show what it trusts. "
    "windows: NTAuth needs the override CA certificate itself, --ca the external root and intermediates. "
    "db_client: the database needs only the external root (and intermediates) in --ca."
)
@dir_option
@click.option("--target", type=click.Choice(["desktop", "db"]), required=True, help="which target")
@click.option("--ntauth", "ntauth_files", multiple=True, type=_FILE, help="PEM file for NTAuth (desktop)")
@click.option("--ca", "ca_files", multiple=True, type=_FILE, help="PEM file of roots/intermediates")
@click.option("--replace", is_flag=True, help="each store given files holds only their certificates")
@click.option(
    "--crl",
    "crl_files",
    multiple=True,
    type=_FILE,
    help="PEM CRLs of other issuers (an external CA's) the target's server checks beside the cluster's; "
    "replaces those given before",
)
def trust(
    directory: str | None,
    target: str,
    ntauth_files: tuple[str, ...],
    ca_files: tuple[str, ...],
    replace: bool,
    crl_files: tuple[str, ...],
) -> None:
    path = cluster_dir(directory)
    if not ClusterLayout(path).targets_dir.is_dir():
        raise ClusterError(f"no targets in {path}: run `authsim up --dir {path}` first")
    kind: TargetKind = "desktop" if target == "desktop" else "db"
    if crl_files:
        _set_crls(ClusterLayout(path).target(kind).admin_crls, crl_files)
        if not ntauth_files and not ca_files:
            return
    if not ntauth_files and not ca_files:
        if replace:
            raise ValidationError(["--replace: give the certificates to keep with --ntauth or --ca"])
        current = read_trust(path, kind)
        stores = [("NTAuth store", current.ntauth)] if kind == "desktop" else []
        for label, certs in [*stores, ("CA bundle", current.ca)]:
            click.echo(f"{target} {label}: {len(certs)} certificate(s)")
            for cert in certs:
                click.echo(f"  {display_name(cert.subject)}")
        return
    ntauth, ca = _read_all(ntauth_files), _read_all(ca_files)
    for line in add_trust(path, kind, ntauth=ntauth, ca=ca, replace=replace):
        click.echo(line)
    reloaded = reload_trust(path, kind)
    if reloaded is not None:
        click.echo(reloaded)


def _set_crls(destination: Path, files: tuple[str, ...]) -> None:
    """Keep the CRLs of `files` for the target (PEM); a file without one is refused, nothing written.
    The target installs them into its server with the cluster's before its next session."""
    pems = []
    for name in files:
        try:
            crls = [x509.load_pem_x509_crl(b) for b in _PEM_CRL.findall(Path(name).read_bytes())]
        except ValueError as e:
            raise ValidationError([f"--crl {name}: not a PEM CRL: {e}"]) from None
        if not crls:
            raise ValidationError([f"--crl {name}: no PEM CRL (-----BEGIN X509 CRL-----) in it"])
        pems += [crl.public_bytes(Encoding.PEM) for crl in crls]
        for crl in crls:
            click.echo(f"CRL of {display_name(crl.issuer)}: {len(crl)} revoked")
    write_all({destination: b"".join(pems)}, public={destination})
    click.echo(f"Wrote {destination}")


def _read_all(files: tuple[str, ...]) -> list[bytes]:
    """Each file's bytes, every file that holds no CA certificate reported by name in one error."""
    blobs, problems = [], []
    for name in files:
        blob = Path(name).read_bytes()
        try:
            parse_certificates(blob, name)
        except ValidationError as e:
            problems += e.problems
        blobs.append(blob)
    if problems:
        raise ValidationError(problems)
    return blobs
