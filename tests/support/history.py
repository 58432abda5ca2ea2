"""A Jepsen-style history of appends against a cluster, and the checker that judges it.

Clients record every append they attempt as an :class:`Op`: *invoked* before the request goes
out, then *completed* as ``ok`` (the server acknowledged it, with its seq), ``fail`` (the API says
it was certainly not applied) or ``info`` (nobody can say: a timeout, a reset connection, a 5xx,
a retryable 421). Stream followers record each event they saw (:class:`FollowerLog`); the nemesis
records each fault it injected and when every session it probed was writable again
(:class:`Fault`). Once every fault is healed, the test reads each session's stored log and
:func:`check` compares the three.

Only the history and the final logs decide: the checker never asks a node what it believes, so a
node that lies (acknowledges and then loses, or writes after it lost its fence) is caught by what
clients saw against what the store kept. ``info`` operations may be present or absent, once.

What counts as a **stale-fence write**, as far as a client can observe one: an acknowledged
append whose acknowledged seq holds something else in the final log (the store accepted it from a
writer whose fence had moved, and a later owner wrote over that seq's place), two acknowledgements
of the same seq, or a message in a log that no client ever sent. On a correct cluster each is 0.

Everything here is pure (no I/O) except the thread-safe recording, so that
tests/unit/test_history_checker.py can prove on made-up histories that each anomaly is caught.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "calm_latency",
    "DEFINITE_FAILURES",
    "INDETERMINATE_STATUSES",
    "Fault",
    "FollowerLog",
    "History",
    "LogEvent",
    "Op",
    "Outcome",
    "Report",
    "check",
    "classify",
]

Outcome = Literal["ok", "fail", "info"]

#: 4xx answers that do *not* prove the append was not applied: 408 (the server gave up reading,
#: or waiting), 421 (not the owner: a forwarded command may have reached the owner before the
#: answer was lost), 429 (over a limit, possibly after the forwarder's own attempt went through).
INDETERMINATE_STATUSES = frozenset({408, 421, 429})
#: Problem types (their last path segment) that mean "maybe applied" whatever the status.
_INDETERMINATE_PROBLEMS = frozenset({"not-owner", "store-unavailable", "commit-outcome-unknown"})
#: The statuses the checker accepts as a definite "not applied": a refusal before anything was
#: written (bad request, unknown or terminated session, a busy session, a payload too large).
DEFINITE_FAILURES = frozenset({400, 401, 403, 404, 409, 410, 413, 415, 422})

#: How many examples of each anomaly a report keeps (the counts are complete).
_EXAMPLES = 5


def classify(status: int | None, problem_type: str | None = None) -> Outcome:
    """The outcome of an append from its HTTP status (``None``: no answer at all) and its
    problem type: ``ok`` for a 2xx, ``fail`` only for a refusal the API defines as certainly not
    applied, ``info`` for everything else."""
    if status is None:
        return "info"
    if 200 <= status < 300:
        return "ok"
    slug = (problem_type or "").rstrip("/").rsplit("/", 1)[-1]
    if slug in _INDETERMINATE_PROBLEMS or status in INDETERMINATE_STATUSES:
        return "info"
    if status in DEFINITE_FAILURES:
        return "fail"
    return "info"


@dataclass
class Op:
    """One append: what was sent where, when, and how it ended (times in seconds since the
    history began, on the monotonic clock)."""

    index: int
    worker: str
    session_id: str
    text: str
    node: str
    invoked: float
    outcome: Outcome | None = None
    completed: float | None = None
    seq: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class LogEvent:
    """One event of a session's stored log (or of a stream): ``text`` is a message's content,
    ``None`` for any other event."""

    seq: int
    type: str
    text: str | None = None

    @classmethod
    def from_wire(cls, event: Mapping[str, Any]) -> LogEvent:
        data = event.get("data") or {}
        text = data.get("content") if event.get("type") == "conversation_added" else None
        return cls(int(event["seq"]), str(event["type"]), text if isinstance(text, str) else None)


@dataclass
class FollowerLog:
    """What one stream follower saw of one session, across its reconnections (each to a node
    of its choice, with ``Last-Event-ID``): every event in arrival order."""

    session_id: str
    after_seq: int = 0  #: it asked for the events after this seq
    seen: list[LogEvent] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)  #: the node of each (re)connection


@dataclass
class Fault:
    """One injected fault: its kind (``kill``, ``stop``, ``term``, ``cut-postgres``,
    ``cut-redis``), the node, when it began and was healed, and for each session probed after it
    the time its first append was acknowledged (``None``: never, within the probe's deadline)."""

    kind: str
    node: str
    started: float
    healed: float | None = None
    writable: dict[str, float | None] = field(default_factory=dict)
    #: What went wrong with the fault itself (a node that would not stop on SIGTERM, or not
    #: come back): an anomaly of the cluster, not of the test.
    problem: str | None = None

    @property
    def takeover(self) -> float | None:
        """Seconds from the fault until the last probed session was writable again; ``inf`` if
        one never was; ``None`` if nothing was probed."""
        if not self.writable:
            return None
        if any(at is None for at in self.writable.values()):
            return float("inf")
        return max(at for at in self.writable.values() if at is not None) - self.started


class History:
    """The operations of a run, recorded from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._origin = time.monotonic()
        self.ops: list[Op] = []
        self.faults: list[Fault] = []

    def now(self) -> float:
        return time.monotonic() - self._origin

    def invoke(self, worker: str, session_id: str, text: str, node: str) -> Op:
        with self._lock:
            op = Op(len(self.ops), worker, session_id, text, node, self.now())
            self.ops.append(op)
        return op

    def complete(self, op: Op, outcome: Outcome, *, seq: int | None = None, detail: str = "") -> Op:
        with self._lock:
            if op.outcome is not None:
                raise RuntimeError(f"operation {op.index} completed twice")
            op.outcome, op.completed, op.seq, op.detail = outcome, self.now(), seq, detail
        return op

    def fault(self, kind: str, node: str) -> Fault:
        with self._lock:
            fault = Fault(kind, node, self.now())
            self.faults.append(fault)
        return fault


@dataclass
class Report:
    """The checker's verdict: counts, and a few examples of each anomaly found."""

    operations: int = 0
    ok: int = 0
    failed: int = 0
    indeterminate: int = 0
    indeterminate_applied: int = 0
    faults: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    events: int = 0
    followers: int = 0
    follower_events: int = 0
    lost: int = 0
    duplicated: int = 0
    failed_but_applied: int = 0
    gaps: int = 0
    stale_fence_writes: int = 0
    follower_anomalies: int = 0
    slow_takeovers: int = 0
    fault_problems: int = 0
    takeover_bound: float = 0.0
    worst_takeover: float | None = None
    takeover_by_kind: dict[str, float | None] = field(default_factory=dict)
    #: How many times fences moved in the store during the run (set by the test from the
    #: sessions' rows, when it can read them): proof that takeovers happened at all.
    fence_raises: int | None = None
    #: Each fault: kind, node, when it began and was healed, sessions probed, takeover time.
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def anomalies(self) -> int:
        return sum(
            (
                self.lost,
                self.duplicated,
                self.failed_but_applied,
                self.gaps,
                self.stale_fence_writes,
                self.follower_anomalies,
                self.slow_takeovers,
                self.fault_problems,
            )
        )

    @property
    def valid(self) -> bool:
        return self.anomalies == 0

    def note(self, kind: str, example: str) -> None:
        examples = self.examples.setdefault(kind, [])
        if len(examples) < _EXAMPLES:
            examples.append(example)

    def to_json(self) -> str:
        document = asdict(self)
        document["valid"] = self.valid
        document["worst_takeover"] = _finite(self.worst_takeover)
        document["takeover_by_kind"] = {k: _finite(v) for k, v in self.takeover_by_kind.items()}
        return json.dumps(document, indent=2, sort_keys=True)

    def summary(self) -> str:
        worst = "n/a" if self.worst_takeover is None else f"{self.worst_takeover:.2f} s"
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.faults_by_kind.items()))
        lines = [
            f"history checker: {'VALID' if self.valid else 'INVALID'}",
            f"  operations {self.operations}: ok {self.ok}, fail {self.failed}, "
            f"info {self.indeterminate} (applied {self.indeterminate_applied})",
            f"  faults {self.faults} ({kinds})",
            f"  sessions {self.sessions}, events {self.events}; followers {self.followers} "
            f"saw {self.follower_events} events",
            f"  acked {self.ok}, lost {self.lost}, duplicated {self.duplicated}, failed but "
            f"applied {self.failed_but_applied}, gaps {self.gaps}, stale-fence writes "
            f"{self.stale_fence_writes}, follower anomalies {self.follower_anomalies}",
            f"  fence raises in the store: {self.fence_raises}",
            f"  worst takeover {worst} (bound {self.takeover_bound:.2f} s, "
            f"{self.slow_takeovers} over it; {self.fault_problems} faults went wrong); by kind: "
            + ", ".join(
                f"{k} {'n/a' if v is None else f'{v:.2f} s'}"
                for k, v in sorted(self.takeover_by_kind.items())
            ),
        ]
        for kind, examples in sorted(self.examples.items()):
            lines += [f"  {kind}: {example}" for example in examples]
        return "\n".join(lines)


def calm_latency(
    ops: Sequence[Op], faults: Sequence[Fault], settle: float, quantile: float = 0.99
) -> float:
    """How long an acknowledged append took, at ``quantile``, among those no fault was in:
    probes aside, and those sent between a fault's start and its heal plus ``settle`` either to
    a session its probes were after or through its node. What a write costs on this machine
    under the run's load. 0.0 if there are none.

    A takeover bound is a promise about the cluster (a lease of TTL, then a take), but the same
    machine answers it: on two cores beside a CPU hog every request of the run is slower, and a
    bound that does not allow for that flags the machine's load instead of the cluster."""
    windows = [
        (f.started, (f.healed if f.healed is not None else f.started) + settle, f) for f in faults
    ]
    took = sorted(
        op.completed - op.invoked
        for op in ops
        if op.outcome == "ok"
        and op.completed is not None
        and op.worker != "probe"
        and not any(
            start <= op.invoked <= end
            and (op.session_id in fault.writable or op.node == fault.node)
            for start, end, fault in windows
        )
    )
    if not took:
        return 0.0
    return took[min(len(took) - 1, int(quantile * len(took)))]


def _finite(value: float | None) -> float | str | None:
    return "never" if value == float("inf") else value


def check(
    ops: Sequence[Op],
    logs: Mapping[str, Sequence[LogEvent]],
    *,
    followers: Iterable[FollowerLog] = (),
    faults: Iterable[Fault] = (),
    takeover_bound: float = float("inf"),
    marker: str = "",
) -> Report:
    """Judge a finished run: ``ops`` as recorded, ``logs`` every session's final stored log,
    ``followers`` what the streams delivered, ``faults`` what the nemesis did. ``marker`` is a
    prefix every message the clients sent starts with; a message in a log that has it but that
    no client sent is a write nobody asked for (counted as a stale-fence write)."""
    report = Report(takeover_bound=takeover_bound)
    report.operations = len(ops)
    report.sessions = len(logs)
    report.events = sum(len(log) for log in logs.values())

    # Where each message text ended up: [(session, seq)].
    placed: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for sid, log in logs.items():
        _check_gap_free(report, sid, log)
        for event in log:
            if event.text is not None:
                placed[event.text].append((sid, event.seq))
    for text, places in placed.items():
        if len(places) > 1:
            report.duplicated += len(places) - 1
            report.note("duplicated", f"{text!r} at {places}")

    sent = {op.text for op in ops}
    for text, places in placed.items():
        if marker and text.startswith(marker) and text not in sent:
            report.stale_fence_writes += len(places)
            report.note("unrequested", f"{text!r} at {places}: no client sent it")

    acked_seqs: dict[tuple[str, int], Op] = {}
    for op in ops:
        places = placed.get(op.text, [])
        here = [seq for sid, seq in places if sid == op.session_id]
        elsewhere = [(sid, seq) for sid, seq in places if sid != op.session_id]
        if elsewhere:
            report.stale_fence_writes += len(elsewhere)
            report.note("misplaced", f"op {op.index} for {op.session_id} found at {elsewhere}")
        if op.outcome == "ok":
            report.ok += 1
            if not here:
                report.lost += 1
                report.note("lost", _describe(op))
            elif op.seq is not None and op.seq not in here:
                report.stale_fence_writes += 1
                report.note("ack-seq-mismatch", f"{_describe(op)}; the log has it at {here}")
            if op.seq is not None:
                other = acked_seqs.setdefault((op.session_id, op.seq), op)
                if other is not op:
                    report.stale_fence_writes += 1
                    report.note(
                        "seq-acked-twice", f"ops {other.index} and {op.index}: seq {op.seq}"
                    )
        elif op.outcome == "fail":
            report.failed += 1
            if here:
                report.failed_but_applied += 1
                report.note("failed-but-applied", f"{_describe(op)}; in the log at {here}")
        else:  # info, or never completed (the run ended while it was in flight)
            report.indeterminate += 1
            report.indeterminate_applied += bool(here)

    by_session = {sid: {event.seq: event for event in log} for sid, log in logs.items()}
    for follower in followers:
        report.followers += 1
        report.follower_events += len(follower.seen)
        _check_follower(report, follower, by_session.get(follower.session_id, {}))

    worst: dict[str, float | None] = {}
    for fault in faults:
        report.faults += 1
        report.faults_by_kind[fault.kind] = report.faults_by_kind.get(fault.kind, 0) + 1
        if fault.problem is not None:
            report.fault_problems += 1
            report.note("fault-problem", f"{fault.kind} {fault.node}: {fault.problem}")
        took = fault.takeover
        report.fault_log.append(
            {"kind": fault.kind, "node": fault.node, "started": round(fault.started, 3),
             "healed": None if fault.healed is None else round(fault.healed, 3),
             "probed": len(fault.writable), "takeover": _finite(took),
             "problem": fault.problem}
        )  # fmt: skip
        if took is None:
            worst.setdefault(fault.kind, None)
            continue
        previous = worst.get(fault.kind)
        worst[fault.kind] = took if previous is None else max(previous, took)
        if took > takeover_bound:
            report.slow_takeovers += 1
            never = sorted(s for s, at in fault.writable.items() if at is None)
            report.note(
                "slow-takeover",
                f"{fault.kind} {fault.node} at {fault.started:.2f}: "
                + (f"{len(never)} never writable: {never[:3]}" if never else f"{took:.2f} s"),
            )
    report.takeover_by_kind = worst
    measured = [v for v in worst.values() if v is not None]
    report.worst_takeover = max(measured) if measured else None
    return report


def _describe(op: Op) -> str:
    return (
        f"op {op.index} {op.outcome} {op.text!r} on {op.session_id} via {op.node} "
        f"[{op.invoked:.2f}-{op.completed if op.completed is None else round(op.completed, 2)}]"
        f" seq {op.seq}"
    )


def _check_gap_free(report: Report, sid: str, log: Sequence[LogEvent]) -> None:
    seqs = [event.seq for event in log]
    if seqs != list(range(1, len(seqs) + 1)):
        report.gaps += 1
        missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
        repeated = sorted(seq for seq, n in Counter(seqs).items() if n > 1)
        report.note("gap", f"{sid}: missing {missing[:10]}, repeated {repeated[:10]}")


def _check_follower(report: Report, follower: FollowerLog, log: Mapping[int, LogEvent]) -> None:
    """A follower must have seen exactly the log's events after its ``after_seq``, in order,
    each once, up to wherever it stopped: a prefix of the rest of the log."""
    expected = follower.after_seq + 1
    for event in follower.seen:
        where = f"follower of {follower.session_id} via {follower.connections}"
        if event.seq != expected:
            kind = "follower-duplicate" if event.seq < expected else "follower-gap"
            report.follower_anomalies += 1
            report.note(kind, f"{where}: seq {event.seq} where {expected} was due")
            return  # one anomaly per follower: what follows is off by the same shift
        stored = log.get(event.seq)
        if stored != event:
            report.follower_anomalies += 1
            report.note("follower-mismatch", f"{where}: saw {event}, the log has {stored}")
            return
        expected += 1
