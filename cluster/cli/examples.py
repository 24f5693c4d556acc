"""An example for each command's `--help`, kept together so they read as one walk through the tools."""

from __future__ import annotations

import click

EXAMPLES: dict[str, list[str]] = {
    "authsim": ["authsim up --detach", "authsim status", "authsim down"],
    "authsim demo": ["authsim demo", "authsim demo --rotation"],
    "authsim watch": ["authsim watch ca_overrides/windows --count 1"],
    "authsim up": [
        "authsim up --detach",
        "authsim up --nodes 5 --base-port 47100 --dir ./c5",
        "authsim up --etcd etcd1:2379 --etcd-cacert ca.pem --etcd-cert admin.pem --etcd-key admin.key",
    ],
    "authsim status": [
        "authsim status",
        "authsim status --format json | jq .unhealthy",
        "authsim status --dir ./c5 || echo 'not healthy'",
    ],
    "authsim down": ["authsim down", "authsim down --purge"],
    "authsim forget": [
        "authsim forget --etcd 127.0.0.1:2379 --cluster-name mycluster",
        "authsim forget --etcd 127.0.0.1:2379 --cluster-name mycluster --cluster-id ID",
    ],
    "authsim hsm": ["authsim hsm pause node2", "authsim hsm resume node2"],
    "authsim external-ca": [
        "authsim external-ca init --dir extca",
        "authsim external-ca sign --dir extca --out-dir certs csrs/windows-*-csr.pem",
    ],
    "authsim external-ca init": ["authsim external-ca init --dir extca --name 'Example Root CA'"],
    "authsim external-ca crl": ["authsim external-ca crl --dir extca --out extca-crls.pem"],
    "authsim external-ca sign": [
        "authsim external-ca sign --dir extca --out-dir certs csrs/windows-ae163089-csr.pem --days 365"
    ],
    "authsim trust": [
        "authsim trust --target desktop",
        "authsim trust --target desktop --ntauth certs/windows-ae163089.pem --ca extca/root.pem",
    ],
    "authsim provision": ["authsim provision pki --dir /pki --nodes node1,node2 --etcd etcd1:2379 --etcd-ca"],
    "authsim provision pki": [
        "authsim provision pki --dir /pki --ca-dir /ca --admin-dir /cluster --nodes node1,node2,node3 "
        "--etcd etcd1:2379 --etcd-ca"
    ],
    "authsim provision node": [
        "authsim provision node --dir /state --pki /pki --name node1 --listen 0.0.0.0:3025 --etcd etcd1:2379"
    ],
    "authctl": ["authctl status", "authctl --node node2 get cas/windows --format text"],
    "authctl get": [
        "authctl get cas/windows --format text",
        "authctl get ca_overrides/windows > windows.yaml",
        "authctl get events --since 15m --kind override",
    ],
    "authctl exercise": ["authctl exercise --type windows --user alice"],
    "authctl create": ["authctl create windows.yaml", "authctl create -f windows.yaml --check"],
    "authctl edit": ["EDITOR=nano authctl edit ca_overrides/windows"],
    "authctl rm": ["authctl rm ca_overrides/windows"],
    "authctl status": [
        "authctl status",
        "authctl --node node2 status --format json",
        "authctl --dir prov/admin status --format yaml",
    ],
    "authctl auth": ["authctl auth create-override-csr --type windows --out csrs/"],
    "authctl auth create-override-csr": [
        "authctl auth create-override-csr --type windows --out csrs/",
        "authctl --node node2 auth create-override-csr --type windows --local-only",
    ],
    "authctl auth create-override": [
        "authctl --node node2 auth create-override --type windows certs/windows-ae163089.pem extca/int.pem"
    ],
    "authctl auth update-override": [
        "authctl auth update-override --type windows --public-key ae163089 --set-disabled false"
    ],
    "authctl auth delete-override": ["authctl auth delete-override --type windows --public-key ae163089"],
    "authctl auth pub-key-hash": ["authctl auth pub-key-hash --cert certs/windows-ae163089.pem"],
    "authctl auth sign": ["authctl auth sign --type windows --user alice --out alice-"],
    "authctl auth rotate": [
        "authctl auth rotate --type windows --auto",
        "authctl auth rotate --type windows",
    ],
    "authctl auth revoke": ["authctl auth revoke --type windows --cert alice-cert.pem"],
    "authctl auth crl": ["authctl auth crl --type windows --out crls/"],
    "authctl auth export": ["authctl auth export --type windows --format der --out ntauth-"],
}


def add_examples(command: click.Command, path: str) -> None:
    """Give `command` and every command under it its EXAMPLES as the epilog of its `--help`."""
    examples = EXAMPLES.get(path)
    if examples:
        lines = "\n".join(f"  {example}" for example in examples)
        command.epilog = f"Example{'s' * (len(examples) > 1)}:\n\n\b\n{lines}"
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            add_examples(sub, f"{path} {name}")
