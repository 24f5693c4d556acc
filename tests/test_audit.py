"""The full-history audit: for about a minute, two writers per node on three nodes edit their node's override
entry, an `authctl edit`-style writer (UPDATE: read, modify, write at the revision read) and an `authctl
create -f`-style writer (UPSERT of the whole resource) edit the whole resource, while etcd members and nodes
are SIGKILLed (and started again) or SIGSTOPped (and continued). Then every revision etcd kept of the
override is checked against what each writer was told: every revision validates; every acknowledged write
is stored exactly once, at the revision it was given, with the effect it asked for; no refused write (some
are sent invalid on purpose) ever landed; writes that ended unknown (UNAVAILABLE, DEADLINE_EXCEEDED) may
or may not have landed, each at most once. A revision no acknowledged write claims is matched to a write
that may have landed there: one sent to the node its status.last_write names, while that node wrote it.
Real etcd members, real node processes, real SoftHSM tokens.

etcd keeps every revision until a compaction, and nothing compacts here: the members run without
--auto-compaction-retention and the product never calls Compact (a Range at a compacted revision fails).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import enum
import hashlib
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from authsim.auth_node.pb import authsim_pb2 as pb
from authsim.cluster.api.local_cluster import LocalCluster, local_cluster
from authsim.cluster.errors import AuthSimError, ClusterError, NotFoundError, UnavailableError, cut
from authsim.cluster.local import processes
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.external_ca import ExternalCA, init
from authsim.cluster.local.launcher import node_marker
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.resources.override import CertificateOverride
from authsim.cluster.resources.stored import read_override
from authsim.cluster.store import EtcdStore, EtcdTLS
from authsim.cluster.store.keys import override_key
from tests.etcd_pki import etcd_pki
from tests.test_faults import leader, wait_for

CLUSTER = "mycluster"
CA_TYPE = "windows"
RUN_SECONDS = 55.0  # of writes under faults; with start-up and the audit, the test takes about 75 s
UNKNOWN_PAUSE = 0.3  # seconds a writer waits after an unknown outcome (the node may be down)
FAULT_GAP = (0.3, 1.5)  # seconds between two faults
FAULT_LENGTH = (0.3, 1.5)  # seconds a process stays stopped, or dead before it is started again
NODES = 3
CLOCK_SLACK = 0.002  # seconds: status.last_write.time is cut to milliseconds
LATE_LANDING = 15.0  # seconds a node may go on with a write whose caller saw no answer (its etcd deadlines)

Entries = tuple[CertificateOverride, ...]
Sent = tuple["Write", str, Any]  # the write, the AuthService method, its request


class Outcome(enum.Enum):
    ACKED = "acknowledged"
    REFUSED = "refused"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Version:
    """The override as stored at `revision`; no entries when it was deleted then (or not there yet)."""

    revision: int
    entries: Entries | None
    problems: tuple[str, ...] = ()
    written: tuple[str, float] | None = None  # status.last_write: the node, and when (Unix time)


@dataclass
class Write:
    """One write a writer sent: what it asked for, and what the node answered."""

    writer: str
    kind: str  # an entry write: append, update, delete; a resource write: CREATE, UPDATE, UPSERT, rm
    key: str = ""  # entry writes: the public key of the entry
    entry: CertificateOverride = field(default_factory=CertificateOverride)  # append, update: as stored
    content: Entries = ()  # CREATE, UPDATE, UPSERT: the entries sent
    guard: int = 0  # UPDATE: the revision the resource was read at
    marker: str = ""  # a certificate no other write sends: where it is stored, this write landed
    invalid: bool = False  # sent to be refused
    outcome: Outcome = Outcome.UNKNOWN
    revision: int = 0
    changed: bool = False
    answer: str = ""
    node: str = ""  # the node it was sent to
    sent: float = 0.0  # Unix time
    answered: float = 0.0

    def explains(self, before: Version, after: Version) -> bool:
        """Whether this write, applied to `before`, stores `after`."""
        if self.kind == "rm":
            return before.entries is not None and after.entries is None
        if after.entries is None:
            return False
        if self.kind in ("CREATE", "UPDATE", "UPSERT"):
            fits = {
                "CREATE": before.entries is None,
                "UPDATE": before.entries is not None and before.revision == self.guard,
                "UPSERT": True,
            }[self.kind]
            return fits and after.entries == self.content
        current = before.entries or ()
        found = [i for i, e in enumerate(current) if e.public_key == self.key]
        if self.kind == "append":
            return not found and after.entries == (*current, self.entry)
        if not found:
            return False
        i = found[0]
        kept = (self.entry,) if self.kind == "update" else ()
        return after.entries == (*current[:i], *kept, *current[i + 1 :])

    def may_have_written(self, version: Version) -> bool:
        """Whether `version`'s status.last_write names this write's node at a time it was in flight
        (a deletion of the resource names none)."""
        late = LATE_LANDING if self.outcome is Outcome.UNKNOWN else 0.0
        return version.written is None or (
            version.written[0] == self.node
            and self.sent - CLOCK_SLACK <= version.written[1] <= self.answered + late + CLOCK_SLACK
        )

    def __str__(self) -> str:
        what = f"{self.kind}{' (invalid)' if self.invalid else ''}"
        target = f" key {self.key[:8]}" if self.key else ""
        cert = f" cert {short(self.marker)}" if self.marker else ""
        guard = f" at revision {self.guard}" if self.kind == "UPDATE" else ""
        if self.outcome is Outcome.ACKED:
            answer = f"revision {self.revision}{'' if self.changed else ' (no-op)'}"
        else:
            answer = cut(self.answer, 160)
        return f"{self.writer} {what}{target}{cert}{guard} → {self.outcome.value}: {answer}"


def short(certificate: str) -> str:
    return hashlib.sha256(certificate.encode()).hexdigest()[:8]


def append(writer: str, key: str, certificate: str, disabled: bool) -> Sent:
    entry = CertificateOverride(certificate, key, (), disabled)
    request = pb.CreateOverrideRequest(type=CA_TYPE, certificate=certificate, disabled=disabled, force=True)
    return Write(writer, "append", key, entry, marker=certificate), "CreateOverride", request


def update(writer: str, key: str, certificate: str, disabled: bool) -> Sent:
    entry = CertificateOverride(certificate, key, (), disabled)
    request = pb.UpdateOverrideRequest(
        type=CA_TYPE, public_key=key, set_disabled=disabled, set_certificate=certificate, force=True
    )
    return Write(writer, "update", key, entry, marker=certificate), "UpdateOverride", request


def delete(writer: str, key: str) -> Sent:
    request = pb.DeleteOverrideRequest(type=CA_TYPE, public_key=key, force=True)
    return Write(writer, "delete", key), "DeleteOverride", request


def invalid(sent: Sent) -> Sent:
    write, method, request = sent
    return replace(write, invalid=True), method, request


def write_resource(writer: str, mode: pb.WriteMode, content: Entries, guard: int, marker: str) -> Sent:
    resource = pb.CertAuthorityOverride(
        cluster_name=CLUSTER,
        type=CA_TYPE,
        revision=guard,
        certificate_overrides=[e.to_proto() for e in content],
    )
    request = pb.WriteOverrideRequest(resource=resource, mode=mode, force=True)
    kind = pb.WriteMode.Name(mode)
    write = Write(writer, kind, content=content, guard=guard, marker=marker)
    return write, "WriteOverrideResource", request


def with_entry(read: pb.CertAuthorityOverride | None, entry: CertificateOverride) -> Entries:
    """The entries `read`, with `entry` in place of the one for its key (appended when there is none)."""
    entries = [] if read is None else [CertificateOverride.from_proto(e) for e in read.certificate_overrides]
    keys = [e.public_key for e in entries]
    if entry.public_key in keys:
        entries[keys.index(entry.public_key)] = entry
    else:
        entries.append(entry)
    return tuple(entries)


class Writers:
    """Two writers per node editing that node's entry, an `authctl edit`-style writer and an `authctl
    create -f`-style writer of the whole resource; every write they send is recorded with its answer.
    Each write that stores a certificate sends a new one (signed for it), so where a certificate is
    stored tells which write landed."""

    def __init__(self, cluster: LocalCluster, external: ExternalCA, seed: int) -> None:
        self.cluster = cluster
        self.external = external
        self.seed = seed
        self.writes: list[Write] = []
        self.errors: list[BaseException] = []
        self.csrs: dict[str, bytes] = {}
        self.keys: dict[str, str] = {}
        for node in cluster.node_names:
            with cluster.client(node) as client:
                reply = client.call("CreateOverrideCSR", pb.CreateOverrideCSRRequest(type=CA_TYPE))
            self.csrs[node] = reply.csrs[0].pem.encode()
            self.keys[node] = reply.csrs[0].public_key_hash

    def fresh(self, node: str) -> str:
        """A new override certificate for `node`'s key: no other write sends it."""
        return self.external.sign_csr(self.csrs[node]).public_bytes(Encoding.PEM).decode().strip()

    def run(self, until: float) -> None:
        """Run every writer until `until`, each with its own clients (made here: the chaos loop rewrites
        cluster.yaml when it starts a node again); return once all have finished."""
        nodes = list(self.keys)
        clients = {(w, n): self.cluster.client(n) for w in ("1", "2", "edit", "create") for n in nodes}
        loops: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
            (self._entry_writer, (f"{n}/{w}", n, clients[w, n], until)) for n in nodes for w in ("1", "2")
        ]
        for writer, mode in (("edit", pb.UPDATE), ("create", pb.UPSERT)):
            mine = {n: clients[writer, n] for n in nodes}
            loops.append((self._resource_writer, (writer, mode, mine, until)))
        threads = [threading.Thread(target=self._recording_errors, args=(loop, args)) for loop, args in loops]
        try:
            for thread in threads:
                thread.start()
        finally:
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            for client in clients.values():
                client.close()

    def _recording_errors(self, loop: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            loop(*args)
        except BaseException as e:  # the test fails on it: a writer that stopped early would hide writes
            self.errors.append(e)

    def _rng(self, writer: str) -> random.Random:
        return random.Random(f"{self.seed}/{writer}")

    def _entry_writer(self, writer: str, node: str, client: NodeClient, until: float) -> None:
        """Append, change (a new certificate, enabled or not) and delete this node's entry; one write in
        ten is invalid: another node's key, not a certificate, a certificate of another node's key."""
        rng, key = self._rng(writer), self.keys[node]
        while time.monotonic() < until:
            disabled, roll = rng.random() < 0.5, rng.random()
            if roll < 0.35:
                sent = append(writer, key, self.fresh(node), disabled)
            elif roll < 0.7:
                sent = update(writer, key, self.fresh(node), disabled)
            elif roll < 0.9:
                sent = delete(writer, key)
            else:
                sent = invalid(self._invalid_entry_write(writer, node, rng))
            self._send(client, sent)

    def _invalid_entry_write(self, writer: str, node: str, rng: random.Random) -> Sent:
        """An enabled entry for another node's key, an entry that is not a certificate, or this node's
        entry changed to a certificate of another node's key."""
        other = rng.choice([n for n in self.keys if n != node])
        roll = rng.random()
        if roll < 1 / 3:
            return append(writer, self.keys[other], self.fresh(other), False)
        if roll < 2 / 3:
            return append(writer, "", f"not a certificate {rng.random()}", False)
        return update(writer, self.keys[node], self.fresh(other), False)

    def _resource_writer(
        self, writer: str, mode: pb.WriteMode, clients: dict[str, NodeClient], until: float
    ) -> None:
        """Read the resource through a node, give that node's entry a new certificate, write it back:
        with UPDATE at the revision read (CREATE when there is none; one in ten at a stale revision), or
        with UPSERT after a pause (one in twelve removes the resource instead)."""
        rng = self._rng(writer)
        while time.monotonic() < until:
            node = rng.choice(list(clients))
            client = clients[node]
            try:
                reply = client.call("ListOverrides", pb.GetOverrideRequest(type=CA_TYPE))
                read: pb.CertAuthorityOverride | None = reply.overrides[0]
            except NotFoundError:
                read = None
            except AuthSimError:
                time.sleep(UNKNOWN_PAUSE)
                continue
            if mode == pb.UPSERT:
                time.sleep(rng.uniform(0, 0.3))  # the copy ages: the upsert replaces what came meanwhile
                if rng.random() < 1 / 12:
                    request = pb.DeleteOverrideResourceRequest(type=CA_TYPE, force=True)
                    self._send(client, (Write(writer, "rm"), "DeleteOverrideResource", request))
                    continue
            certificate = self.fresh(node)
            entry = CertificateOverride(certificate, self.keys[node], (), rng.random() < 0.5)
            content = with_entry(read, entry)
            if mode == pb.UPSERT:
                self._send(client, write_resource(writer, pb.UPSERT, content, 0, certificate))
            elif read is None:
                self._send(client, write_resource(writer, pb.CREATE, content, 0, certificate))
            elif rng.random() < 0.1:
                stale = write_resource(writer, pb.UPDATE, content, read.revision - 1, certificate)
                self._send(client, invalid(stale))
            else:
                self._send(client, write_resource(writer, pb.UPDATE, content, read.revision, certificate))

    def _send(self, client: NodeClient, sent: Sent) -> None:
        """Send one write and record the answer: a reply is an acknowledgement, an error the node sent a
        refusal; UNAVAILABLE, DEADLINE_EXCEEDED or no answer from the node leave the outcome unknown."""
        write, method, request = sent
        write.node, write.sent = client.name, time.time()
        self.writes.append(write)
        try:
            reply = client.call(method, request)
        except (UnavailableError, ClusterError) as e:  # ClusterError: the transport failed otherwise
            write.outcome, write.answer = Outcome.UNKNOWN, str(e)
            time.sleep(UNKNOWN_PAUSE)
        except AuthSimError as e:
            write.outcome, write.answer = Outcome.REFUSED, f"{type(e).__name__}: {e}"
        else:
            write.outcome, write.revision, write.changed = Outcome.ACKED, reply.revision, reply.changed
        finally:
            write.answered = time.time()


@dataclass
class Chaos:
    """One fault at a time, each undone before the next: an etcd member or a node SIGKILLed (then started
    again) or SIGSTOPped (then continued), each kind in every round, a member killed twice (the loss of
    a member is what leaves a write's outcome unknown to the node), until `until`."""

    cluster: LocalCluster
    members: list[EtcdServer]
    until: float
    rng: random.Random
    done: Counter[str] = field(default_factory=Counter)
    error: BaseException | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Chaos:
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        faults = [self.kill_member, self.kill_member, self.stop_member, self.kill_node, self.stop_node]
        try:
            while True:
                self.rng.shuffle(faults)
                for fault in faults:
                    if self._stopping.wait(self.rng.uniform(*FAULT_GAP)) or time.monotonic() > self.until:
                        return
                    fault()
        except BaseException as e:  # reported by the test; every fault undoes itself first
            self.error = e

    def _member(self) -> EtcdServer:
        """Half of the time the leader (its loss means an election), else the member the nodes are
        connected to (a write it forwarded may commit after it died: the node cannot know)."""
        if self.rng.random() < 0.5:
            with contextlib.suppress(AssertionError, OSError):  # none leads (mid-election) or answers
                return leader(self.members, timeout=0)
        return max(self.members, key=connections)

    def _node(self) -> tuple[str, int]:
        name = self.rng.choice(self.cluster.node_names)
        pid = self.cluster.state.node(name).pid
        assert pid is not None
        return name, pid

    def _pause(self, pid: int, what: str) -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.rng.uniform(*FAULT_LENGTH))
        finally:
            os.kill(pid, signal.SIGCONT)
        self.done[what] += 1

    def kill_member(self) -> None:
        victim = self._member()
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        self.done["etcd member SIGKILLed"] += 1
        time.sleep(self.rng.uniform(*FAULT_LENGTH))
        victim.restart()

    def stop_member(self) -> None:
        victim = self._member()
        assert victim.pid is not None
        self._pause(victim.pid, "etcd member SIGSTOPped")

    def kill_node(self) -> None:
        name, pid = self._node()
        os.kill(pid, signal.SIGKILL)
        marker = node_marker(self.cluster.directory, name)
        assert wait_for(lambda: not processes.is_running(pid, marker), 5), f"{name} survived SIGKILL"
        self.done["node SIGKILLed"] += 1
        time.sleep(self.rng.uniform(*FAULT_LENGTH))
        LocalCluster.start(self.cluster.directory, nodes=NODES)  # `authsim up` starts only the dead node

    def stop_node(self) -> None:
        self._pause(self._node()[1], "node SIGSTOPped")


def connections(member: EtcdServer) -> int:
    """The TCP connections established to `member`'s client port (the nodes' etcd channels)."""
    port = f":{member.client_port:04X}"
    rows = [row.split() for row in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(port) and row[3] == "01")  # 01: ESTABLISHED


async def override_history(endpoints: list[str], tls: EtcdTLS) -> list[Version]:
    """Every version etcd kept of the override, oldest first, a deletion as a version without entries.

    Walks back from the current revision: the version read at revision r was written at its mod_revision
    m, and the one before it is the one read at m - 1. Where the key is absent the walk goes one revision
    at a time, to find the revision of the deletion. A compacted revision fails the Range, so a history
    read to its start is complete."""
    key = override_key(CLUSTER, CA_TYPE)
    found: list[tuple[int, bytes | None]] = []
    async with EtcdStore(endpoints, tls=tls) as store:
        revision = await store.ping()
        absent_from = 0
        while revision > 0:
            page = await store.get_page(key, limit=1, revision=revision)
            value = next((v for k, v in page.items if k == key), None)
            if value is None:
                absent_from, revision = revision, revision - 1
                continue
            if absent_from:
                found.append((absent_from, None))
                absent_from = 0
            found.append((value.mod_revision, value.value))
            revision = value.mod_revision - 1
    return [version(r, raw) for r, raw in reversed(found)]


def version(revision: int, raw: bytes | None) -> Version:
    if raw is None:
        return Version(revision, None)
    stored = read_override(raw, revision, CLUSTER, CA_TYPE)
    record = stored.resource.last_write or {}
    when = dt.datetime.fromisoformat(record["time"]).timestamp() if "time" in record else 0.0
    written = (str(record.get("node", "")), when) if record else None
    return Version(revision, stored.resource.certificate_overrides, stored.problems, written)


def change(before: Version, after: Version) -> str:
    """What a revision changed, by entry: +added, -removed, ~changed (key and certificate, shortened)."""
    if after.entries is None:
        return "removed the resource"
    old = {e.public_key: e for e in before.entries or ()}
    new = {e.public_key: e for e in after.entries}
    parts = [f"+{k[:8]} cert {short(new[k].certificate)}" for k in new.keys() - old.keys()]
    parts += [f"-{k[:8]}" for k in old.keys() - new.keys()]
    parts += [
        f"~{k[:8]} cert {short(new[k].certificate)}{' disabled' if new[k].disabled else ''}"
        for k in new.keys() & old.keys()
        if new[k] != old[k]
    ]
    return ", ".join(sorted(parts)) or "entries unchanged"


def audit(history: list[Version], writes: list[Write]) -> dict[str, list[str]]:
    """Every way the history contradicts what the writers were told, one line each, by rule."""
    transitions = list(zip([Version(0, None), *history[:-1]], history, strict=True))
    return {
        "revisions that break a rule": [
            f"revision {v.revision}: {v.problems[0]}" for v in history if v.problems
        ],
        "acknowledged writes not stored as acknowledged": acknowledged_problems(history, transitions, writes),
        "revisions no write that may have landed explains": unexplained_revisions(transitions, writes),
        "refused writes that landed": refused_that_landed(history, writes),
    }


def report(problems: dict[str, list[str]], seed: int, shown: int = 5) -> str:
    """The problems found, the first few of each rule."""
    lines = [f"the override's history contradicts the writers (seed {seed}):"]
    for rule, found in problems.items():
        if found:
            lines += [f"{len(found)} {rule}:", *(f"  {p}" for p in found[:shown])]
    return "\n".join(lines)


def acknowledged_problems(
    history: list[Version], transitions: list[tuple[Version, Version]], writes: list[Write]
) -> list[str]:
    """Each acknowledged write stored with its effect at its revision (a no-op: its entry is there), and
    no revision claimed by two."""
    made = {after.revision: (before, after) for before, after in transitions}
    revisions = [v.revision for v in history]
    claims: defaultdict[int, list[Write]] = defaultdict(list)
    problems = []
    for w in writes:
        if w.outcome is not Outcome.ACKED:
            continue
        if w.invalid:
            problems.append(f"an invalid write was acknowledged: {w}")
        elif not w.changed:
            at = bisect.bisect_right(revisions, w.revision) - 1
            if w.kind not in ("append", "update") or at < 0 or w.entry not in (history[at].entries or ()):
                problems.append(f"{w}: its entry is not stored at that revision")
        elif w.revision not in made:
            problems.append(f"{w}: the override did not change at that revision")
        else:
            claims[w.revision].append(w)
            if not w.explains(*made[w.revision]):
                problems.append(f"{w}: revision {w.revision} instead {change(*made[w.revision])}")
    for revision, claimed in claims.items():
        if len(claimed) > 1:
            problems.append(f"revision {revision} acknowledged to {len(claimed)} writes: {claimed}")
    return problems


def unexplained_revisions(transitions: list[tuple[Version, Version]], writes: list[Write]) -> list[str]:
    """Each revision no acknowledged write claims made by a distinct write that may have landed there:
    one that ended unknown, or an acknowledged no-op (its earlier attempt may have landed), sent to the
    node its status.last_write names while that node wrote it."""
    claimed = {w.revision for w in writes if w.outcome is Outcome.ACKED and w.changed}
    open_ = [t for t in transitions if t[1].revision not in claimed]
    maybe = [w for w in writes if not w.invalid and (w.outcome is Outcome.UNKNOWN or noop(w))]
    edges = {
        i: [j for j, w in enumerate(maybe) if w.explains(*t) and w.may_have_written(t[1])]
        for i, t in enumerate(open_)
    }
    problems = []
    for i in unmatched(edges):
        before, after = open_[i]
        makers = [w for w in writes if w.explains(before, after)]
        makers = [w for w in makers if w.may_have_written(after)] or makers
        makers.sort(key=lambda w: w.outcome is not Outcome.REFUSED)
        what = f": it is what {' or '.join(map(str, makers[:3]))} did" if makers else ""
        problems.append(
            f"revision {after.revision} ({change(before, after)}{written_by(after)}) was made by no write "
            f"that may have landed{what}"
        )
    return problems


def written_by(version: Version) -> str:
    if version.written is None:
        return ""
    node, when = version.written
    at = dt.datetime.fromtimestamp(when, dt.timezone.utc).isoformat(timespec="milliseconds")
    return f"; status.last_write: {node} at {at}"


def noop(write: Write) -> bool:
    return write.outcome is Outcome.ACKED and not write.changed


def unmatched(edges: dict[int, list[int]]) -> list[int]:
    """The revisions (keys) left without a write of their own when each is matched to one of the writes
    that could have made it (values), each write to at most one revision: a maximum bipartite matching."""
    owner: dict[int, int] = {}

    def assign(revision: int, seen: set[int]) -> bool:
        for write in edges[revision]:
            if write not in seen:
                seen.add(write)
                if write not in owner or assign(owner[write], seen):
                    owner[write] = revision
                    return True
        return False

    return [revision for revision in edges if not assign(revision, set())]


def refused_that_landed(history: list[Version], writes: list[Write]) -> list[str]:
    """No certificate of a refused or invalid write is stored at any revision."""
    stored = {e.certificate: v.revision for v in history for e in v.entries or ()}
    return [
        f"{w}: landed, its certificate is stored at revision {stored[w.marker]}"
        for w in writes
        if w.marker in stored and (w.outcome is Outcome.REFUSED or w.invalid)
    ]


def summary(writes: list[Write], history: list[Version], faults: Counter[str], seed: int) -> str:
    outcomes = Counter(
        f"{w.kind}{' (invalid)' if w.invalid else ''} {w.outcome.value}{' (no-op)' if noop(w) else ''}"
        for w in writes
    )
    totals = Counter(w.outcome.value for w in writes)
    lines = [
        f"audit (seed {seed}): {len(writes)} writes: "
        + ", ".join(f"{totals[o.value]} {o.value}" for o in Outcome),
        *(f"  {name}: {count}" for name, count in sorted(outcomes.items())),
        f"revisions of ca_overrides/{CA_TYPE} checked: {len(history)}",
        "faults: " + ", ".join(f"{count} {what}" for what, count in sorted(faults.items())),
    ]
    return "\n".join(lines)


def test_every_revision_of_a_minute_of_writes_under_faults_is_what_the_writers_were_told(
    etcd_members: list[EtcdServer], tmp_path: Path
) -> None:
    endpoints = [s.endpoint for s in etcd_members]
    tls = etcd_pki(tmp_path / "etcd-pki").client
    seed = random.randrange(1 << 32)
    with local_cluster(tmp_path / "c", nodes=NODES, etcd_endpoints=endpoints, etcd_tls=tls) as cluster:
        writers = Writers(cluster, init(tmp_path / "extca"), seed)
        until = time.monotonic() + RUN_SECONDS
        with Chaos(cluster, etcd_members, until, random.Random(seed)) as chaos:
            writers.run(until)
    assert chaos.error is None, f"a fault could not be undone: {chaos.error!r}"
    assert not writers.errors, f"a writer failed: {writers.errors[0]!r}"
    history = asyncio.run(override_history(endpoints, tls))
    print(summary(writers.writes, history, chaos.done, seed))
    problems = audit(history, writers.writes)
    if any(problems.values()):
        pytest.fail(report(problems, seed), pytrace=False)
    assert len(chaos.done) == 4, chaos.done  # every kind of fault happened
    acked = Counter(w.kind for w in writers.writes if w.outcome is Outcome.ACKED)
    assert all(acked[k] for k in ("append", "update", "delete", "UPDATE", "UPSERT")), acked
