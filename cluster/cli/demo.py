"""`authsim demo`: the seed's five steps on a fresh 3-node cluster, narrated, checked at every step."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from authsim.cluster.cli.authctl import cli as authctl
from authsim.cluster.cli.common import run_cli
from authsim.cluster.cli.external_ca import external_ca
from authsim.cluster.cli.lifecycle import up
from authsim.cluster.cli.pem_files import ca_public_key, read_pem_certificate
from authsim.cluster.cli.runner import run_in_process
from authsim.cluster.cli.trust import trust
from authsim.cluster.errors import AuthSimError
from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local import launcher
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.resources.x509 import public_key_hash

EMPTY_OVERRIDE = """kind: cert_authority_override
sub_kind: {ca_type}
version: v1
metadata:
  name: {cluster}
spec: {{}}
"""


_COMMANDS: dict[str, click.Command] = {
    "authsim up": up,
    "authsim external-ca": external_ca,
    "authsim trust": trust,
    "authctl": authctl,
}


class DemoError(AuthSimError):
    """A demo step did not behave as the seed says."""


class Demo:
    """Runs each command in-process, shows it as a user would type it, and checks what it did."""

    def __init__(self, directory: Path, console: Console) -> None:
        self.directory = directory
        self.console = console
        self.work = ClusterLayout(directory).demo_dir

    def step(self, title: str) -> None:
        self.console.rule(f"[bold]{title}")

    def run(self, program: str, *args: str, expect_ok: bool = True, quiet: bool = False) -> str:
        """Run `authsim external-ca|trust ...` or `authctl ...` in this process; show it and its output."""
        if not quiet:
            self.console.print(f"[cyan]$ {program} {shlex.join(args)}")
        result = run_in_process(lambda argv: run_cli(_COMMANDS[program], argv, program), args)
        if not quiet:
            self.console.print(result.stdout.rstrip(), markup=False, highlight=False, soft_wrap=True)
        if result.stderr.strip() and not quiet:
            self.console.print(result.stderr.rstrip(), style="yellow", markup=False, soft_wrap=True)
        if (result.exit_code == 0) != expect_ok:
            raise DemoError(
                f"`{program} {shlex.join(args)}` exited with {result.exit_code}: {result.stderr.strip()}"
            )
        return result.stdout

    def authctl(
        self, *args: str, node: str | None = None, expect_ok: bool = True, quiet: bool = False
    ) -> str:
        where = ["--dir", str(self.directory), *(["--node", node] if node else [])]
        return self.run("authctl", *where, *args, expect_ok=expect_ok, quiet=quiet)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise DemoError(message)
        self.console.print(f"[green]✓ {message}")

    def json(self, *args: str, node: str | None = None) -> Any:
        """A query the demo checks its steps with: run quietly, parsed."""
        return json.loads(self.authctl(*args, "--format", "json", node=node, quiet=True))


def run_demo(directory: Path, console: Console, rotation: bool = False) -> None:
    """The five steps (then, with `rotation`, an override-aware rotation of the windows CA); raises
    DemoError when a step does not behave as documented."""
    if directory.exists():
        console.print(f"removing the previous demo cluster in {directory}")
        launcher.down(directory, purge=True)
    demo = Demo(directory, console)
    demo.step("A fresh 3-node cluster: one SoftHSM token per node, one etcd")
    demo.run("authsim up", "--nodes", "3", "--cluster-name", "mycluster", "--dir", str(directory), "--detach")
    csrs = _create_csrs(demo)
    signed = _sign_externally(demo, csrs)
    _trust_downstream(demo, signed)
    _append_overrides(demo, signed)
    _exercise(demo, signed)
    console.rule("[bold green]The seed's five steps behaved as documented")
    if rotation:
        _rotate_windows(demo, signed)
        console.rule("[bold green]The rotation of the windows CA behaved as documented")
    console.print(
        f"The cluster keeps running. Look around with `authctl --dir {directory} ...`; "
        f"stop it with `authsim down --dir {directory}`."
    )


@dataclass(frozen=True)
class Signed:
    """What the external CA signed: certificate file by public-key hash, and its chain and root."""

    by_hash: dict[str, Path]
    active: dict[str, str]  # CA type -> public-key hash of its active key
    chain: Path
    root: Path


def _create_csrs(demo: Demo) -> list[Path]:
    demo.step("Step 1/5. CSRs: every node signs one for the key in its own token")
    for ca_type in CA_TYPES:
        demo.authctl(
            "auth", "create-override-csr", f"--type={ca_type}", "--all-nodes", "--out", f"{demo.work}/csr/"
        )
    csrs = sorted((demo.work / "csr").glob("*-csr.pem"))
    demo.check(len(csrs) == 3 * len(CA_TYPES), f"{len(csrs)} CSRs, one per node and CA type")
    return csrs


def _sign_externally(demo: Demo, csrs: list[Path]) -> Signed:
    demo.step("Step 2/5. The external CA signs them as subordinate CA certificates")
    extca, certs = demo.work / "extca", demo.work / "certs"
    demo.run("authsim external-ca", "init", "--dir", str(extca))
    demo.run("authsim external-ca", "sign", "--dir", str(extca), *map(str, csrs), "--out-dir", str(certs))
    by_hash = {public_key_hash(ca_public_key(read_pem_certificate(str(p)))): p for p in certs.glob("*-*.pem")}
    active = {
        t: demo.json("get", f"cas/{t}")["spec"]["active_keys"]["tls"][0]["public_key_hash"] for t in CA_TYPES
    }
    demo.check(all(h in by_hash for h in active.values()), "an override certificate for each active key")
    return Signed(by_hash, active, certs / "chain.pem", extca / "root.pem")


def _trust_downstream(demo: Demo, signed: Signed) -> None:
    demo.step("Step 3/5. Downstream trust, before any override is enabled")
    where = ("--dir", str(demo.directory))
    ntauth = str(signed.by_hash[signed.active["windows"]])
    demo.run("authsim trust", *where, "--target", "desktop", "--ntauth", ntauth, "--ca", str(signed.chain))
    demo.run("authsim trust", *where, "--target", "db", "--ca", str(signed.root))


def _append_overrides(demo: Demo, signed: Signed) -> None:
    demo.step("Step 4/5. One override resource per CA type; each node appends its own entry")
    for ca_type in CA_TYPES:
        path = demo.work / f"ca_override_{ca_type}.yaml"
        path.write_text(EMPTY_OVERRIDE.format(ca_type=ca_type, cluster="mycluster"))
        demo.authctl("create", str(path))
    nodes = [f"node{i}" for i in range(1, 4)]
    staged_node, staging_node = nodes[1], nodes[0]
    chain = str(signed.chain)
    holders = {n: demo.json("status", node=n)["keys"] for n in nodes}
    for node, keys in holders.items():
        for key in keys:
            cert = str(signed.by_hash[key["public_key_hash"]])
            if key["ca_type"] == "windows" and node == staged_node:
                demo.console.print(
                    f"[dim]{staging_node} stages {staged_node}'s entry disabled; "
                    f"only {staged_node} may enable it"
                )
                demo.authctl(
                    "auth", "create-override", "--type=windows", cert, chain, "--disabled", node=staging_node
                )
                shown = key["public_key_hash"][:16]  # the key as every command shows it
                enable = ("auth", "update-override", "--type=windows", "--public-key", shown)
                demo.authctl(*enable, "--set-disabled", "false", node=staging_node, expect_ok=False)
                demo.authctl(*enable, "--set-disabled", "false", node=node)
            else:
                demo.authctl("auth", "create-override", f"--type={key['ca_type']}", cert, chain, node=node)
    for ca_type in CA_TYPES:
        entries = demo.json("get", f"ca_overrides/{ca_type}")["spec"]["certificate_overrides"]
        demo.check(
            len(entries) == 3 and not any(e.get("disabled") for e in entries),
            f"ca_overrides/{ca_type}: three enabled entries, one per node",
        )
    demo.authctl("get", "ca_overrides/windows", "--format", "text")


def _exercise(demo: Demo, signed: Signed) -> None:
    demo.step("Step 5/5. Exercise the overrides: sessions on the desktop and the database")
    for ca_type in CA_TYPES:
        event = json.loads(demo.authctl("exercise", f"--type={ca_type}", "--user", "alice"))
        override, active = event["ca_override"], signed.active[ca_type]
        demo.check(
            event["success"] and override["active"] and override["public_key_hash"] == active,
            f"{event['event']} ({event['code']}): success, ca_override active, key {active[:16]}",
        )
    issued = [
        line for line in ClusterLayout(demo.directory).kdc.log.read_text().splitlines() if "ISSUE:" in line
    ]
    if issued:  # what the real KDC said; PostgreSQL logs only refusals
        said = issued[-1][issued[-1].index("ISSUE:") :]  # from its verdict on (before it: the etypes)
        demo.console.print(f"the KDC: {said}", markup=False, soft_wrap=True)
    demo.authctl("get", "events", "--format", "text")


def _rotate_windows(demo: Demo, signed: Signed) -> None:
    """Issue 14: rotate the windows CA with overrides enabled, one new key per node's token."""
    nodes = [f"node{i}" for i in range(1, 4)]
    old = {e["public_key"] for e in demo.json("get", "ca_overrides/windows")["spec"]["certificate_overrides"]}
    demo.step("Rotation 1/5. init: every node makes a new key in its own token")
    demo.authctl("auth", "rotate", "--type=windows", "--phase=init")
    hosts = {demo.json("status", node=n)["host_id"]: n for n in nodes}
    parts = demo.json("get", "cas/windows")["spec"]["rotation"]["nodes"]
    new = {hosts[h]: part["new"]["public_key_hash"] for h, part in parts.items()}
    demo.check(len(new) == 3, "three new keys, each an additional trusted key of the windows CA")

    demo.step("Rotation 2/5. Clients may not move yet: the new keys have no override")
    demo.authctl("auth", "rotate", "--type=windows", "--auto", expect_ok=False)

    demo.step("Rotation 3/5. Per node: the CSR for its new key, the external CA, downstream trust, its entry")
    extca, certs = demo.work / "extca", demo.work / "rotated"
    for node, key in new.items():
        out = f"{demo.work}/rotation-csr/"
        demo.authctl(
            "auth", "create-override-csr", "--type", "windows", "--public-key", key, "--out", out, node=node
        )
        [csr] = Path(out).glob(f"windows-{key[:8]}*-csr.pem")
        demo.run("authsim external-ca", "sign", "--dir", str(extca), str(csr), "--out-dir", str(certs))
        [cert] = certs.glob(f"windows-{key[:8]}*.pem")
        where = ("--dir", str(demo.directory))
        demo.run("authsim trust", *where, "--target", "desktop", "--ntauth", str(cert))
        demo.authctl("auth", "create-override", "--type=windows", str(cert), str(signed.chain), node=node)

    demo.step("Rotation 4/5. --auto: update_clients, update_servers, standby")
    demo.authctl("auth", "rotate", "--type=windows", "--auto")
    entries = demo.json("get", "ca_overrides/windows")["spec"]["certificate_overrides"]
    kept = {e["public_key"] for e in entries}
    demo.check(kept == set(new.values()), "ca_overrides/windows: the new keys' entries only")
    demo.check(not kept & old, "the old keys' entries left with the old keys at standby")
    demo.authctl("get", "ca_overrides/windows", "--format", "text")

    demo.step("Rotation 5/5. Sessions on the desktop with credentials from each node's new key")
    for node, key in new.items():
        event = json.loads(demo.authctl("exercise", "--type=windows", "--user", "alice", node=node))
        override = event["ca_override"]
        demo.check(
            event["success"] and override["active"] and override["public_key_hash"] == key,
            f"{node}: {event['event']} ({event['code']}): success, ca_override active, new key {key[:16]}",
        )
