"""`authsim watch ca_overrides/TYPE`: each new revision of an override resource, as it lands in etcd."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from authsim.cluster.cli.safe_text import escaped
from authsim.cluster.errors import one_line
from authsim.cluster.local.state import ClusterState, host_names
from authsim.cluster.resources.ca_types import resolve_ca_type
from authsim.cluster.resources.cert_authority import CertAuthority
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride
from authsim.cluster.resources.stored import read_cert_authority, read_override
from authsim.cluster.store import EtcdStore, Versioned
from authsim.cluster.store.keys import cert_authority_key, override_key


def describe_change(
    before: CertAuthorityOverride | None, after: CertAuthorityOverride | None, holder: Callable[[str], str]
) -> list[str]:
    """What changed between two revisions, one line per entry: +, -, or ~ with the fields."""
    old = {e.key_hash: e for e in (before.certificate_overrides if before else ())}
    new = {e.key_hash: e for e in (after.certificate_overrides if after else ())}
    lines = []
    for key, entry in new.items():
        label = escaped(f"{key[:16]} ({holder(key)})")
        if key not in old:
            lines.append(f"+ {label} {'disabled' if entry.disabled else 'enabled'}")
        elif entry != old[key]:
            lines.append(f"~ {label} {', '.join(_fields_changed(old[key], entry))}")
    lines += [escaped(f"- {key[:16]} ({holder(key)})") for key in old if key not in new]
    return lines


def _fields_changed(old: CertificateOverride, new: CertificateOverride) -> list[str]:
    changed = []
    if old.disabled != new.disabled:
        changed.append("disabled" if new.disabled else "enabled")
    if old.certificate != new.certificate:
        changed.append("certificate replaced")
    if old.chain != new.chain:
        changed.append(f"chain {len(old.chain)} -> {len(new.chain)}")
    return changed


async def watch_overrides(
    directory: Path, type_name: str, emit: Callable[[str], None], count: int = 0
) -> None:
    """Print the current revision, then every new one (at most `count` new ones when count > 0)."""
    state = ClusterState.load(directory)
    ca_type = resolve_ca_type(type_name).name
    names = host_names(directory)
    async with EtcdStore(state.etcd.endpoints, tls=state.etcd.tls) as store:
        ca_found = await store.get(cert_authority_key(state.cluster_name, ca_type))
        ca = None
        if ca_found is not None:
            ca = read_cert_authority(ca_found.value, ca_found.mod_revision, state.cluster_name, ca_type)
        hosts = {} if ca is None else _holders(ca.cert_authority)

        def holder(key: str) -> str:
            host = hosts.get(key)
            return names.get(host, host) if host else "not a CA key"

        key = override_key(state.cluster_name, ca_type)
        found = await store.get(key)
        current, broken = _read(found, state.cluster_name, ca_type)
        emit(
            f"ca_overrides/{ca_type}: "
            + (
                f"revision {current.revision}, {len(current.certificate_overrides)} entries"
                if current
                else "absent"
            )
            + broken
        )
        start = found.mod_revision + 1 if found else None
        seen = 0
        async with contextlib.aclosing(store.watch_prefix(key, start)) as changes:
            async for changed_key, value, _ in changes:
                if changed_key != key:
                    continue
                after, broken = _read(value, state.cluster_name, ca_type)
                emit(
                    _headline(after)
                    + broken
                    + "".join(f"\n    {line}" for line in describe_change(current, after, holder))
                )
                current = after
                seen += 1
                if count and seen >= count:
                    return


def _holders(ca: CertAuthority | None) -> dict[str, str]:
    return {} if ca is None else {p.public_key_hash: p.key.host_id for _, p in ca.all_keys()}


def _read(
    found: Versioned | None, cluster_name: str, ca_type: str
) -> tuple[CertAuthorityOverride | None, str]:
    """The stored override (distrusted: what could be read of it) and a line per rule it breaks."""
    if found is None:
        return None, ""
    stored = read_override(found.value, found.mod_revision, cluster_name, ca_type)
    return stored.resource, "".join(f"\n    ! breaks: {one_line(p)}" for p in stored.problems)


def _headline(resource: CertAuthorityOverride | None) -> str:
    if resource is None:
        return "removed"
    write = resource.last_write or {}
    attempts = write.get("attempts", "?")
    return escaped(
        f"revision {resource.revision}  by {write.get('node', '?')}  "
        f"CAS attempts {attempts}  at {write.get('time', '?')}  "
        f"({len(resource.certificate_overrides)} entries)"
    )


def run_watch(directory: Path, type_name: str, emit: Callable[[str], None], count: int = 0) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch_overrides(directory, type_name, emit, count))
