"""Tests of the stand-in external CA (cluster.external_ca, its CLI) and cluster.cert_files.

`openssl` is the independent checker. A user whose external CA is OpenSSL signs an override CSR with
this extfile (`ext.cnf`), the same as `cluster.external_ca.OPENSSL_EXTFILE`:

    basicConstraints=critical,CA:TRUE,pathlen:0
    keyUsage=critical,keyCertSign,cRLSign
    subjectKeyIdentifier=hash
    authorityKeyIdentifier=keyid:always

and this command (the subject comes from the CSR; `-copy_extensions` is not needed, and the CSR's own
extensions, if any, are ignored):

    openssl x509 -req -in CSR -CA intermediate.pem -CAkey intermediate.key -CAcreateserial \\
        -days 365 -sha256 -extfile ext.cnf -out cert.pem

`test_openssl_command_gives_the_same_extensions` runs exactly that and compares the result.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from authsim.cluster.cli import external_ca as external_ca_cli
from authsim.cluster.cli.pem_files import ca_public_key, read_pem_block, read_pem_certificate
from authsim.cluster.errors import ClusterError, NotFoundError, ValidationError
from authsim.cluster.local.external_ca import (
    DEFECTS,
    OPENSSL_EXTFILE,
    OPENSSL_SIGN_COMMAND,
    WRONG_CLUSTER,
    ExternalCA,
    init,
)
from authsim.cluster.resources.subject import CLUSTER_NAME_OID
from authsim.cluster.resources.x509 import ca_certificate_builder, public_key_hash
from tests.certs import openssl_key_hash

ROOT = Path(__file__).resolve().parent.parent
PLAIN = [(NameOID.ORGANIZATION_NAME, "mycluster"), (NameOID.COMMON_NAME, "mycluster")]
CUSTOM = [
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "My Organization Unit"),
    (NameOID.COMMON_NAME, "My Windows CA"),
    (NameOID.ORGANIZATION_NAME, "mycluster"),
]
OTHER_O = [
    (NameOID.ORGANIZATION_NAME, "Example Corp"),
    (NameOID.COMMON_NAME, "Example CA"),
    (CLUSTER_NAME_OID, "mycluster"),
]


def make_csr(attributes: list[tuple[x509.ObjectIdentifier, str]]) -> tuple[bytes, rsa.RSAPrivateKey]:
    """A PEM CSR for a new software RSA-2048 key, subject attributes in the order given."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, cwd=cwd, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ExternalCA:
    return init(tmp_path_factory.mktemp("external") / "ca")


@pytest.fixture(scope="module")
def plain_csr() -> tuple[bytes, rsa.RSAPrivateKey]:
    return make_csr(PLAIN)


def test_init_is_idempotent_with_private_keys(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    first = init(directory)
    second = init(directory)
    assert pem(second.root) == pem(first.root)
    assert pem(second.intermediate) == pem(first.intermediate)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("root.key", "intermediate.key"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates((directory / "chain.pem").read_bytes())
    assert [c.subject for c in chain] == [first.intermediate.subject, first.root.subject]
    assert first.intermediate.issuer == first.root.subject
    assert first.root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length is None
    assert first.intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert pem(ExternalCA.load(directory).intermediate) == pem(first.intermediate)


def test_load_without_init_says_how(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=r"no external CA in .*: run `authsim external-ca init --dir "):
        ExternalCA.load(tmp_path)


@pytest.mark.parametrize("attributes", [PLAIN, CUSTOM, OTHER_O], ids=["plain", "custom", "oid"])
def test_signed_certificate_checks_out_with_openssl(
    ca: ExternalCA, tmp_path: Path, attributes: list[tuple[x509.ObjectIdentifier, str]]
) -> None:
    csr_pem, key = make_csr(attributes)
    cert = ca.sign_csr(csr_pem)
    csr = x509.load_pem_x509_csr(csr_pem)
    assert cert.subject.public_bytes() == csr.subject.public_bytes()
    assert cert.public_key() == csr.public_key()
    (tmp_path / "cert.pem").write_bytes(pem(cert))
    out = openssl(
        "verify", "-x509_strict", "-CAfile", str(ca.directory / "root.pem"),
        "-untrusted", str(ca.directory / "intermediate.pem"), str(tmp_path / "cert.pem"),
    )  # fmt: skip
    assert out.strip().endswith("cert.pem: OK")
    text = openssl("x509", "-noout", "-text", "-in", str(tmp_path / "cert.pem"))
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0\n", text)
    assert re.search(r"X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign\n", text)
    assert "X509v3 Subject Key Identifier" in text and "X509v3 Authority Key Identifier" in text

    # The override CA can issue a leaf that verifies up to the external root (path lengths fit).
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
        .issuer_name(cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    (tmp_path / "untrusted.pem").write_bytes(pem(cert) + pem(ca.intermediate))
    out = openssl(
        "verify", "-CAfile", str(ca.directory / "root.pem"),
        "-untrusted", str(tmp_path / "untrusted.pem"), str(tmp_path / "leaf.pem"),
    )  # fmt: skip
    assert out.strip().endswith("leaf.pem: OK")


def _summary(cert: x509.Certificate) -> dict[str, object]:
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    return {
        "ca": basic.value.ca,
        "path_length": basic.value.path_length,
        "cert_sign": usage.value.key_cert_sign,
        "crl_sign": usage.value.crl_sign,
        "critical": (basic.critical, usage.critical),
        "subject": cert.subject,
        "expired": cert.not_valid_after_utc < dt.datetime.now(dt.timezone.utc),
        "years": round((cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365),
    }


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_breaks_exactly_its_rule(ca: ExternalCA, defect: str) -> None:
    csr_pem, _ = make_csr(OTHER_O)
    good, bad = _summary(ca.sign_csr(csr_pem)), _summary(ca.sign_csr(csr_pem, defects=frozenset({defect})))
    wrong_subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, WRONG_CLUSTER),
            x509.NameAttribute(NameOID.COMMON_NAME, "Example CA"),
            x509.NameAttribute(CLUSTER_NAME_OID, WRONG_CLUSTER),
        ]
    )
    changes: dict[str, dict[str, object]] = {
        "no-crl-sign": {"crl_sign": False},
        "no-cert-sign": {"cert_sign": False},
        "not-ca": {"ca": False, "path_length": None},
        "wrong-cluster": {"subject": wrong_subject},
        "expired": {"expired": True, "years": 0},
        "outlive": {"years": 30},
    }
    assert bad == {**good, **changes[defect]}


def test_wrong_cluster_replaces_only_the_first_o(ca: ExternalCA) -> None:
    csr_pem, _ = make_csr([*CUSTOM, (NameOID.ORGANIZATION_NAME, "second")])
    cert = ca.sign_csr(csr_pem, defects=frozenset({"wrong-cluster"}))
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        WRONG_CLUSTER,
        "second",
    ]


def test_days_and_not_after(ca: ExternalCA, plain_csr: tuple[bytes, rsa.RSAPrivateKey]) -> None:
    cert = ca.sign_csr(plain_csr[0], days=10)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 10
    until = dt.datetime(2030, 1, 2, tzinfo=dt.timezone.utc)
    assert ca.sign_csr(plain_csr[0], not_after=until).not_valid_after_utc == until


def test_bad_arguments_are_all_reported(ca: ExternalCA) -> None:
    with pytest.raises(ValidationError) as e:
        ca.sign_csr(b"junk", days=0, defects=frozenset({"nope", "expired", "outlive"}))
    assert e.value.problems == [
        f"defects: unknown 'nope' (known: {', '.join(DEFECTS)})",
        "days: must be at least 1, got 0",
        "defects: 'expired' and 'outlive' cannot be combined",
        "csr: not a PEM certificate request",
    ]


def test_csr_with_broken_signature_is_refused(
    ca: ExternalCA, plain_csr: tuple[bytes, rsa.RSAPrivateKey]
) -> None:
    der = bytearray(x509.load_pem_x509_csr(plain_csr[0]).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValidationError) as e:
        ca.sign_csr(tampered)
    assert e.value.problems == ["csr: signature does not verify"]


def test_openssl_command_gives_the_same_extensions(
    ca: ExternalCA, tmp_path: Path, plain_csr: tuple[bytes, rsa.RSAPrivateKey]
) -> None:
    doc = " ".join((__doc__ or "").replace("\\\n", " ").split())
    assert " ".join(OPENSSL_EXTFILE.split()) in doc and " ".join(OPENSSL_SIGN_COMMAND.split()) in doc
    (tmp_path / "csr.pem").write_bytes(plain_csr[0])
    (tmp_path / "ext.cnf").write_text(OPENSSL_EXTFILE)
    for name in ("intermediate.pem", "intermediate.key"):
        (tmp_path / name).write_bytes((ca.directory / name).read_bytes())
    command = [{"CSR": "csr.pem"}.get(arg, arg) for arg in shlex.split(OPENSSL_SIGN_COMMAND)]
    openssl(*command[1:], cwd=tmp_path)
    theirs = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    ours = ca.sign_csr(plain_csr[0])
    assert theirs.subject.public_bytes() == ours.subject.public_bytes()
    assert theirs.issuer == ours.issuer
    assert list(theirs.extensions) == list(ours.extensions)  # same order, criticality and values
    assert (theirs.not_valid_after_utc - theirs.not_valid_before_utc).days == 365


def test_cli_init_writes_the_extfile_its_openssl_line_names(tmp_path: Path) -> None:
    """`init` prints an OpenSSL command naming `-extfile ext.cnf`: that file is there, and the command,
    run where it says, signs a CSR."""
    ca_dir = tmp_path / "ca"
    result = CliRunner().invoke(external_ca_cli.external_ca, ["init", "--dir", str(ca_dir)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {ca_dir / 'ext.cnf'}" in result.output.splitlines()
    assert f"(OpenSSL equivalent, run in {ca_dir}: {OPENSSL_SIGN_COMMAND})" in result.output
    assert (ca_dir / "ext.cnf").read_text() == OPENSSL_EXTFILE
    (ca_dir / "csr.pem").write_bytes(make_csr(PLAIN)[0])
    command = [{"CSR": "csr.pem"}.get(arg, arg) for arg in shlex.split(OPENSSL_SIGN_COMMAND)]
    openssl(*command[1:], cwd=ca_dir)
    cert = x509.load_pem_x509_certificate((ca_dir / "cert.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_cli_sign_writes_one_file_per_csr(tmp_path: Path) -> None:
    runner = CliRunner()
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    result = runner.invoke(external_ca_cli.external_ca, ["init", "--dir", str(ca_dir)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {ca_dir / 'root.key'}" in result.output
    again = runner.invoke(external_ca_cli.external_ca, ["init", "--dir", str(ca_dir)])
    assert f"Kept {ca_dir / 'root.key'}" in again.output

    names = {"windows-ab12cd34-csr.pem": "windows-ab12cd34.pem", "db.csr": "db.pem", "x.pem": "x.pem"}
    csrs = {}
    for name in names:
        csrs[name], _ = make_csr(PLAIN)
        (tmp_path / name).write_bytes(b"some text before\n" + csrs[name])
    args = ["sign", "--dir", str(ca_dir), *[str(tmp_path / n) for n in names], "--out-dir", str(out)]
    result = runner.invoke(external_ca_cli.external_ca, [*args, "--defect", "no-crl-sign", "--days", "30"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"Wrote {out / n}" for n in [*names.values(), "chain.pem"]]
    for csr_name, cert_name in names.items():
        cert = x509.load_pem_x509_certificate((out / cert_name).read_bytes())
        assert cert.public_key() == x509.load_pem_x509_csr(csrs[csr_name]).public_key()
        assert not cert.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    assert (out / "chain.pem").read_bytes() == (ca_dir / "chain.pem").read_bytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("windows-ab12cd34-csr.pem", "windows-ab12cd34"),
        ("a.csr", "a"),
        ("b.pem", "b"),
        ("c", "c"),
        (".pem", ".pem"),
    ],
)
def test_cert_name(name: str, expected: str) -> None:
    assert external_ca_cli.cert_name(f"some/dir/{name}") == expected


def test_cli_refuses_bad_csr_files(
    ca: ExternalCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two, _ = make_csr(PLAIN)
    (tmp_path / "two-csr.pem").write_bytes(two + make_csr(PLAIN)[0])
    (tmp_path / "chain-csr.pem").write_bytes(two)
    out = tmp_path / "out"
    argv = [
        "sign",
        "--dir",
        str(ca.directory),
        str(tmp_path / "two-csr.pem"),
        str(tmp_path / "chain-csr.pem"),
        str(ca.chain_path),  # certificates, not a CSR: said as such, not as a taken name
    ]
    assert external_ca_cli.main([*argv, "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'two-csr.pem'}: expected exactly one PEM CERTIFICATE REQUEST block, found 2" in err
    assert (
        f"{tmp_path / 'chain-csr.pem'}: its certificate would be {out / 'chain.pem'}, which is taken" in err
    )
    not_a_csr = "expected exactly one PEM CERTIFICATE REQUEST block, found 0 (found: CERTIFICATE)"
    assert f"{ca.chain_path}: {not_a_csr}" in err
    assert f"{ca.chain_path}: its certificate" not in err
    assert not out.exists()  # nothing written when any file fails


def test_cli_as_python_module(tmp_path: Path) -> None:
    csr_pem, _ = make_csr(CUSTOM)
    broken = csr_pem.replace(
        b"-----BEGIN CERTIFICATE REQUEST-----\n", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA"
    )
    (tmp_path / "ok-csr.pem").write_bytes(csr_pem)
    (tmp_path / "broken-csr.pem").write_bytes(broken)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "authsim.cluster.cli.external_ca", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)

    assert run("init", "--dir", str(tmp_path / "ca")).returncode == 0
    sign = ["sign", "--dir", str(tmp_path / "ca"), "--out-dir", str(tmp_path / "out")]
    done = run(*sign, str(tmp_path / "ok-csr.pem"))
    assert (done.returncode, done.stdout.splitlines()[0]) == (0, f"Wrote {tmp_path / 'out' / 'ok.pem'}")
    done = run(*sign, str(tmp_path / "broken-csr.pem"))
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {tmp_path / 'broken-csr.pem'}: csr: ")
    done = run(
        "sign", "--dir", str(tmp_path / "none"), "--out-dir", str(tmp_path), str(tmp_path / "ok-csr.pem")
    )
    assert done.returncode == 1 and "run `authsim external-ca init --dir" in done.stderr


def test_read_pem_certificate(
    ca: ExternalCA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plain_csr: tuple[bytes, rsa.RSAPrivateKey],
) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(b"Certificate:\n  text openssl prints\n" + pem(ca.root))
    assert read_pem_certificate(str(path)) == ca.root
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(pem(ca.intermediate))))
    assert read_pem_certificate("-") == ca.intermediate

    path.write_bytes(ca.chain_pem)
    with pytest.raises(
        ValidationError, match=rf"^{re.escape(str(path))}: expected exactly one PEM CERTIFICATE"
    ):
        read_pem_certificate(str(path))
    path.write_bytes(plain_csr[0])
    with pytest.raises(ValidationError, match=r"found 0 \(found: CERTIFICATE REQUEST\)$"):
        read_pem_certificate(str(path))
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValidationError, match="not a valid certificate"):
        read_pem_certificate(str(path))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with pytest.raises(
        ValidationError, match=r"^<stdin>: expected exactly one PEM CERTIFICATE block, found 0$"
    ):
        read_pem_certificate("-")
    with pytest.raises(NotFoundError, match="no such file"):
        read_pem_certificate(str(tmp_path / "missing.pem"))
    assert read_pem_block(str(tmp_path / "cert.pem"), "CERTIFICATE").startswith(
        b"-----BEGIN CERTIFICATE-----"
    )


def test_public_key_hash_of_a_ca_certificate_matches_openssl(ca: ExternalCA, tmp_path: Path) -> None:
    for cert in (ca.root, ca.intermediate):
        (tmp_path / "cert.pem").write_bytes(pem(cert))
        assert public_key_hash(ca_public_key(cert)) == openssl_key_hash(tmp_path / "cert.pem")


def test_ca_public_key_refuses_non_rsa() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = ca_certificate_builder(name, name, key.public_key(), now, now + dt.timedelta(days=1)).sign(
        key, hashes.SHA256()
    )
    with pytest.raises(ValidationError, match="CA keys are RSA"):
        ca_public_key(cert)
