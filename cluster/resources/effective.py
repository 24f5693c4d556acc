"""The effective CA: each key of a CA with its override entry, and the certificate downstream must trust."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509

from authsim.cluster.resources.cert_authority import CAKeyPair, CertAuthority
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride
from authsim.cluster.resources.x509 import display_name


@dataclass(frozen=True)
class EffectiveKey:
    """One key of a CA (active or additional), its override entry if any, and what names it downstream."""

    role: str  # "active" or "additional"
    pair: CAKeyPair
    entry: CertificateOverride | None  # this key's entry in the override resource

    @property
    def state(self) -> str:
        """The override state: enabled, disabled, or none (no entry for this key)."""
        if self.entry is None:
            return "none"
        return "enabled" if self.entry.enabled else "disabled"

    @property
    def trusted_certificate(self) -> str:
        """The PEM downstream must trust for this key: the enabled override's, else the self-signed one."""
        return self.entry.certificate if self.entry is not None and self.entry.enabled else self.pair.cert_pem

    @property
    def trusted_chain(self) -> tuple[str, ...]:
        """The enabled override's chain, issuer first towards the root (none for a self-signed one)."""
        return self.entry.chain if self.entry is not None and self.entry.enabled else ()

    def override_dict(self) -> dict[str, Any]:
        """`status.keys[].override`: the state and, for an entry with a certificate, that certificate's
        subject, issuer, not_after and chain length, with the PEMs."""
        data: dict[str, Any] = {"state": self.state}
        if self.entry is None:
            return data
        if self.entry.certificate:
            data |= certificate_summary(self.entry.certificate)
            data["chain_length"] = len(self.entry.chain)
            data["certificate"] = self.entry.certificate
        if self.entry.chain:
            data["chain"] = list(self.entry.chain)
        return data


def effective_keys(ca: CertAuthority, override: CertAuthorityOverride | None) -> list[EffectiveKey]:
    """Every key of `ca`, active first, with its entry in `override` (None: there is no resource)."""
    keys = []
    for role, pair in ca.all_keys():
        found = None if override is None else override.entry(pair.public_key_hash)
        keys.append(EffectiveKey(role, pair, None if found is None else found[1]))
    return keys


def effective_status(
    keys: list[EffectiveKey], override_revision: int, node_names: dict[str, str]
) -> dict[str, Any]:
    """The `status` that `authctl get cas/TYPE` adds to the CA: the override resource's revision read
    with it (0: none) and, per key, its holder and override."""
    return {
        "override_revision": override_revision,
        "keys": [
            {
                "public_key_hash": k.pair.public_key_hash,
                "role": k.role,
                "host_id": k.pair.key.host_id,
                "node": node_names.get(k.pair.key.host_id, ""),
                "override": k.override_dict(),
            }
            for k in keys
        ],
    }


def certificate_summary(pem: str) -> dict[str, str]:
    """subject, issuer (RFC 4514) and not_after (ISO 8601, UTC) of a PEM certificate."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return {"subject": "(unreadable certificate)", "issuer": "", "not_after": ""}
    return {
        "subject": display_name(cert.subject),
        "issuer": display_name(cert.issuer),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
