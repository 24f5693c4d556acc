"""`authsim external-ca`: a stand-in external CA that signs override CSRs (seed step 2)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization

from authsim.cluster.cli.common import run_cli
from authsim.cluster.cli.pem_files import read_pem_block
from authsim.cluster.errors import ValidationError
from authsim.cluster.local.external_ca import DEFECTS, OPENSSL_SIGN_COMMAND, ExternalCA, init
from authsim.cluster.secret_files import write_all

dir_option = click.option(
    "--dir", "directory", required=True, type=click.Path(file_okay=False), help="the external CA's directory"
)


@click.group(name="external-ca", help="A stand-in external CA: a root and an intermediate that sign CSRs.")
def external_ca() -> None:
    pass


@external_ca.command(name="init", help="Create the root and intermediate CA (kept if already there).")
@dir_option
@click.option("--name", default="authsim external root", show_default=True, help="the root's CN")
def init_command(directory: str, name: str) -> None:
    path = Path(directory)
    files = ["root.pem", "root.key", "intermediate.pem", "intermediate.key"]
    existed = {f for f in files if (path / f).is_file()}
    ca = init(path, name)
    for f in files:
        click.echo(f"{'Kept' if f in existed else 'Wrote'} {path / f}")
    click.echo(f"Wrote {ca.chain_path}")
    click.echo(f"Wrote {ca.extfile_path}")
    click.echo(f"Sign CSRs with: authsim external-ca sign --dir {path} CSR_FILE... --out-dir DIR")
    click.echo(f"(OpenSSL equivalent, run in {path}: {OPENSSL_SIGN_COMMAND})")


@external_ca.command(help="Write the root's and the intermediate's CRLs (PEM, nothing revoked) to OUT.")
@dir_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the CRL file written")
def crl(directory: str, out: str) -> None:
    write_all({Path(out): ExternalCA.load(Path(directory)).crls()}, public={Path(out)})
    click.echo(f"Wrote {out}")


@external_ca.command(help="Sign each CSR file (one CSR per file) as an override CA certificate.")
@dir_option
@click.argument(
    "csr_files", nargs=-1, required=True, metavar="CSR_FILE...", type=click.Path(exists=True, dir_okay=False)
)
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="where to write certs")
@click.option("--days", type=click.IntRange(1), default=365, show_default=True, help="validity in days")
@click.option(
    "--defect",
    "defects",
    multiple=True,
    type=click.Choice(list(DEFECTS)),
    help="break a rule on purpose (repeatable): " + "; ".join(f"{k}: {v}" for k, v in DEFECTS.items()),
)
def sign(
    directory: str, csr_files: tuple[str, ...], out_dir: str, days: int, defects: tuple[str, ...]
) -> None:
    ca = ExternalCA.load(Path(directory))
    out = Path(out_dir)
    problems: list[str] = []
    outputs: dict[Path, bytes] = {}
    for csr_file in csr_files:
        target = out / f"{cert_name(csr_file)}.pem"
        try:
            csr = read_pem_block(csr_file, "CERTIFICATE REQUEST")  # not a CSR: said first
            if _taken(target, csr_file, outputs):
                problems.append(
                    f"{csr_file}: its certificate would be {target}, which is taken; rename the file"
                )
                continue
            cert = ca.sign_csr(csr, days=days, defects=frozenset(defects))
        except ValidationError as e:
            problems += [p if p.startswith(csr_file) else f"{csr_file}: {p}" for p in e.problems]
            continue
        outputs[target] = cert.public_bytes(serialization.Encoding.PEM)
    if problems:
        raise ValidationError(problems)
    out.mkdir(parents=True, exist_ok=True)
    for target, pem in outputs.items():
        target.write_bytes(pem)
        click.echo(f"Wrote {target}")
    (out / "chain.pem").write_bytes(ca.chain_pem)
    click.echo(f"Wrote {out / 'chain.pem'}")


def _taken(target: Path, csr_file: str, outputs: dict[Path, bytes]) -> bool:
    """The certificate's name is the chain's, another CSR's certificate's, or the CSR file itself."""
    return target.name == "chain.pem" or target in outputs or target.resolve() == Path(csr_file).resolve()


def cert_name(csr_file: str) -> str:
    """The certificate's base name: the CSR file name without `-csr.pem`, `.csr` or `.pem`."""
    name = Path(csr_file).name
    for suffix in ("-csr.pem", ".csr", ".pem"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(external_ca, argv, "authsim external-ca")


if __name__ == "__main__":
    sys.exit(main())
