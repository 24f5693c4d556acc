"""The table of certificate authority types: adding a type is one entry."""

from __future__ import annotations

from dataclasses import dataclass

from authsim.cluster.errors import ValidationError, quoted


@dataclass(frozen=True)
class CAType:
    """One CA type the cluster keeps: its name, accepted spellings and what it issues."""

    name: str
    aliases: tuple[str, ...]
    description: str
    target: str  # the downstream target that checks its credentials: "desktop" or "db"
    smartcard_logon: bool  # leaves carry smartcardLogon + a UPN, and no chain (NTAuth knows the issuer)
    session_event: str  # the session-start event a target session records
    session_codes: tuple[str, str]  # event code on success, on failure
    resource_field: str  # the event field naming the resource reached


CA_TYPES: dict[str, CAType] = {
    "windows": CAType(
        "windows",
        (),
        "desktop access: smartcard logon certificates checked against NTAuth",
        target="desktop",
        smartcard_logon=True,
        session_event="windows.desktop.session.start",
        session_codes=("TDP00I", "TDP00W"),
        resource_field="desktop_name",
    ),
    "db_client": CAType(
        "db_client",
        ("db-client",),
        "database access: TLS client certificates",
        target="db",
        smartcard_logon=False,
        session_event="db.session.start",
        session_codes=("TDB00I", "TDB00W"),
        resource_field="db_name",
    ),
}


def desktop_domain(cluster_name: str) -> str:
    """The Windows domain of the cluster's desktop target: windows leaves carry the UPN
    `user@<domain>` (Active Directory UPNs carry a suffix); its Kerberos realm is the domain in capitals."""
    return f"{cluster_name}.test"


def resolve_ca_type(name: str, field: str = "type") -> CAType:
    """Return the CA type called `name` (or one of its aliases); unknown names are a ValidationError."""
    for ca_type in CA_TYPES.values():
        if name == ca_type.name or name in ca_type.aliases:
            return ca_type
    known = ", ".join(CA_TYPES)
    raise ValidationError([f"{field}: unknown CA type {quoted(name)} (known: {known})"])
