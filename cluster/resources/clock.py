"""The one clock of authsim: the current time, or the time `AUTHSIM_NOW` names (for tests and rehearsals)."""

from __future__ import annotations

import datetime as dt
import os

from authsim.cluster.errors import ValidationError, quoted

NOW_ENV = "AUTHSIM_NOW"  # ISO 8601; a time without a zone is UTC


def now() -> dt.datetime:
    """The current time in UTC, or the time $AUTHSIM_NOW names when it is set (the node and the CLIs
    read it here, so a rehearsal moves every clock of a cluster at once)."""
    text = os.environ.get(NOW_ENV, "")
    if not text:
        return dt.datetime.now(dt.timezone.utc)
    return parse_time(text, NOW_ENV)


def parse_time(text: str, what: str) -> dt.datetime:
    """An ISO 8601 time in UTC (UTC when it names no zone); ValidationError naming `what` otherwise."""
    try:
        found = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError([f"{what}: {quoted(text)} is not an ISO 8601 time"]) from None
    if found.tzinfo is None:
        found = found.replace(tzinfo=dt.timezone.utc)
    return found.astimezone(dt.timezone.utc)
