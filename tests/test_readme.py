"""The README read top to bottom: its commands, run in its order on a fresh cluster, do what it shows.

What runs: every `$ ` line in the README's indented or fenced blocks, in README order, with its `\\`
continuation lines and here-document (`<<'EOF'` … `EOF`) joined to it. The lines after a command, up to
the next `$ `, are the output the README shows for it. A block right after a line
`<!-- not run: REASON -->` is skipped (the demo's transcript, a stopped node, a clock months ahead, ...);
blocks without `$ ` lines are examples or output, never run.

The README's placeholders, and what they become here:
- `/tmp/` (the README's folders: `/tmp/c1`, `/tmp/csr`, `/tmp/certs`, ...) is this test's temp dir.
- Key hashes differ per run. The README's `get cas/TYPE --format text` tables say which node holds
  which key; the same command's real output says it for this run. From then on a hex word in a
  command that starts a README key hash (`ae163089`, `448a0bfed1eef4ef`) is replaced by as many
  characters of the hash of the key that node holds here.

Checks, per command: the exit status is non-zero exactly when the README shows an `error:` line; each
line of shown output (but `...`) is a line of the real output (stdout and stderr), in any order (table
rows are ordered by role), where:
- every run of hex digits with a digit in it or of four or more (hashes, ids, ports, revisions, dates,
  node numbers) matches any such run, and any run of spaces any other;
- `active` and `additional` match each other: which node's key is active differs per run (the first
  node to reach etcd creates the CAs);
- a shown line ending in `…` matches a line that starts with it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from authsim.cluster.local.launcher import down

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = re.compile(r"<!-- not run: .+ -->")
HASH_ROW = re.compile(r"\b([0-9a-f]{16})\b.*\b(node\d+)\b")
HEX_WORD = re.compile(r"\b[0-9a-f]{8,64}\b")
VOLATILE = re.compile(r"[0-9a-f]*[0-9][0-9a-f]*|\b[a-f]{4,}\b|\b(active|additional)\b")


@dataclass
class Command:
    line: int  # in README.md
    text: str
    shown: list[str] = field(default_factory=list)

    @property
    def fails(self) -> bool:
        return any(s.startswith("error:") for s in self.shown)


def blocks(lines: list[str]) -> list[tuple[int, list[str], bool]]:
    """(first line number, lines without their indent, whether a `not run` marker precedes it)."""
    found: list[tuple[int, list[str], bool]] = []
    i, marked = 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append((i + 2, lines[i + 1 : end], marked))
            i, marked = end + 1, False
        elif line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            found.append((i + 1, [t[4:] for t in lines[i:end]], marked))
            i, marked = end, False
        else:
            if line.strip():
                marked = bool(NOT_RUN.fullmatch(line.strip()))
            i += 1
    return found


def commands(readme: str) -> list[Command]:
    found: list[Command] = []
    for start, body, skipped in blocks(readme.splitlines()):
        if skipped:
            continue
        i = 0
        while i < len(body):
            if not body[i].startswith("$ "):
                if found and found[-1].line >= start:
                    found[-1].shown.append(body[i].rstrip())
                i += 1
                continue
            command = Command(start + i, body[i][2:])
            heredoc = re.search(r"<<'?(\w+)'?", command.text)
            while command.text.endswith("\\"):
                i += 1
                command.text = command.text[:-1] + " " + body[i].strip()
            if heredoc:
                end = body.index(heredoc.group(1), i + 1)
                command.text = "\n".join([command.text, *body[i + 1 : end + 1]])
                i = end
            found.append(command)
            i += 1
    return found


def shape(line: str) -> str:
    return " ".join(VOLATILE.sub("#", line).split())


def missing_lines(shown: list[str], output: str) -> list[str]:
    actual = [shape(line) for line in output.splitlines()]
    return [s for s in shown if s.strip() not in ("...", "…", "") and not _in(shape(s), actual)]


def _in(line: str, actual: list[str]) -> bool:
    """A line shown cut short, ending in `…`, matches any line that starts with it."""
    if line.endswith("…"):
        return any(a.startswith(line[:-1]) for a in actual)
    return line in actual


def node_hashes(lines: list[str]) -> dict[str, str]:
    return {m.group(2): m.group(1) for line in lines if (m := HASH_ROW.search(line))}


class Walk:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.hashes: dict[str, str] = {}  # README key hash -> this run's hash of the key the same node holds
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        self.env.pop("AUTHSIM_DIR", None)

    def localize(self, text: str) -> str:
        text = text.replace("/tmp/", f"{self.work}/")
        return HEX_WORD.sub(self._hash_here, text)

    def _hash_here(self, word: re.Match[str]) -> str:
        for readme_hash, here in self.hashes.items():
            if readme_hash.startswith(word.group()):
                return here[: len(word.group())]
        return word.group()

    def run(self, command: Command) -> str:
        done = subprocess.run(
            ["bash", "-c", self.localize(command.text)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        output = done.stdout + done.stderr
        where = f"README.md:{command.line}: $ {command.text}\n{output}"
        assert (done.returncode != 0) == command.fails, f"exit status {done.returncode}, {where}"
        missing = missing_lines([self.localize(s) for s in command.shown], output)
        assert not missing, f"not in the output: {missing}\n{where}"
        if "--format text" in command.text and " get cas/" in command.text:
            here = node_hashes(output.splitlines())
            self.hashes.update({h: here[node] for node, h in node_hashes(command.shown).items()})
        return output


def stop_clusters(work: Path) -> None:
    for state in work.glob("*/cluster.yaml"):
        down(state.parent)  # every PID its cluster.yaml records


def test_the_readme_walk_runs_as_shown(tmp_path: Path) -> None:
    walk = commands((ROOT / "README.md").read_text())
    assert len(walk) > 30, "the README's walk lost its `$ ` lines"
    runner = Walk(tmp_path)
    try:
        for command in walk:
            runner.run(command)
    finally:
        stop_clusters(tmp_path)


def test_the_extraction_reads_continuations_heredocs_output_and_markers() -> None:
    readme = "\n".join(
        [
            "text",
            "",
            "    $ authctl a \\",
            "        --b c",
            "    out 1",
            "    error: no",
            "",
            "<!-- not run: a reason -->",
            "",
            "    $ authsim skipped",
            "",
            "```",
            "$ cat > /tmp/f <<'EOF'",
            "x: 1",
            "EOF",
            "$ true",
            "```",
        ]
    )
    found = commands(readme)
    assert [(c.line, c.text, c.shown, c.fails) for c in found] == [
        (3, "authctl a  --b c", ["out 1", "error: no", ""], True),
        (13, "cat > /tmp/f <<'EOF'\nx: 1\nEOF", [], False),
        (16, "true", [], False),
    ]
    assert shape("│ active │ ae16308953ad6445 │ node2 │ revision 12") == shape(
        "│ active     │ 0f9bdead03ad6445 │ node3 │ revision 9"
    )
