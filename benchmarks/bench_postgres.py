"""Issue 15's table: Jidoka on PostgreSQL next to the raw driver and the peers, same server.

``python -m benchmarks.bench_postgres [--dsn DSN] [--quick] [--repeats N] [--only PART ...]
[--output FILE]``; the DSN defaults to ``JIDOKA_TEST_POSTGRES_DSN``, else
``postgresql://postgres@127.0.0.1:5432/test``. Every run makes its own schemas (named
``jbench_<random>_<n>_<what>``; a fresh one per sample) and drops all of them at the end,
also when it fails. Parts (``--only``):

- ``append``: **1 session**, 2,000 awaited ``send_message``; **100 sessions x 20**, one task per
  session, all at once. Jidoka (``Runtime(store=DSN, postgres_schema=...)``, default settings)
  runs in a fresh child process per sample (``benchmarks._pg_child``). References in this
  process, same rounds, with the store's driver (asyncpg): one ``INSERT`` per call in
  autocommit (one commit each), awaited one after another on one connection: **the per-commit
  limit** of one writer, the baseline of both targets (1 session ≥ 0.8x, 100 x 20 ≥ 10x).
  Also reported for 100 x 20: the same 100 tasks committing every insert over a pool of 20
  connections (the server flushes the WAL of concurrent commits together, so this is what
  per-call commits reach with concurrency: the floor for "100 concurrent writers"), the
  store's own group statement for 100 sessions x 1 event with no runtime around it (the
  ceiling of the concurrent case) and one session's rows in one statement (the batching
  ceiling). The peers (``benchmarks._pg_peers``: LangGraph's ``AsyncPostgresSaver``, the ADK's
  ``DatabaseSessionService`` on asyncpg) run the same two shapes in the first rounds (and
  fewer messages on one session: LangGraph's checkpoint grows with the thread, the ADK is
  slow), each row saying so.
- ``drivers``: the store's statements, built by its own code (``jidoka.store.postgres_sql``:
  one event of one session; the group of 100 sessions, arrays and ``unnest``, each head
  updated only where its last seq and fence still match) and the per-commit ``INSERT``, for
  psycopg 3 (``%s``: text parameters), psycopg with ``%b`` (binary parameters), psycopg
  ``%b`` in pipeline mode, and asyncpg; plus the head update and the insert as two statements
  in one transaction (where pipeline mode sends all four messages at once), per-commit
  inserts over a pool, and one session's rows in one statement. Rows/s and the client's CPU
  per row, against plain psycopg's.
- ``load``: a 10,000-message session written through the API, then in each sample a fresh
  process (a restart) reads another session first (the pool's connections, as the peers'
  pools are warmed) and times the first ``get_conversation_history`` (snapshot + tail), for
  a session with the default ``max_history`` (the newest 100 come back) and one with
  ``max_history`` = 10,000 (all of them, as the peers return). Raw reference: reading the
  session's whole log with psycopg on an open connection. Peers, each on a fresh pool warmed
  on another thread or session: a LangGraph thread whose latest checkpoint holds 10,000
  messages (``aget_tuple``), an ADK session of 10,000 events (``get_session``).
- ``startup``: 1,000,000 sessions in Jidoka's own tables: one made through the API, copied
  with ``INSERT ... SELECT ... generate_series`` (new ids; 1,000 principals of 1,000 sessions
  each), then ``VACUUM ANALYZE``. Each sample is a fresh process timing ``async with Runtime``
  entry (target < 1 s; reference: the same start on an empty schema), then pages of the
  server's default size through ``client.list_sessions(owner=...)``: the very first call, a
  second principal's first page (its sessions not loaded yet), that page again (target
  < 10 ms each); reference: the same page read with psycopg.

Targets are reported, never asserted. Ratios are of medians; the JSON keeps every sample.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import _pg, _pg_peers
from ._common import ROOT, Result, clock, run_async, run_child
from ._pg_rows import (
    BATCHED,
    FULL,
    GROUP,
    NAME,
    PARTS,
    PEER_NAMES,
    POOL,
    QUICK,
    RAW,
    RAW_READ,
    STORE_DRIVER,
    Samples,
    Sizes,
    append_rows,
    driver_rows,
    format_postgres,
    load_rows,
    startup_rows,
)

__all__ = ["NAME", "PARTS", "measure", "run"]


def _child(args: Sequence[str], what: str) -> dict[str, Any]:
    src = ROOT / "src"
    out = run_child("benchmarks._pg_child", args, f"postgres child {what}", src=src)
    if not str(out["jidoka_file"]).startswith(str(src.resolve())):
        raise RuntimeError(f"the child imported {out['jidoka_file']}, not {src}")
    return out


def _jidoka(run: _pg.PgRun, workload: str, *extra: str) -> dict[str, Any]:
    schema = run.schema(workload)
    return _child([workload, "--dsn", run.dsn, "--schema", schema, *extra], workload)


def _rounds(samples: Samples, rounds: list[list[tuple[str, Callable[[], Any]]]]) -> None:
    """Run each round's steps, reversed in odd rounds, so no side always goes first."""
    for index, steps in enumerate(rounds):
        for name, step in steps if index % 2 == 0 else steps[::-1]:
            samples.take(name, step)


# --- append -------------------------------------------------------------------------------------


def _raw(run: _pg.PgRun, body: Callable[[str], Awaitable[_pg.Rate]]) -> Callable[[], _pg.Rate]:
    def step() -> _pg.Rate:
        async def go() -> _pg.Rate:
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


def _append(run: _pg.PgRun, sizes: Sizes, peers: Sequence[str]) -> Samples:
    dsn, n = run.dsn, sizes.single
    s, m = sizes.sessions, sizes.per_session
    samples = Samples()
    rounds = []
    for index in range(sizes.repeats):
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("jidoka single", lambda: _jidoka(run, "single", "--n", str(n))),
            (
                "jidoka concurrent",
                lambda: _jidoka(run, "concurrent", "--n", str(s), "--per-session", str(m)),
            ),
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


def _driver_steps(run: _pg.PgRun, sizes: Sizes) -> list[tuple[str, Callable[[], Any]]]:
    dsn, n, s, m = run.dsn, sizes.single, sizes.sessions, sizes.per_session
    steps: list[tuple[str, Callable[[], Any]]] = []
    for driver in _pg.DRIVERS:
        d = driver
        bodies: dict[str, Callable[[str], Awaitable[_pg.Rate]]] = {
            "per_commit": lambda schema, d=d: _pg.per_commit(d, dsn, schema, n // 4),
            "group_1": lambda schema, d=d: _pg.group_statements(d, dsn, schema, 1, n // 4),
            "group_100": lambda schema, d=d: _pg.group_statements(d, dsn, schema, s, m),
            "split_1": lambda schema, d=d: _pg.group_statements(
                d, dsn, schema, 1, n // 8, split=True
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


def _drivers(run: _pg.PgRun, sizes: Sizes) -> Samples:
    samples = Samples()
    _rounds(samples, [_driver_steps(run, sizes) for _ in range(sizes.driver_repeats)])
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


def _load(run: _pg.PgRun, sizes: Sizes, peers: Sequence[str]) -> Samples:
    dsn, n = run.dsn, sizes.load
    samples = Samples()
    steps: list[tuple[str, Callable[[], Any]]] = []
    info: dict[str, Any] = {}
    schema = run.schema("long")
    written = _child(["write-long", "--dsn", dsn, "--schema", schema, "--n", str(n)], "write-long")
    sid = written["session_id"]
    warm = _child(["write-long", "--dsn", dsn, "--schema", schema, "--n", "1"], "write-long warm")[
        "session_id"
    ]
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
    samples = Samples()
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


# --- the run ------------------------------------------------------------------------------------


def measure(
    dsn: str, sizes: Sizes, only: Sequence[str] = PARTS
) -> tuple[list[Result], dict[str, Any]]:
    """The rows of every part in ``only``, and what the run measured on (server settings,
    versions, schemas dropped). Every schema the run made is dropped, also on failure."""
    reason = _pg.unavailable(dsn)
    if reason is not None:
        raise RuntimeError(f"bench_postgres cannot run: {reason}")
    peer_reasons = {peer: _pg_peers.missing(peer) for peer in _pg_peers.PEERS}
    peers = [peer for peer, why in peer_reasons.items() if why is None]
    run = _pg.PgRun(dsn)
    info: dict[str, Any] = {
        "server": _pg.server_facts(dsn),
        "dsn": _pg.redact(dsn),
        "schema_prefix": run.prefix,
        "peers": {
            p: {"version": _pg_peers.version(p), "missing": r} for p, r in peer_reasons.items()
        },
        "drivers": {d: _pg_peers.version(d) for d in ("psycopg", "psycopg-pool", "asyncpg")},
        "sizes": sizes.__dict__,
    }
    results: list[Result] = []
    parts: dict[str, Callable[[], list[Result]]] = {
        "append": lambda: append_rows(_append(run, sizes, peers), sizes, peer_reasons),
        "drivers": lambda: driver_rows(_drivers(run, sizes)),
        "load": lambda: load_rows(_load(run, sizes, peers), sizes, peer_reasons),
        "startup": lambda: startup_rows(_startup(run, sizes), sizes),
    }
    info["part_seconds"] = {}
    try:
        for name in PARTS:
            if name not in only:
                continue
            start = clock()
            results += parts[name]()
            info["part_seconds"][name] = clock() - start
    finally:
        info["schemas_dropped"] = len(run.drop_all())
    for row in results:
        row.details["server"] = info["server"]
    return results, info


def run(quick: bool = False) -> list[Result]:
    """For ``benchmarks.run --only postgres``: every part, the DSN from the environment."""
    results, _ = measure(_pg.dsn_from(None), QUICK if quick else FULL)
    return results


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_postgres", description=__doc__
    )
    parser.add_argument("--dsn", help=f"default: ${_pg.DSN_VARIABLE}, else {_pg.DEFAULT_DSN}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--repeats", type=int, help="rounds (default 5; peers, drivers and start-up 3)"
    )
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--output", type=Path, help="the JSON file to write")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = replace(
            sizes,
            repeats=args.repeats,
            peer_repeats=min(args.repeats, sizes.peer_repeats),
            driver_repeats=args.repeats,
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
