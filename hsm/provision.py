"""Provision one SoftHSM2 token per node dir: its conf, token dir, PIN files and the token itself."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from authsim.cluster.errors import ClusterError, KeyAccessError
from authsim.cluster.layout import NodeLayout
from authsim.hsm import init_token

DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_MULTIARCH_PKCS11_MODULE = "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"
P11_KIT_CLIENT_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
SERVER_ADDRESS_ENV = "P11_KIT_SERVER_ADDRESS"  # where p11-kit-client.so finds its server
HSM_PROCESS = "process"  # `up --hsm process`: the token served by its own HSM process (p11-kit server)
HSM_INPROCESS = "inprocess"  # `up --hsm inprocess`: the node loads SoftHSM itself
HSM_MODES = (HSM_PROCESS, HSM_INPROCESS)
_MODULE_ENV = "AUTHSIM_PKCS11_MODULE"
_SOFTHSM_UTIL = "softhsm2-util"


@dataclass(frozen=True)
class TokenConfig:
    """Where a node's token lives: conf, token dir, PIN file, and the PKCS#11 module that opens it."""

    node_dir: Path
    label: str
    softhsm_conf: Path
    tokens_dir: Path
    pin_file: Path
    module_path: str
    server_socket: Path | None = None  # the HSM process's socket (`--hsm process`); None: loaded in-process

    @property
    def node_module(self) -> str:
        """The PKCS#11 module the node loads: p11-kit's client when an HSM process serves the token."""
        return P11_KIT_CLIENT_MODULE if self.server_socket is not None else self.module_path

    def server_address(self) -> str:
        """The HSM process's address as p11-kit-client.so reads it from P11_KIT_SERVER_ADDRESS."""
        return f"unix:path={self.server_socket}"

    def pin(self) -> str:
        """The token's user PIN, read from the node's PIN file."""
        try:
            return self.pin_file.read_text().strip()
        except FileNotFoundError:
            raise KeyAccessError(
                f"token {self.label}: pin file {self.pin_file} is missing (run provisioning again)"
            ) from None

    def process_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of `base` (default os.environ) for the node: SOFTHSM2_CONF pointing at this node's
        conf, or, with an HSM process, P11_KIT_SERVER_ADDRESS at its socket (and no SOFTHSM2_CONF)."""
        if self.server_socket is None:
            return self.softhsm_env(base)
        env = dict(os.environ if base is None else base)
        env.pop("SOFTHSM2_CONF", None)
        env[SERVER_ADDRESS_ENV] = self.server_address()
        return env

    def softhsm_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of `base` (default os.environ) with SOFTHSM2_CONF pointing at this node's conf: for
        whatever loads SoftHSM itself (an in-process node, the HSM process, provisioning)."""
        env = dict(os.environ if base is None else base)
        env["SOFTHSM2_CONF"] = str(self.softhsm_conf)
        return env


def resolve_module_path(module_path: str | None = None) -> str:
    """The PKCS#11 module to load: explicit, else $AUTHSIM_PKCS11_MODULE, else SoftHSM2's usual paths."""
    if module_path:
        return module_path
    if os.environ.get(_MODULE_ENV):
        return os.environ[_MODULE_ENV]
    for candidate in (DEFAULT_PKCS11_MODULE, _MULTIARCH_PKCS11_MODULE):
        if Path(candidate).exists():
            return candidate
    return DEFAULT_PKCS11_MODULE


def load_token_config(
    node_dir: Path, label: str, module_path: str | None = None, *, hsm_process: bool = False
) -> TokenConfig:
    """The TokenConfig of an already provisioned node dir; touches nothing on disk. With `hsm_process`,
    the node reaches its token through its HSM process's socket."""
    node = NodeLayout(Path(node_dir).absolute())
    return TokenConfig(
        node_dir=node.directory,
        label=label,
        softhsm_conf=node.softhsm_conf,
        tokens_dir=node.tokens,
        pin_file=node.pin,
        module_path=resolve_module_path(module_path),
        server_socket=node.hsm_socket if hsm_process else None,
    )


def provision_token(node_dir: Path, label: str, module_path: str | None = None) -> TokenConfig:
    """Create (or reuse) the node's SoftHSM2 conf, token dir, PINs and token labelled `label`."""
    config = load_token_config(node_dir, label, module_path)
    config.node_dir.mkdir(parents=True, exist_ok=True)
    config.tokens_dir.mkdir(mode=0o700, exist_ok=True)
    config.tokens_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
    conf_text = (
        f"directories.tokendir = {config.tokens_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    if not config.softhsm_conf.exists() or config.softhsm_conf.read_text() != conf_text:
        config.softhsm_conf.write_text(conf_text)

    env = config.softhsm_env()
    if label in _token_labels(env):
        if not config.pin_file.exists():
            raise ClusterError(
                f"token {label} exists in {config.tokens_dir} but its pin file {config.pin_file} is missing"
            )
        return config
    pin = _read_or_create_secret(config.pin_file)
    so_pin = _read_or_create_secret(NodeLayout(config.node_dir).so_pin)
    _init_token(config, label, so_pin, pin, env)
    return config


def _read_or_create_secret(path: Path) -> str:
    """Read a PIN file, or create it with a fresh random PIN: created exclusively (two provisions at
    once never both write one), 0600 from the first byte, never through a link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(16)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        if path.is_symlink() or not path.is_file():
            raise ClusterError(
                f"{path}: not a regular file; a PIN file is never read through a link"
            ) from None
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    return secret


def _init_token(config: TokenConfig, label: str, so_pin: str, pin: str, env: Mapping[str, str]) -> None:
    """Initialise the free token as `label` through PKCS#11 in a child process; the PINs go to it on
    stdin, never on a command line or in its environment."""
    # The script by its path, in isolated mode: it needs only the standard library (ctypes), so the
    # child starts in milliseconds instead of importing the authsim package.
    argv = [sys.executable, "-I", "-S", init_token.__file__, config.module_path, label]
    proc = subprocess.run(
        argv, input=f"{so_pin}\n{pin}\n", env=dict(env), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ClusterError(
            f"initialising token {label} failed (exit {proc.returncode}, "
            f"SOFTHSM2_CONF={env.get('SOFTHSM2_CONF')}): {(proc.stderr or proc.stdout).strip()}"
        )


def _token_labels(env: Mapping[str, str]) -> list[str]:
    """Labels of the initialized tokens SoftHSM2 sees with this environment's conf."""
    out = _softhsm_util(["--show-slots"], env)
    labels = []
    for line in out.splitlines():
        name, _, value = line.strip().partition(":")
        if name == "Label" and value.strip():
            labels.append(value.strip())
    return labels


def _softhsm_util(args: list[str], env: Mapping[str, str]) -> str:
    """Run softhsm2-util and return its stdout; any failure becomes a ClusterError."""
    exe = shutil.which(_SOFTHSM_UTIL, path=env.get("PATH"))
    if exe is None:
        raise ClusterError(
            f"{_SOFTHSM_UTIL} not found on PATH: install SoftHSM2 with `apt-get install softhsm2`"
        )
    proc = subprocess.run([exe, *args], env=dict(env), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(
            f"{_SOFTHSM_UTIL} {args[0]} failed (exit {proc.returncode}, "
            f"SOFTHSM2_CONF={env.get('SOFTHSM2_CONF')}): {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout
