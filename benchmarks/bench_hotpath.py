"""Issue 14's table: the hot path before and after a change, next to the peer and raw SQLite.

``python -m benchmarks.bench_hotpath [--before SRC] [--after SRC] [--repeats N] [--quick]
[--only NAME ...]``. A tree is the ``src`` directory of a checkout (``--after`` defaults to this
checkout's own); without ``--before`` only "after" is measured. Every Jidoka measurement runs in
a fresh child process (``benchmarks._hotpath_child``) that imports ``jidoka`` from its tree and
uses only the public API, so this works against any tree, also one being changed.

Workloads (durable: ``Runtime(data_dir, store="sqlite", settings=Settings())``, WAL + FULL;
every database in a fresh directory under ``bench_durable``'s scratch root, one disk):

- ``lifecycle``: 1,000 sessions created one after another with ``create_session()``, then each
  terminated; pairs/s. Peer: OpenAI Agents ``SQLiteSession`` on a file, ``SQLiteSession(id,
  db)`` + ``add_items([item])`` per session, then ``clear_session()`` on each. Reference: raw
  ``sqlite3``, one commit per statement (an insert per session, then a delete per session).
- ``single``: one session, 2,000 awaited ``send_message``; msgs/s. Peer: ``add_items`` per
  message. References: raw per-commit inserts, and the writer-thread floor (the same commits in
  a writer thread, awaited from asyncio).
- ``concurrent``: 100 sessions x 20 appends, one task per session; ``shared``: as many to *one*
  session from 100 tasks at once (per-session batching); reference raw per-commit.
- ``idle``: memory store, N sessions (10k, 100k) each holding one 200-character message, gone
  idle (status ``idle``); RSS growth / N in a child of its own, and tracemalloc's live bytes / N
  in another (once per tree and size: tracemalloc is slow).

Rounds: in each, every workload runs for before and after in alternating child processes (the
first alternating by round), and its peer and raw references run in this process in the same
round, so each round has all of them. Ratios are ratios of medians (the targets are judged on
them), each followed by the median of the per-round ratios (as ``benchmarks.ab``): what to read
on a noisy machine, where a burst of someone else's disk writes can slow one round several-fold.
Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import statistics
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._common import (
    ROOT,
    Baseline,
    Result,
    Target,
    _spread_text,
    clock,
    format_value,
    git_commit,
    quiesce,
    run_async,
    run_child,
)
from .bench_durable import (
    _raw_connect,
    _raw_per_commit,
    _raw_thread_commit,
    _row,
    filesystem_of,
    scratch_dir,
    scratch_root,
)
from .bench_peers import (
    _TITLES,
    OPENAI,
    _item,
    _measure,
    _openai_sequential,
    _Series,
    _sqlite_pragmas,
    _version,
    missing,
)

__all__ = ["NAME", "WORKLOADS", "measure", "run"]

NAME = "hotpath"

WORKLOADS = ("lifecycle", "single", "concurrent", "shared", "idle")

#: The references' short names (the table's legend says what they are).
PEER = "SQLiteSession"
RAW = "raw per-commit"
THREAD = "writer-thread floor"
RAW_TEXT = "raw sqlite3 (WAL, synchronous=FULL), one commit per statement, same disk"
THREAD_TEXT = "the same commits done by a writer thread and awaited from asyncio"


@dataclass(frozen=True)
class Sizes:
    pairs: int  # sessions created then terminated per repeat
    messages: int  # sequential appends on one session per repeat
    sessions: int  # concurrent sessions
    per_session: int  # appends per concurrent session
    idle: tuple[int, ...]  # idle sessions per memory child
    repeats: int  # rounds of the throughput workloads
    memory_repeats: int  # RSS children per tree and size


FULL = Sizes(1_000, 2_000, 100, 20, (10_000, 100_000), repeats=5, memory_repeats=3)
QUICK = Sizes(20, 40, 5, 4, (300, 600), repeats=1, memory_repeats=1)


# --- references, in this process ----------------------------------------------------------------


def _raw_create_delete(ddl: str, n: int) -> float:
    """Pairs per second with raw ``sqlite3`` (WAL, FULL): a row inserted for each of ``n``
    sessions, then each session's rows deleted, every statement its own transaction."""
    with scratch_dir("raw-pairs") as path:
        conn = _raw_connect(path / "raw.sqlite3", ddl)
        try:
            conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", _row("warm", 1, b"{}"))
            ids = [uuid.uuid4().hex[:26].upper() for _ in range(n)]
            quiesce()
            start = clock()
            for sid in ids:
                conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", _row(sid, 1, b"{}"))
            for sid in ids:
                conn.execute("DELETE FROM events WHERE session_id = ?", (sid,))
            elapsed = clock() - start
        finally:
            conn.close()
    return n / elapsed


async def _openai_create_clear(n: int) -> tuple[float, dict[str, Any]]:
    """Pairs per second for the peer: ``SQLiteSession(id, db)`` and one ``add_items`` for each
    of ``n`` sessions on one file, then ``clear_session()`` on each (a warm handle stays open)."""
    from agents import SQLiteSession

    with scratch_dir("openai-pairs") as path:
        database = path / "agents.sqlite3"
        warm = SQLiteSession("warm", database)
        handles: list[Any] = []
        try:
            await warm.add_items([_item()])
            quiesce()
            start = clock()
            for i in range(n):
                handles.append(SQLiteSession(f"bench-{i}", database))
                await handles[-1].add_items([_item()])
            for handle in handles:
                await handle.clear_session()
            elapsed = clock() - start
            left = len(await handles[0].get_items()) if handles else 0
        finally:
            for handle in [warm, *handles]:
                handle.close()
        info = {"items_left_in_first": left, **_sqlite_pragmas(database)}
    return n / elapsed, info


# --- the rounds ---------------------------------------------------------------------------------


@dataclass
class _Workload:
    title: str
    unit: str
    child: list[str]  # the child's arguments
    ops: int  # pairs or messages per repeat
    references: dict[str, Callable[[], float]]  # raw references by name
    peer: Callable[[], Coroutine[Any, Any, tuple[float, dict[str, Any]]]] | None  # for _measure


def _spawn(tree: Path, args: Sequence[str]) -> dict[str, Any]:
    out = run_child("benchmarks._hotpath_child", args, f"hotpath child {args} ({tree})", src=tree)
    if not str(out["jidoka_file"]).startswith(str(tree.resolve())):
        raise RuntimeError(f"the child for {tree} imported {out['jidoka_file']}")
    return out


def _workloads(sizes: Sizes, ddl: str) -> dict[str, _Workload]:
    pairs, messages = sizes.pairs, sizes.messages
    concurrent = sizes.sessions * sizes.per_session

    def many(kind: str, title: str) -> _Workload:
        args = [kind, "--n", str(sizes.sessions), "--per-session", str(sizes.per_session)]
        raw = {RAW: lambda: _raw_per_commit(ddl, concurrent)}
        return _Workload(f"{title} (durable)", "msg/s", args, concurrent, raw, None)

    return {
        "lifecycle": _Workload(
            f"Create+terminate, {pairs:,} sessions one after another (durable)",
            "pairs/s",
            ["lifecycle", "--n", str(pairs)],
            pairs,
            {RAW: lambda: _raw_create_delete(ddl, pairs)},
            lambda: _openai_create_clear(pairs),
        ),
        "single": _Workload(
            f"1 session, {messages:,} awaited send_message (durable)",
            "msg/s",
            ["single", "--n", str(messages)],
            messages,
            {
                RAW: lambda: _raw_per_commit(ddl, messages),
                THREAD: lambda: run_async(lambda: _raw_thread_commit(ddl, messages)),
            },
            lambda: _openai_sequential(messages),
        ),
        "concurrent": many(
            "concurrent", f"{sizes.sessions} sessions x {sizes.per_session} appends, one task each"
        ),
        "shared": many(
            "shared", f"1 session, {sizes.sessions} senders x {sizes.per_session} appends at once"
        ),
    }


def _trees(before: Path | None, after: Path, round_: int) -> list[tuple[str, Path]]:
    """The trees in this round's order: before first in even rounds, after first in odd."""
    order = [("after", after)] if before is None else [("before", before), ("after", after)]
    return order if round_ % 2 == 0 else order[::-1]


def _throughput(
    work: _Workload, sizes: Sizes, before: Path | None, after: Path, peer_reason: str | None
) -> dict[str, Any]:
    """Every round: before and after (alternating), the peer, the raw references."""
    samples: dict[str, list[float]] = {"before": [], "after": []}
    samples.update({name: [] for name in work.references})
    children: list[dict[str, Any]] = []
    peer = _Series([], {}, [])
    call = work.peer
    for round_ in range(sizes.repeats):
        steps: list[tuple[str, Callable[[], Any]]] = []
        for name, tree in _trees(before, after, round_):
            steps.append((name, functools.partial(_spawn, tree, work.child)))
        steps.extend(work.references.items())
        if call is not None and peer_reason is None:
            steps.append((PEER, lambda: run_async(lambda: _measure(peer, call))))
        for name, step in steps if round_ % 2 == 0 else steps[::-1]:
            got = step()
            if isinstance(got, dict):
                children.append({"tree": name, "round": round_, **got})
                samples[name].append(got["rate"])
            elif isinstance(got, float):
                samples[name].append(got)
    out: dict[str, Any] = {"samples": samples, "children": children}
    if work.peer is not None:
        samples[PEER] = peer.samples
        out["peer"] = {"reason": peer_reason, "errors": peer.errors, "settings": peer.info}
    return out


def _memory(sizes: Sizes, before: Path | None, after: Path) -> dict[str, Any]:
    """RSS children alternating by repeat, then one tracemalloc child per tree, for each size."""
    by_size: dict[str, Any] = {}
    for index, n in enumerate(sizes.idle):
        samples: dict[str, list[float]] = {"before": [], "after": []}
        traced: dict[str, list[float]] = {"before": [], "after": []}
        children: list[dict[str, Any]] = []
        for round_ in range(sizes.memory_repeats + 1):
            last = round_ == sizes.memory_repeats  # the tracemalloc round
            for name, tree in _trees(before, after, round_ + index):
                got = _spawn(tree, ["idle", "--n", str(n), *(["--traced"] if last else [])])
                children.append({"tree": name, "traced": last, **got})
                (traced if last else samples)[name].append(got["rate"])
        by_size[str(n)] = {"samples": samples, "traced": traced, "children": children}
    return by_size


# --- results ------------------------------------------------------------------------------------

#: The issue's targets: (workload, reference) -> the factor of the reference's median to reach.
TARGETS: dict[tuple[str, str], float] = {
    ("lifecycle", PEER): 1.5,
    ("single", PEER): 1.3,
    ("single", RAW): 0.67,
    ("concurrent", RAW): 10.0,
}
#: Bytes per idle session, at most (RSS).
IDLE_TARGET = Target("<=", 2048, "≤ 2 KiB (2,048 B)")


def _per_round(after: list[float], before: list[float]) -> float | None:
    """The median of the per-round ratios after/before (rounds are paired by index)."""
    if not before or len(before) != len(after):
        return None
    return statistics.median(a / b for a, b in zip(after, before, strict=True))


def _reference_row(
    key: str, work: _Workload, data: dict[str, Any], reference: str, common: dict[str, Any]
) -> Result:
    samples = data["samples"]
    after, ref = samples["after"], samples.get(reference, [])
    reason = None
    if reference == PEER and not ref:
        peer = data["peer"]
        reason = peer["reason"] or f"failed: {'; '.join(peer['errors'][:2])}"
    baseline = Baseline(reference, ref) if ref else None
    target = None
    factor = TARGETS.get((key, reference))
    if factor is not None and baseline is not None:
        bound = factor * baseline.median
        target = Target(">=", bound, f"≥ {factor:g}x {reference} (≥ {bound:,.0f})")
    short = {PEER: "peer", RAW: "raw", THREAD: "thread", "before": "before"}[reference]
    return Result(
        key=f"{NAME}.{key}.vs_{short}",
        title=work.title,
        unit=work.unit,
        samples=after,
        baseline=baseline,
        target=target,
        notes=reason or "",
        details={
            **common,
            "reference": reference,
            "reference_missing": reason,
            "per_round_ratio": _per_round(after, ref),
        },
    )


def _throughput_rows(key: str, work: _Workload, data: dict[str, Any]) -> list[Result]:
    samples = data["samples"]
    common = {
        "before_samples": samples["before"],
        "after_over_before_per_round": _per_round(samples["after"], samples["before"]),
        "children": data["children"],
        **({"peer": data["peer"]} if "peer" in data else {}),
    }
    for tree in ("before", "after"):
        commits = [c["commits"] for c in data["children"] if c["tree"] == tree]
        if commits:
            common[f"commits_per_op_{tree}"] = statistics.median(commits) / work.ops
    names = ([PEER] if work.peer is not None else []) + list(work.references)
    if samples["before"]:
        names.append("before")
    return [_reference_row(key, work, data, name, common) for name in names]


def _memory_rows(by_size: dict[str, Any]) -> list[Result]:
    rows: list[Result] = []
    for n, data in by_size.items():
        label = f"{int(n) // 1000}k" if int(n) >= 1000 else n
        for method, samples in (("rss", data["samples"]), ("tracemalloc", data["traced"])):
            before = samples["before"]
            per_round = _per_round(samples["after"], before)
            rows.append(
                Result(
                    key=f"{NAME}.idle_{label}.{method}",
                    title=(
                        f"Idle memory per session, {int(n):,} sessions with one 200-char "
                        f"message ({'RSS' if method == 'rss' else 'tracemalloc'}, memory store)"
                    ),
                    unit="B",
                    samples=samples["after"],
                    higher_is_better=False,
                    baseline=Baseline("before", before) if before else None,
                    target=IDLE_TARGET if method == "rss" else None,
                    details={
                        "reference": "before",
                        "before_samples": before,
                        "after_over_before_per_round": per_round,
                        "per_round_ratio": per_round,
                        "children": [
                            c for c in data["children"] if c["traced"] == (method != "rss")
                        ],
                    },
                )
            )
    return rows


def measure(
    sizes: Sizes, after: Path, before: Path | None = None, only: Sequence[str] = WORKLOADS
) -> list[Result]:
    """The rows of the table: each workload's rounds, then its results."""
    results: list[Result] = []
    throughput = [name for name in only if name != "idle"]
    if throughput:
        ddl = _spawn(after, ["ddl"])["ddl"]  # the events table as the "after" tree makes it
        peer_reason = missing(OPENAI)
        fs = filesystem_of(scratch_root())
        works = _workloads(sizes, ddl)
        for name in throughput:
            data = _throughput(works[name], sizes, before, after, peer_reason)
            for row in _throughput_rows(name, works[name], data):
                row.details["filesystem"] = fs
                row.details["peer_version"] = _version(OPENAI)
                results.append(row)
    if "idle" in only:
        results.extend(_memory_rows(_memory(sizes, before, after)))
    return results


def run(quick: bool = False) -> list[Result]:
    """For ``benchmarks.run``: "after" (this checkout's ``src``) alone, every workload."""
    return measure(QUICK if quick else FULL, ROOT / "src")


# --- the table ----------------------------------------------------------------------------------


def _cell(samples: Sequence[float], unit: str) -> str:
    if not samples:
        return "not measured"
    return f"{format_value(statistics.median(samples), unit)}; {_spread_text(samples, unit)}"


def format_hotpath(results: Sequence[Result]) -> str:
    """Workload | measured | before | after | reference | ratio | target | met; a workload's
    before and after figures are written on its first row only."""
    lines = [
        "| Workload | measured | before | after | reference | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    previous = ""
    for r in results:
        reference = r.details["reference"]
        if r.details.get("reference_missing"):
            ref_cell = f"{reference}: {r.details['reference_missing'].split(' (')[0]}"
        elif r.baseline is not None:
            ref_cell = f"{reference}: {_cell(r.baseline.samples, r.unit)}"
        else:
            ref_cell = "—"
        ratio = f"after/{reference}: {r.ratio:.3g}x" if r.ratio is not None else "—"
        per_round = r.details.get("per_round_ratio")
        if per_round is not None:
            ratio += f" (per round {per_round:.3g}x)"
        target = r.target.text if r.target is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        if r.title == previous:
            title, before, after = "″", "″", "″"
        else:
            title, before = r.title, _cell(r.details["before_samples"], r.unit)
            after = _cell(r.samples, r.unit)
        previous = r.title
        lines.append(
            f"| {title} | {r.unit}: median; min to max (n) | {before} | {after} | {ref_cell} | "
            f"{ratio} | {target} | {met} |"
        )
    lines.append("")
    per_op = {
        r.title: " / ".join(
            f"{r.details[f'commits_per_op_{t}']:.3g}"
            for t in ("before", "after")
            if f"commits_per_op_{t}" in r.details
        )
        for r in results
        if "commits_per_op_after" in r.details
    }
    if per_op:
        lines.append("Store commits per pair or message (median; before / after):")
        lines.extend(f"- {title}: {text}" for title, text in per_op.items())
    lines.append(f"{PEER}: {_TITLES[OPENAI]}. {RAW}: {RAW_TEXT}. {THREAD}: {THREAD_TEXT}.")
    return "\n".join(lines)


def _tree_info(src: Path | None) -> dict[str, Any] | None:
    if src is None:
        return None
    return {"src": str(src.resolve()), "git_commit": git_commit(src)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_hotpath", description=__doc__)
    parser.add_argument("--before", type=Path, help="the src directory of the 'before' tree")
    parser.add_argument("--after", type=Path, default=ROOT / "src", help="default: ./src")
    parser.add_argument("--repeats", type=int, help="rounds (default 5, memory 3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--output", type=Path, help="the JSON file to write")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats, memory_repeats=args.repeats)
    before = args.before.resolve() if args.before else None
    after = args.after.resolve()
    start = clock()
    results = measure(sizes, after, before, args.only)
    from .run import RESULTS_DIR, _document  # here: run imports this module

    document = _document(
        results, {NAME: clock() - start}, quick=args.quick, argv=list(argv or sys.argv[1:])
    )
    document["suite"] = "jidoka hot path (issue 14)"
    document["trees"] = {"before": _tree_info(before), "after": _tree_info(after)}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS_DIR / f"hotpath-{stamp}{'-quick' if args.quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"before: {document['trees']['before']}\nafter: {document['trees']['after']}")
    print(format_hotpath(results))
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
