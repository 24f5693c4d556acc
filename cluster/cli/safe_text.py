"""Text from nodes, etcd or a cluster's files as the CLIs print it: control characters escaped, no markup."""

from __future__ import annotations

from rich.text import Text

from authsim.cluster.errors import escape_unprintable


def escaped(value: object) -> str:
    """`str(value)` with every character Python calls unprintable (C0/C1 controls such as ESC and BEL,
    DEL, line separators, bidirectional overrides and other format characters, lone surrogates) written
    as a visible escape: `\\x1b`, `\\x07`, `\\u202e`. Printable text, spaces and `[` stay as they are."""
    return escape_unprintable(str(value))


def cell(value: object) -> Text:
    """A table cell or a printed line: `escaped`, and a rich Text, so `[bold]` or `[/]` is shown as
    written instead of being read as console markup."""
    return Text(escaped(value))


def cell_lines(text: str) -> Text:
    """Lines we put together (`authsim watch`): each line `escaped`, the line breaks between them kept."""
    return Text("\n".join(escaped(line) for line in text.split("\n")))
