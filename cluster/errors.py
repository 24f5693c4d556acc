"""The one exception tree of authsim: every domain error is an AuthSimError."""

from __future__ import annotations

import re
import shlex
import unicodedata

MAX_QUOTED = 80  # characters of caller input an error message quotes
MAX_PROBLEMS_SHOWN = 5  # problems a ValidationError's message names; the rest are counted
MAX_PROBLEM_CHARS = 400  # one problem in a message
MAX_MESSAGE_CHARS = 4000  # a whole error message (gRPC's metadata limit is 8 KB)


def one_line(text: str) -> str:
    """`text` on one line: newlines, control, format (bidi) and separator characters escaped."""
    return escape_unprintable(text, named_whitespace=True)


def escape_unprintable(text: str, named_whitespace: bool = False) -> str:
    """`text` with every character Python calls unprintable written as a visible escape (`\\x1b`,
    `\\u202e`); with `named_whitespace`, newline, return and tab as `\\n`, `\\r`, `\\t`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c, named_whitespace) for c in text)


def _escaped(c: str, named_whitespace: bool) -> str:
    code = ord(c)
    if code < 0x100:
        return repr(c)[1:-1] if named_whitespace and c in "\n\r\t" else f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def cut(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` characters ending with "…" when cut."""
    flat = one_line(text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def quoted(value: object, limit: int = MAX_QUOTED) -> str:
    """Caller input as an error message quotes it: in quotes, one line, cut to `limit` characters."""
    return f"'{cut(str(value), limit - 2)}'"


def node_command(node_name: str) -> str:
    """What a refusal naming another node says to run there: `authctl --node NAME …`, the `…` standing
    for the refused command's own arguments (authctl writes them in: `exact_node_commands`)."""
    return f"`authctl --node {node_name} …`"


def exact_node_commands(message: str, args: list[str]) -> str:
    """`message` with each `node_command` in it completed with `args`, the refused authctl command's
    arguments (any --node or --auth-server of theirs left out)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--node", "--auth-server"):
            skip = True
        elif not arg.startswith(("--node=", "--auth-server=")):
            kept.append(arg)
    rest = shlex.join(kept)
    return re.sub(r"`authctl --node (\S+) …`", lambda m: f"`authctl --node {m[1]} {rest}`", message)


def control_character(text: str) -> str | None:
    """The first character of `text` that is not printable (control, format/bidi, separator), as U+XXXX."""
    for c in text:
        if c != " " and not c.isprintable():
            return f"U+{ord(c):04X} ({unicodedata.name(c, unicodedata.category(c))})"
    return None


class AuthSimError(Exception):
    """Base of every error authsim raises on purpose; its message is one line for the user."""


class ValidationError(AuthSimError):
    """Input breaks a rule; `problems` lists every broken rule as `field.path: rule`.

    The message names the first few (`summary`), or is `message` when given (one a node sent).
    """

    def __init__(self, problems: list[str], message: str | None = None) -> None:
        self.problems = list(problems)
        super().__init__(summary(self.problems) if message is None else message)


def summary(problems: list[str]) -> str:
    """The first few problems on one line, each cut, then how many more there are: a few KB at most."""
    shown = [cut(p, MAX_PROBLEM_CHARS) for p in problems[:MAX_PROBLEMS_SHOWN]]
    more = len(problems) - len(shown)
    if more:
        shown.append(f"and {more} more problem{'s' if more > 1 else ''}")
    return "; ".join(shown)


class ConflictError(AuthSimError):
    """A conditional write lost: the stored revision is not the one the caller read."""

    def __init__(self, message: str, expected_revision: int = 0, actual_revision: int = 0) -> None:
        self.expected_revision = expected_revision
        self.actual_revision = actual_revision
        super().__init__(message)


class OutcomeUnknownError(AuthSimError):
    """A write was sent and etcd's answer never came (a timeout, a lost connection): it may or may not
    have landed. `request_id` names the write (status.last_write.request_id where it is stored)."""

    def __init__(self, message: str, request_id: str = "") -> None:
        self.request_id = request_id
        super().__init__(message)


class AlreadyExistsError(AuthSimError):
    """A create found the resource already there."""


class NotFoundError(AuthSimError):
    """The named resource, key or token does not exist."""


class KeyAccessError(AuthSimError):
    """A key cannot be used here: another node's key, a locked or missing token, a wrong PIN.

    For another node's key, `owner_host_id` is the host whose token holds it and `asking_host_id`
    the host that tried to use it.
    """

    def __init__(self, message: str, owner_host_id: str = "", asking_host_id: str = "") -> None:
        self.owner_host_id = owner_host_id
        self.asking_host_id = asking_host_id
        super().__init__(message)


class StoredDataError(AuthSimError):
    """A resource in etcd breaks a rule (written by hand, by an older version, by an intruder): not used."""


class UnavailableError(AuthSimError):
    """A part of the cluster (etcd, a node) did not answer: retrying later may succeed."""


class StoreUnavailableError(UnavailableError):
    """The etcd cluster cannot be reached or did not answer in time."""


class NodeUnavailableError(UnavailableError):
    """An Auth node cannot be reached or did not answer in time."""


class HsmUnavailableError(UnavailableError, KeyAccessError):
    """A node's HSM did not answer within the deadline, or failed (stopped, hung, gone): the node
    reconnects on its own once it answers again; retrying later may succeed."""


class StoreAccessError(AuthSimError):
    """etcd refused this client identity the key it asked for (etcd RBAC: outside its role's prefixes)."""


class ClusterError(AuthSimError):
    """The local cluster cannot be set up, started or stopped (missing binary, port, state dir)."""


class PortInUseError(ClusterError):
    """A process could not listen on its port: another process holds it (picked free, taken since)."""
