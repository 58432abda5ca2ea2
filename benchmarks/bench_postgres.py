"""Issue 15's table: Jidoka on PostgreSQL next to the raw driver and the peers, same server.

``python -m benchmarks.bench_postgres [--dsn DSN] [--quick] [--repeats N] [--only PART ...]
[--output FILE]``; the DSN defaults to ``JIDOKA_TEST_POSTGRES_DSN``, else
``postgresql://postgres@127.0.0.1:5432/test``. Every run makes its own schemas (named
``jbench_<random>_<n>_<what>``; a fresh one per sample) and drops all of them at the end,
also when it fails. Parts (``--only``):

- ``append``: **1 session**, 2,000 awaited ``send_message``; **100 sessions x 20**, one task per
  session, all at once. Jidoka (``Runtime(store=DSN, postgres_schema=...)``, default settings)
  runs in a fresh child process per sample (``benchmarks._pg_child``). References in this
  process, same rounds: raw psycopg, one ``INSERT`` per call in autocommit (one commit each),
  awaited one after another on one connection: **the per-commit limit**, the baseline of both
  targets (1 session ≥ 0.8x, 100 x 20 ≥ 10x). Also reported for 100 x 20: the same 100 tasks
  committing every insert over a pool of 20 connections (the server merges concurrent WAL
  flushes, so this is what per-call commits reach with concurrency: the fairer floor for
  "100 concurrent writers"), the group commit's own batches with no runtime around them (the
  store's statement, one row of each of 100 sessions per statement: the ceiling of the
  concurrent case) and one session's rows in one statement (the batching ceiling).
  The peers (``benchmarks._pg_peers``: LangGraph's ``AsyncPostgresSaver``, the ADK's
  ``DatabaseSessionService`` on asyncpg) run the same two shapes in the same rounds, fewer
  repeats (and, for LangGraph's one session, fewer messages: its checkpoint grows with the
  thread), each row saying so.
- ``drivers``: the group-commit statement (pg-design.md: unnest arrays of (session_id, seq,
  type, time, data) and a conditional ``UPDATE`` of each session's head) and the per-commit
  ``INSERT``, for psycopg 3 (``%s``: text parameters), psycopg with ``%b`` (binary
  parameters), psycopg ``%b`` in pipeline mode, and asyncpg; plus the same group as two
  statements in one transaction (where pipeline mode sends four messages at once), and
  per-commit inserts over a pool. Ratios are against plain psycopg.
- ``load``: a 10,000-message session written through the API, then in each sample a fresh
  process (a restart) times the first ``get_conversation_history`` (snapshot + tail). Raw
  reference: reading the session's whole log with psycopg on an open connection. Peers: a
  LangGraph thread whose latest checkpoint holds 10,000 messages (``aget_tuple``), an ADK
  session of 10,000 events written by ``append_event`` (``get_session``), each on a fresh,
  warmed pool.
- ``startup``: 1,000,000 sessions in Jidoka's own tables: one made through the API, copied
  with ``INSERT ... SELECT ... generate_series`` (new ids; 1,000 principals of 1,000 sessions
  each), then ``VACUUM ANALYZE``. Each sample is a fresh process timing ``async with Runtime``
  entry (target < 1 s; reference: the same start on an empty schema) and then one principal's
  first page (the server's default page size) through ``client.list_sessions(owner=...)``,
  first call (target < 10 ms) and warm repeats; reference: the same page read with psycopg.

Targets are reported, never asserted. Ratios are of medians; the JSON keeps every sample.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import _pg, _pg_peers
from ._common import (
    ROOT,
    Baseline,
    Result,
    Target,
    _spread_text,
    clock,
    format_value,
    run_async,
    run_child,
)

__all__ = ["NAME", "PARTS", "measure", "run"]

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
    repeats: int  # rounds of append and drivers; load samples
    peer_repeats: int  # the first rounds also measure the peers
    startup_repeats: int


FULL = Sizes(2_000, 100, 20, 20, 20_000, 500, 400, 10_000, 1_000_000, 1_000, 5, 3, 3)
QUICK = Sizes(30, 4, 3, 2, 200, 8, 8, 40, 2_000, 10, 1, 1, 1)

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


def jidoka_missing() -> str | None:
    """Why Jidoka cannot be measured on PostgreSQL from this tree, or ``None``."""
    if importlib.util.find_spec("jidoka.store.postgres") is None:
        return "not measured (jidoka.store.postgres is not in this tree)"
    return None


def _child(args: Sequence[str], what: str) -> dict[str, Any]:
    src = ROOT / "src"
    out = run_child("benchmarks._pg_child", args, f"postgres child {what}", src=src)
    if not str(out["jidoka_file"]).startswith(str(src.resolve())):
        raise RuntimeError(f"the child imported {out['jidoka_file']}, not {src}")
    return out


def _jidoka(run: _pg.PgRun, workload: str, *extra: str) -> dict[str, Any]:
    schema = run.schema(workload)
    return _child([workload, "--dsn", run.dsn, "--schema", schema, *extra], workload)


class _Samples:
    """Samples by name, and the errors of the samples that failed (a peer's, say)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}
        self.details: dict[str, list[dict[str, Any]]] = {}

    def take(self, name: str, step: Callable[[], Any]) -> None:
        self.values.setdefault(name, [])
        try:
            got = step()
        except Exception as exc:  # a peer failing a sample is a result, not the end
            self.errors.setdefault(name, []).append(f"{type(exc).__name__}: {exc}"[:300])
            return
        if isinstance(got, tuple):
            got, info = got
            self.details.setdefault(name, []).append(info)
        elif isinstance(got, dict):
            self.details.setdefault(name, []).append(got)
            got = got["rate"]
        self.values[name].append(float(got))


def _rounds(samples: _Samples, rounds: list[list[tuple[str, Callable[[], Any]]]]) -> None:
    """Run each round's steps, reversed in odd rounds, so no side always goes first."""
    for index, steps in enumerate(rounds):
        for name, step in steps if index % 2 == 0 else steps[::-1]:
            samples.take(name, step)


# --- append -------------------------------------------------------------------------------------


def _raw(run: _pg.PgRun, body: Callable[[str], Awaitable[float]]) -> Callable[[], float]:
    def step() -> float:
        async def go() -> float:
            schema = run.schema("raw")
            await _pg.make_tables(run.dsn, schema)
            return await body(schema)

        return run_async(go)

    return step


def _peer(
    run: _pg.PgRun, peer: str, sessions: int, per_session: int
) -> Callable[[], tuple[float, dict[str, Any]]]:
    def step() -> tuple[float, dict[str, Any]]:
        async def go() -> tuple[float, dict[str, Any]]:
            schema = run.schema(PEER_NAMES[peer])
            if peer == _pg_peers.LANGGRAPH:
                await _pg_peers.langgraph_setup(run.dsn, schema)
                return await _pg_peers.langgraph_appends(run.dsn, schema, sessions, per_session)
            await _pg_peers.adk_setup(run.dsn, schema)
            return await _pg_peers.adk_appends(run.dsn, schema, sessions, per_session)

        return run_async(go)

    return step


def _append(run: _pg.PgRun, sizes: Sizes, peers: Sequence[str], ours: bool) -> _Samples:
    dsn, n = run.dsn, sizes.single
    s, m = sizes.sessions, sizes.per_session
    samples = _Samples()
    rounds = []
    for index in range(sizes.repeats):
        steps: list[tuple[str, Callable[[], Any]]] = []
        if ours:
            steps.append(("jidoka single", lambda: _jidoka(run, "single", "--n", str(n))))
            steps.append(
                (
                    "jidoka concurrent",
                    lambda: _jidoka(run, "concurrent", "--n", str(s), "--per-session", str(m)),
                )
            )
        steps += [
            (RAW, _raw(run, lambda schema: _pg.per_commit(STORE_DRIVER, dsn, schema, n))),
            (
                POOL,
                _raw(
                    run,
                    lambda schema: _pg.per_commit_pool(STORE_DRIVER, dsn, schema, s, m, sizes.pool),
                ),
            ),
            (
                GROUP,
                _raw(run, lambda schema: _pg.group_statements(STORE_DRIVER, dsn, schema, s, m)),
            ),
            (
                BATCHED,
                _raw(run, lambda schema: _pg.batched(STORE_DRIVER, dsn, schema, sizes.batched)),
            ),
        ]
        if index < sizes.peer_repeats:
            for peer in peers:
                single = sizes.langgraph_single if peer == _pg_peers.LANGGRAPH else sizes.adk_single
                name = PEER_NAMES[peer]
                steps.append((f"{name} single", _peer(run, peer, 1, single)))
                steps.append((f"{name} concurrent", _peer(run, peer, s, m)))
        rounds.append(steps)
    _rounds(samples, rounds)
    return samples


# --- drivers ------------------------------------------------------------------------------------

#: (key, title, unit) of each shape of the driver comparison.
SHAPES = (
    ("per_commit", "one INSERT per call, autocommit, 1 connection", "rows/s"),
    ("group_1", "group statement, 1 session x 1 row per call (1 session awaiting)", "rows/s"),
    ("group_100", "group statement, 100 sessions x 1 row per statement", "rows/s"),
    ("split_1", "UPDATE head + INSERT as 2 statements in a transaction, 1 x 1 row", "rows/s"),
    ("split_100", "UPDATE heads + INSERT as 2 statements in a transaction, 100 x 1", "rows/s"),
    ("pool", "one INSERT per call, 100 tasks x 20 over a pool", "rows/s"),
    ("batched", "one session's rows in one INSERT ... unnest", "rows/s"),
)


def _driver_steps(run: _pg.PgRun, sizes: Sizes) -> list[tuple[str, Callable[[], Any]]]:
    dsn, n, s, m = run.dsn, sizes.single, sizes.sessions, sizes.per_session
    steps: list[tuple[str, Callable[[], Any]]] = []
    for driver in _pg.DRIVERS:
        d = driver
        bodies: dict[str, Callable[[str], Awaitable[float]]] = {
            "per_commit": lambda schema, d=d: _pg.per_commit(d, dsn, schema, n // 2),
            "group_1": lambda schema, d=d: _pg.group_statements(d, dsn, schema, 1, n // 2),
            "group_100": lambda schema, d=d: _pg.group_statements(d, dsn, schema, s, m),
            "split_1": lambda schema, d=d: _pg.group_statements(
                d, dsn, schema, 1, n // 4, split=True
            ),
            "split_100": lambda schema, d=d: _pg.group_statements(d, dsn, schema, s, m, split=True),
            "batched": lambda schema, d=d: _pg.batched(d, dsn, schema, sizes.batched),
        }
        if driver != "psycopg-pipeline":  # a pool hands out plain connections
            bodies["pool"] = lambda schema, d=d: _pg.per_commit_pool(
                d, dsn, schema, s, m, sizes.pool
            )
        steps += [(f"{shape} {driver}", _raw(run, body)) for shape, body in bodies.items()]
    return steps


def _drivers(run: _pg.PgRun, sizes: Sizes) -> _Samples:
    samples = _Samples()
    _rounds(samples, [_driver_steps(run, sizes) for _ in range(sizes.repeats)])
    return samples


# --- load ---------------------------------------------------------------------------------------


async def _raw_read_log(dsn: str, schema: str, sid: str) -> float:
    async with _pg.connect("psycopg", dsn, schema) as conn, conn.raw.cursor() as cur:
        await cur.execute("SELECT 1")
        start = clock()
        await cur.execute(
            "SELECT seq, type, time, data FROM events WHERE session_id = %s ORDER BY seq",
            (sid,),
        )
        rows = await cur.fetchall()
        elapsed = clock() - start
    if not rows:
        raise RuntimeError("no rows")
    return elapsed


def _load(run: _pg.PgRun, sizes: Sizes, peers: Sequence[str], ours: bool) -> _Samples:
    dsn, n = run.dsn, sizes.load
    samples = _Samples()
    steps: list[tuple[str, Callable[[], Any]]] = []
    info: dict[str, Any] = {}
    if ours:
        schema = run.schema("long")
        written = _child(
            ["write-long", "--dsn", dsn, "--schema", schema, "--n", str(n)], "write-long"
        )
        sid = written["session_id"]
        warm = _child(
            ["write-long", "--dsn", dsn, "--schema", schema, "--n", "1"], "write-long warm"
        )["session_id"]
        whole = _child(
            ["write-long", "--dsn", dsn, "--schema", schema, "--n", str(n), "--window", str(n)],
            "write-long --window",
        )
        info["jidoka_write_seconds"] = written["write_seconds"] + whole["write_seconds"]
        load = [
            "load",
            "--dsn",
            dsn,
            "--schema",
            schema,
            "--n",
            str(n),
            "--warm",
            warm,
            "--session",
        ]
        steps.append(("jidoka", lambda: _child([*load, sid], "load")))
        steps.append(("jidoka window", lambda: _child([*load, whole["session_id"]], "load")))
        steps.append((RAW_READ, lambda: run_async(lambda: _raw_read_log(dsn, schema, sid))))
    if _pg_peers.LANGGRAPH in peers:
        lg = run.schema("lglong")
        run_async(lambda: _pg_peers.langgraph_setup(dsn, lg))
        thread = run_async(lambda: _pg_peers.langgraph_fill(dsn, lg, n))
        steps.append(
            ("LangGraph", lambda: run_async(lambda: _pg_peers.langgraph_load(dsn, lg, thread, n)))
        )
    if _pg_peers.ADK in peers:
        adk = run.schema("adklong")
        run_async(lambda: _pg_peers.adk_setup(dsn, adk))
        start = clock()
        user, session = run_async(lambda: _pg_peers.adk_fill(dsn, adk, n))
        info["adk_write_seconds"] = clock() - start
        steps.append(
            (
                "ADK",
                lambda: run_async(lambda: _pg_peers.adk_load(dsn, adk, user, session, n)),
            )
        )
    _rounds(samples, [steps] * sizes.repeats)
    samples.details["info"] = [info]
    return samples


# --- start-up -----------------------------------------------------------------------------------


def _new_id(template: str) -> str:
    """SQL for the copy ``g``'s id: the template's prefix and ``g`` in hex (valid Crockford)."""
    keep = len(template) - 12
    return f"left('{template}', {keep}) || lpad(upper(to_hex(g)), 12, '0')"


async def _copy_sessions(
    dsn: str, schema: str, template: str, owner: str, sizes: Sizes
) -> dict[str, Any]:
    """Copy every row of the template session ``sizes.startup`` times, in each of Jidoka's
    tables that has a ``session_id`` column: new ids, owner ``p-<g mod principals>``, and the
    id and owner inside the UTF-8 JSON ``bytea`` columns rewritten to match."""
    new_id = _new_id(template)
    new_owner = f"'p-' || mod(g, {sizes.principals})"
    counts: dict[str, Any] = {}
    start = clock()
    async with _pg.connect("psycopg", dsn, schema) as conn:
        raw = conn.raw
        tables = [
            row[0]
            for row in await (
                await raw.execute(
                    "SELECT table_name FROM information_schema.columns WHERE table_schema = %s"
                    " AND column_name = 'session_id' ORDER BY table_name",
                    (schema,),
                )
            ).fetchall()
        ]
        for table in tables:
            columns = await (
                await raw.execute(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                    (schema, table),
                )
            ).fetchall()
            exprs = []
            for column, kind in columns:
                if column == "session_id":
                    exprs.append(new_id)
                elif column == "owner":
                    exprs.append(new_owner)
                elif kind == "bytea":
                    exprs.append(
                        f"convert_to(replace(replace(convert_from(t.{column}, 'UTF8'),"
                        f" '{template}', {new_id}), '\"{owner}\"', '\"' || {new_owner} || '\"'),"
                        " 'UTF8')"
                    )
                else:
                    exprs.append(f"t.{column}")
            names = ", ".join(f'"{c}"' for c, _ in columns)
            cursor = await raw.execute(
                f'INSERT INTO "{table}" ({names}) SELECT {", ".join(exprs)}'
                f' FROM "{table}" AS t, generate_series(1, {sizes.startup}) AS g'
                " WHERE t.session_id = %s",
                (template,),
            )
            counts[table] = cursor.rowcount
        counts["copy_seconds"] = clock() - start
        start = clock()
        for table in tables:
            await raw.execute(f'VACUUM ANALYZE "{table}"')
        counts["vacuum_seconds"] = clock() - start
        size = await (
            await raw.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r'",
                (schema,),
            )
        ).fetchone()
        counts["schema_bytes"] = int(size[0] or 0)
    return counts


async def _raw_page(dsn: str, schema: str, owner: str, limit: int, repeats: int) -> list[float]:
    """Seconds per read of ``owner``'s first page of live sessions, by id, with psycopg."""
    sql = (
        "SELECT session_id, last_seq, status, owner FROM sessions WHERE owner = %s"
        " AND status <> 'terminated' ORDER BY session_id LIMIT %s"
    )
    out = []
    async with _pg.connect("psycopg", dsn, schema) as conn:
        for _ in range(repeats + 1):
            start = clock()
            rows = await (await conn.raw.execute(sql, (owner, limit))).fetchall()
            out.append(clock() - start)
            if len(rows) != limit:
                raise RuntimeError(f"the raw page holds {len(rows)} rows, not {limit}")
    return out[1:]  # the first prepared the plan


def _startup(run: _pg.PgRun, sizes: Sizes) -> dict[str, Any]:
    from jidoka.verbs import DEFAULT_PAGE

    dsn = run.dsn
    template_owner = "p-template"
    schema = run.schema("million")
    made = _child(
        ["template", "--dsn", dsn, "--schema", schema, "--owner", template_owner], "template"
    )
    sid = made["session_id"]
    copied = run_async(lambda: _copy_sessions(dsn, schema, sid, template_owner, sizes))
    empty = run.schema("empty")
    _child(["template", "--dsn", dsn, "--schema", empty, "--owner", template_owner], "empty")
    owner = "p-7"
    start_args = ["startup", "--dsn", dsn, "--n", str(sizes.startup + 1), "--other", "p-3"]
    start_args.append("--owner")
    samples = _Samples()
    rounds = [
        [
            ("jidoka", lambda: _child([*start_args, owner, "--schema", schema], "startup")),
            (
                "empty",
                lambda: _child([*start_args, template_owner, "--schema", empty], "startup"),
            ),
        ]
        for _ in range(sizes.startup_repeats)
    ]
    _rounds(samples, rounds)
    raw_page = run_async(lambda: _raw_page(dsn, schema, owner, DEFAULT_PAGE, 20))
    return {"samples": samples, "copied": copied, "raw_page": raw_page, "page": DEFAULT_PAGE}


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
    missing: str | None = None,
    notes: str = "",
    **details: Any,
) -> Result:
    """One row: ``ours`` (or NaN with ``missing``, the reason) against ``reference``."""
    baseline = Baseline(reference, theirs) if reference and theirs else None
    reason = missing or (None if ours else "not measured (every sample failed)")
    if reference and not theirs:
        notes = "; ".join(filter(None, [notes, f"{reference}: not measured"]))
    return Result(
        key=f"{NAME}.{key}",
        title=title,
        unit=unit,
        samples=ours if reason is None else [math.nan],
        higher_is_better=unit != "s",
        baseline=baseline,
        target=None if reason else _target(target_key, reference or "", baseline),
        notes="; ".join(filter(None, [reason or "", notes])),
        details={"reference": reference, "missing": reason, **details},
    )


def _errors(samples: _Samples, name: str) -> str:
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


def _append_rows(
    samples: _Samples, sizes: Sizes, ours: str | None, peer_reasons: dict[str, str | None]
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
        common = {
            "commits_per_message": statistics.median(commits) / ops if commits else None,
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
                    f"{shape}.vs_{ref.split(',')[0].replace(' ', '_').replace('-', '_').lower()}",
                    f"Durable append, {label}: Jidoka vs {ref}",
                    "msg/s",
                    mine,
                    ref,
                    v.get(name, []),
                    target_key=shape,
                    missing=ours,
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
            f"the group statement, {sizes.sessions} sessions x 1 row per statement, "
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


def _driver_rows(samples: _Samples) -> list[Result]:
    rows: list[Result] = []
    for shape, title, unit in SHAPES:
        base = samples.values.get(f"{shape} psycopg", [])
        for driver in _pg.DRIVERS:
            mine = samples.values.get(f"{shape} {driver}")
            if mine is None:
                continue
            rows.append(
                _row(
                    f"driver.{shape}.{driver.replace('-', '_')}",
                    f"Driver {driver}: {title}",
                    unit,
                    mine,
                    None if driver == "psycopg" else "psycopg",
                    base,
                    notes=_errors(samples, f"{shape} {driver}"),
                    driver=driver,
                    shape=shape,
                )
            )
    return rows


def _load_rows(
    samples: _Samples, sizes: Sizes, ours: str | None, peer_reasons: dict[str, str | None]
) -> list[Result]:
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
                    missing=ours,
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


def _startup_rows(data: dict[str, Any], sizes: Sizes, ours: str | None) -> list[Result]:
    samples: _Samples = data["samples"]
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
            missing=ours,
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
            missing=ours,
            **facts,
        ),
        _row(
            "list_page_first",
            "Another principal's first page, right after (its sessions not loaded yet)",
            "s",
            [c["page_first_seconds"] for c in mine],
            RAW_PAGE,
            data["raw_page"],
            missing=ours,
            **facts,
        ),
        _row(
            "list_page_warm",
            "That page again (median of 20 calls, its sessions loaded)",
            "s",
            [c["page_warm_seconds"] for c in mine],
            RAW_PAGE,
            data["raw_page"],
            missing=ours,
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
        if not ours:
            row.target = Target("<=", bound, f"< {format_value(bound, 's')}")
    return rows


# --- the run ------------------------------------------------------------------------------------


def measure(
    dsn: str, sizes: Sizes, only: Sequence[str] = PARTS
) -> tuple[list[Result], dict[str, Any]]:
    """The rows of every part in ``only``, and what the run measured on (server settings,
    versions, schemas dropped). Every schema the run made is dropped, also on failure."""
    reason = _pg.unavailable(dsn)
    if reason is not None:
        raise RuntimeError(f"bench_postgres cannot run: {reason}")
    ours = jidoka_missing()
    peer_reasons = {peer: _pg_peers.missing(peer) for peer in _pg_peers.PEERS}
    peers = [peer for peer, why in peer_reasons.items() if why is None]
    run = _pg.PgRun(dsn)
    info: dict[str, Any] = {
        "server": _pg.server_facts(dsn),
        "dsn": _pg.redact(dsn),
        "schema_prefix": run.prefix,
        "jidoka_missing": ours,
        "peers": {
            p: {"version": _pg_peers.version(p), "missing": r} for p, r in peer_reasons.items()
        },
        "drivers": {d: _pg_peers.version(d) for d in ("psycopg", "psycopg-pool", "asyncpg")},
        "sizes": sizes.__dict__,
    }
    results: list[Result] = []
    try:
        if "append" in only:
            results += _append_rows(
                _append(run, sizes, peers, ours is None), sizes, ours, peer_reasons
            )
        if "drivers" in only:
            results += _driver_rows(_drivers(run, sizes))
        if "load" in only:
            results += _load_rows(_load(run, sizes, peers, ours is None), sizes, ours, peer_reasons)
        if "startup" in only and ours is None:
            results += _startup_rows(_startup(run, sizes), sizes, ours)
    finally:
        info["schemas_dropped"] = len(run.drop_all())
    for row in results:
        row.details["server"] = info["server"]
    return results, info


def run(quick: bool = False) -> list[Result]:
    """For ``benchmarks.run --only postgres``: every part, the DSN from the environment."""
    results, _ = measure(_pg.dsn_from(None), QUICK if quick else FULL)
    return results


def format_postgres(results: Sequence[Result]) -> str:
    """Workload | Jidoka | reference | ratio | target | met."""
    lines = [
        "| Benchmark | value: median; min to max (n) | reference: median | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        mine = "—" if r.details.get("missing") else _cell(r.samples, r.unit)
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


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_postgres", description=__doc__
    )
    parser.add_argument("--dsn", help=f"default: ${_pg.DSN_VARIABLE}, else {_pg.DEFAULT_DSN}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, help="rounds (default 5; peers 3, start-up 3)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--output", type=Path, help="the JSON file to write")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = replace(
            sizes, repeats=args.repeats, peer_repeats=min(args.repeats, sizes.peer_repeats)
        )

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # through measure's finally: the schemas are dropped

    signal.signal(signal.SIGTERM, stop)
    dsn = _pg.dsn_from(args.dsn)
    start = clock()
    load_before = os.getloadavg()
    results, info = measure(dsn, sizes, args.only)
    from .run import RESULTS_DIR, _document  # here: run imports this module

    document = _document(
        results, {NAME: clock() - start}, quick=args.quick, argv=list(argv or sys.argv[1:])
    )
    document["suite"] = "jidoka on PostgreSQL (issue 15)"
    document["postgres"] = info
    document["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS_DIR / f"postgres-{stamp}{'-quick' if args.quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"server: {info['server']}\nload average before/after: {document['loadavg']}")
    print(format_postgres(results))
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
