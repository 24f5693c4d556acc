"""CRLs per CA key, signed by the node holding the key in its token; `authctl auth revoke` and `auth crl`."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import KeyAccessError, ValidationError
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.resources.crl import (
    BACKDATE,
    CertAuthorityCRL,
    ahead_builder,
    ahead_problem,
    crl_builder,
    crl_problem,
    fingerprint,
)
from authsim.cluster.store import EtcdStore, Versioned
from authsim.cluster.store.keys import crl_key, override_key
from tests.certs import external_ca, issue_cert, rsa_key

NODES = ("node1", "node2")


@dataclass
class Flow:
    cluster: LocalCluster
    ca: ExternalCA
    tmp: Path
    overrides: dict[str, x509.Certificate]  # node -> its windows override certificate

    def ok(self, *args: str, node: str | None = None) -> str:
        result = self.cluster.authctl(*args, node=node)
        assert result.exit_code == 0, (args, result.stderr)
        return result.stdout

    def ca_certs(self) -> dict[str, tuple[x509.Certificate, str]]:
        """key hash -> (self-signed CA certificate, holder host id) of the windows CA."""
        with self.cluster.client(NODES[0]) as client:
            ca = client.get_cert_authority("windows")
        return {
            k.public_key_hash: (x509.load_pem_x509_certificate(k.cert.encode()), k.key.host_id)
            for k in ca.active_keys
        }

    def key_of(self, node: str) -> str:
        host = self.cluster.host_id(node)
        return next(h for h, (_, holder) in self.ca_certs().items() if holder == host)

    def crls(self, until: float = 20.0) -> dict[str, pb.KeyCRL]:
        """The windows CRLs once every key has its self-signed CRL and one per override entry."""
        deadline = time.monotonic() + until
        while True:
            with self.cluster.client(NODES[0]) as client:
                listing = client.call("ListCRLs", pb.ListCRLsRequest(type="windows"))
            keys = {k.public_key_hash: k for k in listing.keys}
            if all(k.crl and len(k.overrides) == 1 for k in keys.values()):
                return keys
            assert time.monotonic() < deadline, f"CRLs not signed in {until}s: {listing}"
            time.sleep(0.2)

    def stored_crls(self) -> tuple[Versioned, CertAuthorityCRL]:
        """The windows override and CRL resource as etcd holds them, read at one revision."""
        state = self.cluster.state

        async def read() -> tuple[Versioned | None, Versioned | None]:
            async with EtcdStore(list(state.etcd.endpoints), tls=state.etcd.tls) as store:
                return await store.get_both(
                    override_key(state.cluster_name, "windows"), crl_key(state.cluster_name, "windows")
                )

        override, crls = asyncio.run(read())
        assert override is not None and crls is not None
        return override, CertAuthorityCRL.from_json(crls.value, crls.mod_revision)

    def store_write(self, value: bytes) -> None:
        state = self.cluster.state

        async def write() -> None:
            async with EtcdStore(list(state.etcd.endpoints), tls=state.etcd.tls) as store:
                await store.update(crl_key(state.cluster_name, "windows"), lambda _: value)

        asyncio.run(write())


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """2 nodes, both windows keys active; node-1's key has an enabled override, node-2's a disabled one."""
    tmp = tmp_path_factory.mktemp("crl")
    ca = init(tmp / "extca")
    with local_cluster(tmp / "c", nodes=2) as cluster:
        flow = Flow(cluster, ca, tmp, {})
        flow.ok("auth", "rotate", "--type=windows")
        for node, pem in cluster.override_certs(ca, "windows").items():
            path = tmp / f"windows-{node}.pem"
            path.write_text(pem + "\n")
            flow.overrides[node] = x509.load_pem_x509_certificate(pem.encode())
            disabled = ["--disabled"] if node == NODES[1] else []
            flow.ok("auth", "create-override", "--type=windows", str(path), *disabled, node=node)
        yield flow


def _crl(pem: str) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(pem.encode())


def _openssl_verifies(crl_pem: str, issuer: x509.Certificate, tmp: Path) -> str:
    (tmp / "issuer.pem").write_bytes(issuer.public_bytes(Encoding.PEM))
    (tmp / "crl.pem").write_text(crl_pem)
    done = subprocess.run(
        [
            "openssl",
            "crl",
            "-in",
            str(tmp / "crl.pem"),
            "-CAfile",
            str(tmp / "issuer.pem"),
            "-verify",
            "-noout",
        ],
        capture_output=True,
        text=True,
    )
    said = done.stdout + done.stderr
    return "" if done.returncode == 0 and "verify OK" in said else said


def test_every_crl_verifies_against_its_issuer(flow: Flow, tmp_path: Path) -> None:
    """Each key's self-signed CRL and override CRL (the enabled and the disabled entry's): openssl and
    cryptography accept the signature; issuer, AKI, CRL number and validity are as promised."""
    crls = flow.crls()
    overrides = {flow.key_of(n): cert for n, cert in flow.overrides.items()}
    now = dt.datetime.now(dt.timezone.utc)
    for key_hash, (ca_cert, _) in flow.ca_certs().items():
        found = crls[key_hash]
        override = overrides[key_hash]
        assert [o.fingerprint for o in found.overrides] == [fingerprint(override)]
        for pem, issuer in ((found.crl, ca_cert), (found.overrides[0].crl, override)):
            crl = _crl(pem)
            assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            assert _openssl_verifies(pem, issuer, tmp_path) == ""
            assert crl.issuer == issuer.subject
            aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            assert aki.key_identifier == ski.digest
            assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == found.crl_number
            assert crl.last_update_utc < now - dt.timedelta(seconds=30)
            assert crl.next_update_utc is not None
            assert crl.next_update_utc <= min(
                now + dt.timedelta(days=7, minutes=1), issuer.not_valid_after_utc
            )


def test_each_keys_crl_is_signed_by_the_node_holding_it(flow: Flow) -> None:
    """Verified with the holder's CA key; the other node's key does not verify it."""
    crls = flow.crls()
    certs = flow.ca_certs()
    assert len(certs) == 2
    for key_hash, (_, holder) in certs.items():
        assert crls[key_hash].host_id == holder
        (other,) = [c for h, (c, _) in certs.items() if h != key_hash]
        crl = _crl(crls[key_hash].crl)
        assert crl.is_signature_valid(certs[key_hash][0].public_key())  # type: ignore[arg-type]
        assert not crl.is_signature_valid(other.public_key())  # type: ignore[arg-type]


def test_a_node_refuses_to_sign_another_nodes_key(flow: Flow) -> None:
    """node-2 asked for node-1's key: refused, naming node-1; node-1 signs it, with a higher number."""
    key = flow.key_of(NODES[0])
    before = flow.crls()[key].crl_number
    with (
        flow.cluster.client(NODES[1]) as client,
        pytest.raises(KeyAccessError, match=f"held by node {NODES[0]}"),
    ):
        client.call("SignCRLs", pb.SignCRLsRequest(type="windows", public_key=key[:16]))
    with flow.cluster.client(NODES[0]) as client:
        signed = client.call("SignCRLs", pb.SignCRLsRequest(type="windows", public_key=key[:16]))
    assert signed.crl_number > before
    assert _crl(signed.crl).is_signature_valid(flow.ca_certs()[key][0].public_key())  # type: ignore[arg-type]


def test_a_stale_crl_is_signed_again_with_a_higher_number(flow: Flow) -> None:
    """A stored CRL whose nextUpdate passed (and signed by a stranger's key), written straight to etcd:
    the holder's keeper signs it again, numbered above it."""
    crls = flow.crls()
    key = flow.key_of(NODES[1])
    ca_cert = flow.ca_certs()[key][0]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    then = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    stale = crl_builder(ca_cert, crls[key].crl_number + 5, {}, then).sign(stranger, hashes.SHA256())
    stale_pem = stale.public_bytes(Encoding.PEM).decode()
    assert crl_problem(stale_pem, ca_cert, set(), dt.datetime.now(dt.timezone.utc)) is not None
    with flow.cluster.client(NODES[0]) as client:
        listing = client.call("ListCRLs", pb.ListCRLsRequest(type="windows"))
    state = flow.cluster.state

    async def read() -> CertAuthorityCRL:
        async with EtcdStore(list(state.etcd.endpoints), tls=state.etcd.tls) as store:
            found = await store.get(crl_key(state.cluster_name, "windows"))
            assert found is not None
            return CertAuthorityCRL.from_json(found.value)

    stored = asyncio.run(read())
    broken = stored.with_crls(
        key, replace(stored.crls[key], crl=stale_pem, crl_number=crls[key].crl_number + 5)
    )
    flow.store_write(broken.to_json())
    deadline = time.monotonic() + 15
    while True:
        found = flow.crls()[key]
        if found.crl_number > crls[key].crl_number + 5:
            break
        assert time.monotonic() < deadline, "the stale CRL was not signed again"
        time.sleep(0.2)
    assert _crl(found.crl).is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    assert len(listing.keys) == 2


def test_an_appended_entry_lands_with_its_crl_in_the_same_write(flow: Flow, tmp_path: Path) -> None:
    """A node appending an entry of its own key writes the entry's CRL in the append's Txn: etcd never
    holds the entry without its CRL (openssl verifies it against the entry's certificate), the key
    keeps its CRL number, and the keeper finds nothing left to sign. That CRL was signed ahead, when
    the keeper last signed the key's CRLs: the append did not wait for a signature."""
    node = NODES[1]
    key = flow.key_of(node)
    cert = flow.overrides[node]
    path = tmp_path / "entry.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    flow.ok("auth", "delete-override", "--type=windows", "--public-key", key, node=node)
    deadline = time.monotonic() + 15
    while (before := flow.stored_crls()[1].crls[key]).overrides:  # the keeper signs without the entry
        assert time.monotonic() < deadline, "the removed entry's CRL stayed"
        time.sleep(0.1)
    time.sleep(1.1)  # CRL times are in whole seconds: one signed during the append would show it
    appending = dt.datetime.now(dt.timezone.utc)
    flow.ok("auth", "create-override", "--type=windows", str(path), "--disabled", node=node)
    override, crls = flow.stored_crls()
    assert crls.revision == override.mod_revision  # one Txn
    after = crls.crls[key]
    assert (after.crl_number, after.crl, list(after.overrides)) == (
        before.crl_number,
        before.crl,
        [fingerprint(cert)],
    )
    assert _openssl_verifies(after.overrides[fingerprint(cert)], cert, tmp_path) == ""
    signed = _crl(after.overrides[fingerprint(cert)]).last_update_utc + BACKDATE
    assert signed <= appending - dt.timedelta(seconds=1), f"signed at {signed}, the append began {appending}"
    time.sleep(1.0)  # many times the keeper's settle period: it would have signed by now
    assert flow.stored_crls()[1].revision == crls.revision


def _self_signed(
    key: rsa.RSAPrivateKey, name: x509.Name, now: dt.datetime, ski: x509.SubjectKeyIdentifier | None = None
) -> x509.Certificate:
    """A self-signed certificate of `key`, valid a year from yesterday; its SKI the key's SHA-1 by default."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(ski or x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_crl_number_validity_rule() -> None:
    """A CRL past half its life is stale; a fresh one is not (the keeper's timer re-signs ahead of expiry)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.timezone.utc)
    cert = _self_signed(key, x509.Name.from_rfc4514_string("CN=test CA"), now)

    def pem(at: dt.datetime, serials: dict[int, dt.datetime]) -> str:
        return (
            crl_builder(cert, 1, serials, at).sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode()
        )

    assert crl_problem(pem(now, {}), cert, set(), now) is None
    assert (
        crl_problem(pem(now - dt.timedelta(days=4), {}), cert, set(), now) == "less than half its life left"
    )
    assert crl_problem(pem(now, {}), cert, {5}, now) == "revoked serials differ from spec"
    assert crl_problem(pem(now, {5: now}), cert, {5}, now) is None


def test_a_crl_signed_ahead_serves_only_the_certificate_it_was_signed_for() -> None:
    """A CRL signed before its issuer's certificate exists (the next override entry's) is used only
    for a certificate of that key, of the same name (string types included), with the key identifier
    it guessed, valid at least as long as the CRL, and the same revoked serials; openssl verifies the
    one that fits."""
    key, other = rsa_key(0), rsa_key(1)
    subject = x509.Name.from_rfc4514_string("CN=windows CA,O=mycluster")
    now = dt.datetime.now(dt.timezone.utc)
    ahead = (
        ahead_builder(subject, key.public_key(), 3, {7: now}, now)
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
        .decode()
    )

    def cert(name: x509.Name = subject, public: rsa.RSAPrivateKey = key, days: int = 365) -> x509.Certificate:
        return issue_cert(name, public, external_ca()[0], days=days).cert

    fits = cert()
    assert ahead_problem(ahead, fits, {7}, now) is None
    assert _crl(ahead).issuer.public_bytes() == fits.subject.public_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        assert _openssl_verifies(ahead, fits, Path(tmp)) == ""
    assert ahead_problem(ahead, fits, {7, 8}, now) == "revoked serials differ from spec"
    assert ahead_problem(ahead, cert(name=x509.Name.from_rfc4514_string("CN=other")), {7}, now) == (
        "not signed by its issuer"
    )
    assert ahead_problem(ahead, cert(public=other), {7}, now) == "not signed by its issuer"
    assert ahead_problem(ahead, cert(days=3), {7}, now) == "valid past its issuer"
    # the same name in other string types is another name (openssl would not match it either)
    printable = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "windows CA", _type=_ASN1Type.PrintableString),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mycluster"),
        ]
    )
    assert ahead_problem(ahead, cert(name=printable), {7}, now) == "not signed by its issuer"
    another_ski = _self_signed(key, subject, now, x509.SubjectKeyIdentifier(b"\x01" * 20))  # its own way
    assert ahead_problem(ahead, another_ski, {7}, now) == "another authority key identifier"
    later = now + BACKDATE + dt.timedelta(days=4)
    assert ahead_problem(ahead, fits, {7}, later) == "less than half its life left"


def test_revoke_lists_the_serial_in_every_crl_of_the_issuing_key(flow: Flow) -> None:
    flow.crls()
    out = flow.tmp / "alice"
    reply = flow.cluster.sign("windows", "alice", out, node=NODES[0])
    said = flow.ok("auth", "revoke", "--type=windows", "--cert", f"{out}.crt")
    key = flow.key_of(NODES[0])
    assert f"serial {reply['serial']} revoked under key {key[:16]}" in said
    assert f"signed by node {NODES[0]}" in said
    found = flow.crls()[key]
    for pem in (found.crl, found.overrides[0].crl):
        assert _crl(pem).get_revoked_certificate_by_serial_number(int(reply["serial"], 16)) is not None
    assert f"CRL number {found.crl_number} of key {key[:16]}" in said
    other = flow.crls()[flow.key_of(NODES[1])]
    assert _crl(other.crl).get_revoked_certificate_by_serial_number(int(reply["serial"], 16)) is None
    again = flow.ok("auth", "revoke", "--type=windows", "--serial", reply["serial"], "--public-key", key[:8])
    assert "already revoked" in again


def test_revoke_by_serial_alone_needs_the_key_when_the_ca_has_several(flow: Flow) -> None:
    result = flow.cluster.authctl("auth", "revoke", "--type=windows", "--serial", "abc123")
    assert result.exit_code != 0
    assert "has 2 keys" in result.stderr and "--public-key" in result.stderr
    for key_hash in flow.ca_certs():
        assert key_hash[:16] in result.stderr


def test_revoke_and_sign_crls_name_keys_as_every_command_does(flow: Flow) -> None:
    """`--public-key` of `auth revoke` and SignCRLs go through `resolve_key_hash`: any case, its messages."""
    key = flow.key_of(NODES[0])
    keys = ", ".join(sorted(k[:16] for k in flow.ca_certs()))
    for given, said in [
        ("0123456", "public_key: 0123456 is 7 hex characters, give at least 8"),
        ("not-hex!", "public_key: must be a public key hash or a prefix of one"),
        ("0" * 16, f"public_key: no key of the windows CA starts with {'0' * 16} (its keys: {keys})"),
    ]:
        if key.startswith(given):
            continue
        args = ["auth", "revoke", "--type=windows", "--serial", "abc123", "--public-key", given]
        result = flow.cluster.authctl(*args)
        assert result.exit_code != 0 and said in result.stderr, (given, result.stderr)
    with flow.cluster.client(NODES[0]) as client:
        signed = client.call("SignCRLs", pb.SignCRLsRequest(type="windows", public_key=key[:8].upper()))
        assert signed.public_key_hash == key
        with pytest.raises(ValidationError, match="give at least 8"):
            client.call("SignCRLs", pb.SignCRLsRequest(type="windows", public_key=key[:6]))


def test_auth_crl_writes_every_crl_pem_and_der(flow: Flow, tmp_path: Path) -> None:
    crls = flow.crls()
    prefix = f"{tmp_path}/out-"
    flow.ok("auth", "crl", "--type=windows", "--out", prefix)
    overrides = {flow.key_of(n): cert for n, cert in flow.overrides.items()}
    for key_hash, (ca_cert, _) in flow.ca_certs().items():
        own = Path(f"{prefix}windows-{key_hash[:8]}.crl")
        override = Path(f"{prefix}windows-override-{key_hash[:8]}.crl")
        assert own.read_text() == crls[key_hash].crl or _crl(own.read_text()).is_signature_valid(
            ca_cert.public_key()  # type: ignore[arg-type]
        )
        assert _openssl_verifies(own.read_text(), ca_cert, tmp_path) == ""
        assert _openssl_verifies(override.read_text(), overrides[key_hash], tmp_path) == ""
        assert own.stat().st_mode & 0o777 == 0o644
    flow.ok("auth", "crl", "--type=windows", "--out", f"{tmp_path}/der-", "--der")
    key_hash = next(iter(crls))
    der = Path(f"{tmp_path}/der-windows-{key_hash[:8]}.crl").read_bytes()
    assert x509.load_der_x509_crl(der).issuer == flow.ca_certs()[key_hash][0].subject
