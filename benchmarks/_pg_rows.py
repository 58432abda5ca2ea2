"""The rows and the table of ``bench_postgres``: what each series is called, the issue's
targets, and how samples become :class:`~benchmarks._common.Result` rows (a row per workload
and reference; a peer that is not installed, or failed every sample, leaves its reference
cell empty and says why in the row's notes)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _pg, _pg_peers
from ._common import Baseline, Result, Target, _spread_text, format_value

__all__ = [
    "FULL",
    "NAME",
    "PARTS",
    "QUICK",
    "Samples",
    "Sizes",
    "append_rows",
    "driver_rows",
    "format_postgres",
    "load_rows",
    "startup_rows",
]

NAME = "postgres"
PARTS = ("append", "drivers", "load", "startup")

RAW = "raw per-commit"
POOL = "raw per-commit, pool"
GROUP = "raw group batches"
BATCHED = "raw batched"
RAW_READ = "raw read"
RAW_PAGE = "raw psycopg page (owner, live, by id)"
#: The driver of ``jidoka.store.postgres``: the raw references use it too.
STORE_DRIVER = "asyncpg"
PEER_NAMES = {_pg_peers.LANGGRAPH: "LangGraph", _pg_peers.ADK: "ADK"}
#: The references' names in result keys.
SHORT = {RAW: "raw", POOL: "pool", GROUP: "group", "LangGraph": "langgraph", "ADK": "adk"}


@dataclass(frozen=True)
class Sizes:
    single: int  # awaited appends, one session
    sessions: int  # concurrent sessions
    per_session: int  # appends per concurrent session
    pool: int  # connections of the raw per-commit pool
    batched: int  # rows in the one-statement reference
    langgraph_single: int  # LangGraph's one-thread appends (its cost grows with the thread)
    adk_single: int
    load: int  # messages in the long session
    startup: int  # stored sessions at start-up
    principals: int  # owners among them
    repeats: int  # rounds of append; load samples
    peer_repeats: int  # the first rounds also measure the peers
    driver_repeats: int
    startup_repeats: int


FULL = Sizes(2_000, 100, 20, 20, 20_000, 500, 400, 10_000, 1_000_000, 1_000, 5, 3, 3, 3)
QUICK = Sizes(30, 4, 3, 2, 200, 8, 8, 40, 2_000, 10, 1, 1, 1, 1)

TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("single", RAW): (">=", 0.8),
    ("concurrent", RAW): (">=", 10.0),
    ("single", "LangGraph"): (">=", 1.0),
    ("single", "ADK"): (">=", 1.0),
    ("concurrent", "LangGraph"): (">=", 10.0),
    ("concurrent", "ADK"): (">=", 10.0),
    ("load", "LangGraph"): ("<=", 1.0),
    ("load", "ADK"): ("<=", 1.0),
}
STARTUP_TARGET = 1.0  # seconds
PAGE_TARGET = 0.010  # seconds


class Samples:
    """Samples by name, and the errors of the samples that failed (a peer's, say)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}
        self.details: dict[str, list[dict[str, Any]]] = {}

    def take(self, name: str, step: Callable[[], Any]) -> None:
        """Run one sample. A peer's failure is recorded (and reported in its rows); any other
        ends the run."""
        self.values.setdefault(name, [])
        try:
            got = step()
        except Exception as exc:
            if name.split()[0] not in PEER_NAMES.values():
                raise
            self.errors.setdefault(name, []).append(f"{type(exc).__name__}: {exc}"[:300])
            return
        if isinstance(got, tuple):
            got, info = got
            self.details.setdefault(name, []).append(info)
        elif isinstance(got, dict):
            self.details.setdefault(name, []).append(got)
            got = got["rate"]
        self.values[name].append(float(got))


#: (key, title, unit) of each shape of the driver comparison.
SHAPES = (
    ("per_commit", "one INSERT per call, autocommit, 1 connection", "rows/s"),
    (
        "group_1",
        "the store's statement for 1 event of 1 session, awaited one after another",
        "rows/s",
    ),
    ("group_100", "the store's group statement, 100 sessions x 1 event per statement", "rows/s"),
    ("split_1", "UPDATE head + INSERT as 2 statements in a transaction, 1 x 1 row", "rows/s"),
    ("split_100", "UPDATE heads + INSERT as 2 statements in a transaction, 100 x 1", "rows/s"),
    ("pool", "one INSERT per call, 100 tasks x 20 over a pool", "rows/s"),
    ("batched", "one session's rows in one INSERT ... unnest", "rows/s"),
)


# --- rows ---------------------------------------------------------------------------------------


def _target(key: str, reference: str, baseline: Baseline | None) -> Target | None:
    rule = TARGETS.get((key, reference))
    if rule is None or baseline is None:
        return None
    op, factor = rule
    bound = factor * baseline.median
    if op == ">=":
        return Target(op, bound, f"≥ {factor:g}x {reference} (≥ {bound:,.0f})")
    return Target(op, bound, f"faster than {reference} (≤ {format_value(bound, 's')})")


def _row(
    key: str,
    title: str,
    unit: str,
    ours: list[float],
    reference: str | None,
    theirs: list[float],
    *,
    target_key: str = "",
    notes: str = "",
    **details: Any,
) -> Result:
    """One row: ``ours`` against ``reference`` (its samples ``theirs``, maybe none)."""
    baseline = Baseline(reference, theirs) if reference and theirs else None
    if reference and not theirs:
        notes = "; ".join(filter(None, [notes, f"{reference}: not measured"]))
    if not ours:
        raise RuntimeError(f"{key}: no sample of ours")
    return Result(
        key=f"{NAME}.{key}",
        title=title,
        unit=unit,
        samples=ours,
        higher_is_better=unit != "s",
        baseline=baseline,
        target=_target(target_key, reference or "", baseline),
        notes=notes,
        details={"reference": reference, **details},
    )


def _errors(samples: Samples, name: str) -> str:
    errors = samples.errors.get(name, [])
    if not errors:
        return ""
    tried = len(errors) + len(samples.values.get(name, []))
    return f"{name}: {len(errors)} of {tried} samples failed ({errors[0]})"


def _peer_reason(peer_reasons: dict[str, str | None], name: str) -> str | None:
    for peer, short in PEER_NAMES.items():
        if short == name:
            return peer_reasons.get(peer)
    return None


def append_rows(
    samples: Samples, sizes: Sizes, peer_reasons: dict[str, str | None]
) -> list[Result]:
    v = samples.values
    concurrent = sizes.sessions * sizes.per_session
    shapes = {
        "single": f"1 session, {sizes.single:,} awaited send_message",
        "concurrent": f"{sizes.sessions} sessions x {sizes.per_session} appends, one task each",
    }
    rows: list[Result] = []
    for shape, label in shapes.items():
        mine = v.get(f"jidoka {shape}", [])
        commits = [d["commits"] for d in samples.details.get(f"jidoka {shape}", [])]
        ops = sizes.single if shape == "single" else concurrent
        cpu = [d["cpu_s_per_message"] for d in samples.details.get(f"jidoka {shape}", [])]
        common = {
            "commits_per_message": statistics.median(commits) / ops if commits else None,
            "cpu_s_per_message": statistics.median(cpu) if cpu else None,
            "jidoka_children": samples.details.get(f"jidoka {shape}", []),
        }
        refs = [RAW] + ([POOL, GROUP] if shape == "concurrent" else []) + ["LangGraph", "ADK"]
        for ref in refs:
            peer = ref in ("LangGraph", "ADK")
            name = f"{ref} {shape}" if peer else ref
            reason = _peer_reason(peer_reasons, ref) if peer else None
            note = _errors(samples, name)
            if peer and shape == "single":
                n = sizes.langgraph_single if ref == "LangGraph" else sizes.adk_single
                note = "; ".join(filter(None, [note, f"{ref} ran {n:,} appends per sample"]))
            if reason:
                note = "; ".join(filter(None, [note, f"{ref}: {reason}"]))
            rows.append(
                _row(
                    f"{shape}.vs_{SHORT[ref]}",
                    f"Durable append, {label}: Jidoka vs {ref}",
                    "msg/s",
                    mine,
                    ref,
                    v.get(name, []),
                    target_key=shape,
                    notes=note,
                    **common,
                    **({"peer_details": samples.details.get(name, [])} if peer else {}),
                )
            )
    for name, title in (
        (
            POOL,
            f"{sizes.sessions} tasks x {sizes.per_session} inserts, each committed, "
            f"over a pool of {sizes.pool}",
        ),
        (
            GROUP,
            f"the store's group statement, {sizes.sessions} sessions x 1 event per statement, "
            f"{sizes.per_session} statements",
        ),
        (BATCHED, f"{sizes.batched:,} rows of one session in one statement and one commit"),
        ("LangGraph single", f"LangGraph, 1 thread, {sizes.langgraph_single:,} awaited appends"),
        (
            "LangGraph concurrent",
            f"LangGraph, {sizes.sessions} threads x {sizes.per_session}, one task each",
        ),
        ("ADK single", f"ADK, 1 session, {sizes.adk_single:,} awaited append_event"),
        ("ADK concurrent", f"ADK, {sizes.sessions} sessions x {sizes.per_session}, one task each"),
    ):
        if v.get(name):
            rows.append(
                _row(
                    f"ref.{name.replace(' ', '_').replace(',', '').replace('-', '_').lower()}",
                    f"Reference: {title}",
                    "rows/s",
                    v[name],
                    RAW,
                    v.get(RAW, []),
                    notes=_errors(samples, name),
                )
            )
    return rows


def driver_rows(samples: Samples) -> list[Result]:
    """Per shape: each driver's rows/s, then each driver's client CPU per row (against plain
    psycopg's, measured in the same rounds)."""
    rows: list[Result] = []
    for shape, title, unit in SHAPES:
        base = samples.values.get(f"{shape} psycopg", [])
        base_cpu = _cpu(samples, f"{shape} psycopg")
        for driver in _pg.DRIVERS:
            name = f"{shape} {driver}"
            mine = samples.values.get(name)
            if mine is None:
                continue
            reference = None if driver == "psycopg" else "psycopg"
            common = {"driver": driver, "shape": shape}
            key = f"{shape}.{driver.replace('-', '_')}"
            rows.append(
                _row(
                    f"driver.{key}",
                    f"Driver {driver}: {title}",
                    unit,
                    mine,
                    reference,
                    base,
                    notes=_errors(samples, name),
                    **common,
                )
            )
            rows.append(
                _row(
                    f"driver_cpu.{key}",
                    f"Driver {driver}, client CPU per row: {title}",
                    "s",
                    _cpu(samples, name),
                    reference,
                    base_cpu,
                    **common,
                )
            )
    return rows


def _cpu(samples: Samples, name: str) -> list[float]:
    return [d["cpu_s_per_row"] for d in samples.details.get(name, [])]


def load_rows(samples: Samples, sizes: Sizes, peer_reasons: dict[str, str | None]) -> list[Result]:
    v = samples.values
    info = samples.details.get("info", [{}])[0]
    label = f"{sizes.load:,}"
    rows = []
    for series, how in (
        ("jidoka", "default max_history: the newest 100 come back"),
        ("jidoka window", f"max_history={sizes.load:,}: all of them come back"),
    ):
        children = samples.details.get(series, [])
        for ref, what in (
            (RAW_READ, "psycopg reading the whole log on an open connection"),
            ("LangGraph", "aget_tuple of a thread's latest checkpoint"),
            ("ADK", "get_session"),
        ):
            reason = _peer_reason(peer_reasons, ref)
            short = "raw" if ref == RAW_READ else ref.lower()
            rows.append(
                _row(
                    f"load{'_window' if series != 'jidoka' else ''}.vs_{short}",
                    f"Load a {label}-message session after a restart (first "
                    f"get_conversation_history; {how}) vs {ref} ({what})",
                    "s",
                    v.get(series, []),
                    ref,
                    v.get(ref, []),
                    target_key="load",
                    notes="; ".join(filter(None, [_errors(samples, ref), reason or ""])),
                    **info,
                    children=children,
                    start_seconds_median=_median(c["start_seconds"] for c in children),
                    second_access_median=_median(c["second_access"] for c in children),
                )
            )
    return rows


def _median(values: Iterable[float]) -> float | None:
    got = list(values)
    return statistics.median(got) if got else None


def startup_rows(data: dict[str, Any], sizes: Sizes) -> list[Result]:
    samples: Samples = data["samples"]
    mine = samples.details.get("jidoka", [])
    empty = samples.details.get("empty", [])
    n = f"{sizes.startup:,}"
    facts = {
        "copied": data["copied"],
        "principals": sizes.principals,
        "page_limit": data["page"],
        "children": mine,
        "empty_children": empty,
    }
    rows = [
        _row(
            "startup",
            f"Start-up with {n} stored sessions (async with Runtime entry, fresh process)",
            "s",
            [c["start_seconds"] for c in mine],
            "same start, empty schema",
            [c["start_seconds"] for c in empty],
            **facts,
        ),
        _row(
            "list_page_cold",
            f"One principal's first page ({data['page']} of its "
            f"{sizes.startup // sizes.principals:,}) among {n}: "
            "client.list_sessions(owner=...), the first call after start-up",
            "s",
            [c["page_cold_seconds"] for c in mine],
            RAW_PAGE,
            data["raw_page"],
            **facts,
        ),
        _row(
            "list_page_first",
            "Another principal's first page, right after (its sessions not loaded yet)",
            "s",
            [c["page_first_seconds"] for c in mine],
            RAW_PAGE,
            data["raw_page"],
            **facts,
        ),
        _row(
            "list_page_warm",
            "That page again (median of 20 calls, its sessions loaded)",
            "s",
            [c["page_warm_seconds"] for c in mine],
            RAW_PAGE,
            data["raw_page"],
            **facts,
        ),
    ]
    targets = {
        "startup": STARTUP_TARGET,
        "list_page_cold": PAGE_TARGET,
        "list_page_first": PAGE_TARGET,
        "list_page_warm": PAGE_TARGET,
    }
    for row in rows:
        bound = targets[row.key.split(".", 1)[1]]
        row.target = Target("<=", bound, f"< {format_value(bound, 's')}")
    return rows


def format_postgres(results: Sequence[Result]) -> str:
    """Workload | Jidoka | reference | ratio | target | met."""
    lines = [
        "| Benchmark | value: median; min to max (n) | reference: median | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        mine = _cell(r.samples, r.unit)
        ref = f"{r.baseline.name}: {_cell(r.baseline.samples, r.unit)}" if r.baseline else "—"
        ratio = f"{r.ratio:.3g}x" if r.ratio is not None and not math.isnan(r.ratio) else "—"
        target = r.target.text if r.target else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        note = f" ({r.notes})" if r.notes else ""
        lines.append(f"| {r.title}{note} | {mine} | {ref} | {ratio} | {target} | {met} |")
    return "\n".join(lines)


def _cell(samples: Sequence[float], unit: str) -> str:
    if not samples:
        return "not measured"
    return f"{format_value(statistics.median(samples), unit)}; {_spread_text(samples, unit)}"
