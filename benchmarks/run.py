"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only NAME ...]``.

Without ``--only`` it runs the in-memory benchmarks (:data:`DEFAULT`); the durable-store ones
(``durable``, ``peers``: see docs/performance.md), the HTTP server (``http``: uvicorn in a
child process, wrk if installed) and the agent (``agent``: the turn loop's overhead, and 100
sessions streaming from an OpenAI-compatible server in a child process) run when named, e.g.
``--only durable peers``, ``--only http`` or ``--only agent``; ``postgres`` (issue 15: the
store on PostgreSQL, the DSN from ``JIDOKA_TEST_POSTGRES_DSN``; ``python -m
benchmarks.bench_postgres`` takes ``--dsn`` and ``--only``) and ``hotpath`` (issue 14's
table, this checkout only: ``python -m benchmarks.bench_hotpath --before SRC`` adds a
"before" tree) and ``cluster`` (issue 16: three ``jidoka serve`` nodes on that Postgres and the
Redis of ``JIDOKA_TEST_REDIS_URL``; ``python -m benchmarks.bench_cluster``) and
``chunk_pruning`` (issue 17: a 100-turn streamed session on SQLite with and without
``keep_stream_chunks``), ``webhooks`` (issue 18: delivery latency after ``run_completed``) and
``runs`` (issue 18: start_run to run_started)
run the same way.

Prints a markdown table of the results and writes them, with the machine's facts, to a JSON
file under ``benchmarks/results/`` (or ``--output``). ``--quick`` uses tiny sizes: it checks
that every benchmark still runs, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from . import (
    bench_agent,
    bench_append,
    bench_chunk_pruning,
    bench_cluster,
    bench_compaction,
    bench_durable,
    bench_fanout,
    bench_history,
    bench_hotpath,
    bench_http,
    bench_lifecycle,
    bench_mcp,
    bench_memory,
    bench_peers,
    bench_postgres,
    bench_runs,
    bench_steering,
    bench_webhooks,
)
from ._common import ROOT, Result, format_table, machine_info

__all__ = ["DEFAULT", "MODULES", "main", "run_all"]

#: In the order they run (memory last: it spawns its own processes).
MODULES: dict[str, ModuleType] = {
    module.NAME: module
    for module in (bench_lifecycle, bench_append, bench_history, bench_fanout, bench_memory)
}
#: What runs without ``--only``: the modules above.
DEFAULT: tuple[str, ...] = tuple(MODULES)
#: The durable store (SQLite) and its peers, the hot-path table, the HTTP server, the agent,
#: the PostgreSQL store and the cluster; they run only when named with ``--only``.
MODULES.update(
    {
        module.NAME: module
        for module in (
            bench_durable,
            bench_peers,
            bench_hotpath,
            bench_http,
            bench_agent,
            bench_compaction,
            bench_postgres,
            bench_cluster,
            bench_steering,
            bench_chunk_pruning,
            bench_mcp,
            bench_runs,
            bench_webhooks,
        )
    }
)

RESULTS_DIR = ROOT / "benchmarks" / "results"


def run_all(
    names: Sequence[str], *, quick: bool, log: Callable[[str], None] | None = None
) -> tuple[list[Result], dict[str, float]]:
    """Run the named benchmarks; returns their results and each one's wall time in seconds."""
    results: list[Result] = []
    durations: dict[str, float] = {}
    for name in names:
        if log is not None:
            log(f"running {name} ...")
        start = time.perf_counter()
        results.extend(MODULES[name].run(quick=quick))
        durations[name] = time.perf_counter() - start
        if log is not None:
            log(f"  {name}: {durations[name]:.1f} s")
    return results, durations


def _document(
    results: list[Result], durations: dict[str, float], *, quick: bool, argv: list[str]
) -> dict[str, Any]:
    return {
        "suite": "jidoka benchmarks",
        "quick": quick,
        "argv": argv,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "durations_s": durations,
        "results": [r.to_dict() for r in results],
    }


def _default_output(quick: bool) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{stamp}{'-quick' if quick else ''}.json"


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(MODULES),
        metavar="NAME",
        help=f"run only these ({', '.join(MODULES)}; default: {' '.join(DEFAULT)})",
    )
    parser.add_argument("--output", type=Path, help="the JSON file to write")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(args_list)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if os.environ.get("PYTHONASYNCIODEBUG"):
        log("note: PYTHONASYNCIODEBUG is set; the benchmarks run their loops with debug off")
    names = args.only or list(DEFAULT)
    results, durations = run_all(names, quick=args.quick, log=log)
    document = _document(results, durations, quick=args.quick, argv=args_list)
    if not args.no_write:
        output = args.output or _default_output(args.quick)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        tmp.replace(output)
        log(f"wrote {output}")
    machine = document["machine"]
    print(
        f"Python {machine['python']} on {machine['cpu']} ({machine['nproc']} CPUs), "
        f"jidoka {machine['jidoka']} @ {machine['git_commit']}"
        + (" (quick sizes: numbers are not meaningful)" if args.quick else "")
    )
    print()
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
