"""The cluster name in a CA subject (SPEC §6, §7): OID 1.3.9999.4.1 when present, else the first O."""

from __future__ import annotations

import enum

from cryptography import x509
from cryptography.x509.oid import NameOID

from authsim.cluster.errors import ValidationError, quoted

CLUSTER_NAME_OID = x509.ObjectIdentifier("1.3.9999.4.1")


class _Naming(enum.Enum):
    """How a subject names the cluster."""

    NAMED = enum.auto()  # every OID 1.3.9999.4.1 value is the cluster name; without one, the first O is
    OTHER_OID = enum.auto()  # an OID 1.3.9999.4.1 value names another cluster
    NO_NAME = enum.auto()  # neither OID 1.3.9999.4.1 nor O
    OTHER_O = enum.auto()  # no OID 1.3.9999.4.1, and the first O is something else


def _naming(subject: x509.Name, cluster_name: str) -> tuple[_Naming, str]:
    """How `subject` names the cluster `cluster_name`, and the other name it gives instead ("" if none)."""
    named = [str(a.value) for a in subject.get_attributes_for_oid(CLUSTER_NAME_OID)]
    if named:
        other = next((v for v in named if v != cluster_name), None)
        return (_Naming.NAMED, "") if other is None else (_Naming.OTHER_OID, other)
    orgs = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if not orgs:
        return _Naming.NO_NAME, ""
    return (_Naming.NAMED, "") if orgs[0] == cluster_name else (_Naming.OTHER_O, orgs[0])


def with_cluster_name(subject: x509.Name, cluster_name: str) -> x509.Name:
    """`subject` made to name the cluster, for a CSR (SPEC §6).

    Kept when it names it already; without any O, O=<cluster> is appended; with another first O,
    OID 1.3.9999.4.1=<cluster>. An OID 1.3.9999.4.1 naming another cluster is a ValidationError.
    """
    naming, other = _naming(subject, cluster_name)
    if naming is _Naming.OTHER_OID:
        raise ValidationError(
            [f"subject: OID 1.3.9999.4.1 is {quoted(other)}, not the cluster name {quoted(cluster_name)}"]
        )
    if naming is _Naming.NAMED:
        return subject
    oid = NameOID.ORGANIZATION_NAME if naming is _Naming.NO_NAME else CLUSTER_NAME_OID
    return x509.Name([*subject.rdns, x509.RelativeDistinguishedName([x509.NameAttribute(oid, cluster_name)])])


def cluster_name_problems(subject: x509.Name, cluster_name: str) -> list[str]:
    """Why a certificate's `subject` does not name the cluster (SPEC §7); empty when it does."""
    naming, other = _naming(subject, cluster_name)
    if naming is _Naming.OTHER_OID:
        return [f"subject OID 1.3.9999.4.1 is {quoted(other)}, not the cluster name {quoted(cluster_name)}"]
    if naming is _Naming.NO_NAME:
        return [f"subject has no O or OID 1.3.9999.4.1 naming the cluster {quoted(cluster_name)}"]
    if naming is _Naming.OTHER_O:
        return [f"subject's first O is {quoted(other)}, not the cluster name {quoted(cluster_name)}"]
    return []
