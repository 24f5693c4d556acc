"""Expiry alert levels of override certificates, with RFD 0237's thresholds ("Expiration alerts").

A certificate of total validity `life` (not_after - not_before) is at level
  low    when its remaining validity is at most min(365 days, life / 2),
  medium when at most min(180 days, life / 4),
  high   when at most min(90 days, life / 8)   (an expired certificate is high too),
each threshold rounded up to whole days. The RFD says "remaining lifetime" but its worked examples (a 1y
certificate is low at 183 days, medium at 92, high at 46) fit only the certificate's total validity, and
rounding up: that is the life used here.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import math
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.cluster.resources.override import CertAuthorityOverride

DAY = dt.timedelta(days=1)


class ExpiryLevel(enum.IntEnum):
    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3

    @property
    def label(self) -> str:
        return self.name.lower()


_RULES = {  # level: (at most this many days, at most this share of the certificate's life)
    ExpiryLevel.LOW: (365, 1 / 2),
    ExpiryLevel.MEDIUM: (180, 1 / 4),
    ExpiryLevel.HIGH: (90, 1 / 8),
}


def alert_threshold(level: ExpiryLevel, life: dt.timedelta) -> dt.timedelta:
    """The remaining validity at or below which a certificate of total validity `life` is at `level`."""
    days, share = _RULES[level]
    limit = min(dt.timedelta(days=days), life * share)
    return DAY * math.ceil(limit / DAY)


def expiry_level(not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> ExpiryLevel:
    """The alert level of a certificate valid from `not_before` to `not_after`, at time `now`."""
    remaining = not_after - now
    life = not_after - not_before
    for level in (ExpiryLevel.HIGH, ExpiryLevel.MEDIUM, ExpiryLevel.LOW):
        if remaining <= alert_threshold(level, life):
            return level
    return ExpiryLevel.NONE


@dataclass(frozen=True)
class ExpiryAlert:
    """One override certificate at an alert level: which CA and key, when it ends, how long is left."""

    ca_type: str
    public_key_hash: str
    fingerprint: str  # hex SHA-256 of the certificate's DER: "once per certificate" keys on it
    level: ExpiryLevel
    not_after: dt.datetime
    remaining: dt.timedelta
    disabled: bool

    def describe(self) -> str:
        """`low: 150 days left (not after 2027-06-01)` or `high: expired 2027-06-01`."""
        when = f"{self.not_after:%Y-%m-%d %H:%M} UTC"
        if self.remaining <= dt.timedelta(0):
            return f"{self.level.label}: expired {when}"
        return f"{self.level.label}: {_left(self.remaining)} left (not after {when})"


def override_alerts(
    resource: CertAuthorityOverride, now: dt.datetime, keys: set[str] | None = None
) -> list[ExpiryAlert]:
    """An alert for each entry of `resource` (with `keys`, of those key hashes only) whose certificate
    is at a level above none at `now` (enabled or disabled entries: a staged certificate expires too);
    unreadable ones are skipped."""
    alerts = []
    for entry in resource.certificate_overrides:
        if not entry.certificate or (keys is not None and entry.key_hash not in keys):
            continue
        try:
            cert = x509.load_pem_x509_certificate(entry.certificate.encode())
        except ValueError:
            continue  # the resource's validation reports it
        level = expiry_level(cert.not_valid_before_utc, cert.not_valid_after_utc, now)
        if level is ExpiryLevel.NONE:
            continue
        fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        alerts.append(
            ExpiryAlert(
                resource.ca_type,
                entry.key_hash,
                fingerprint,
                level,
                cert.not_valid_after_utc,
                cert.not_valid_after_utc - now,
                entry.disabled,
            )
        )
    return alerts


def _left(remaining: dt.timedelta) -> str:
    if remaining >= DAY:
        days = remaining // DAY
        return f"{days} day{'s' if days != 1 else ''}"
    hours = max(1, math.ceil(remaining / dt.timedelta(hours=1)))
    return f"{hours} hour{'s' if hours != 1 else ''}"
