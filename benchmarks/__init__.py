"""Jidoka's reproducible benchmark suite.

Run everything with ``./scripts/bench`` (or ``python -m benchmarks.run``; ``--quick`` for tiny
sizes). One module per area, each exposing ``run(quick: bool = False) -> list[Result]``:

- :mod:`benchmarks.bench_lifecycle`: session create + terminate throughput;
- :mod:`benchmarks.bench_append`: message append throughput (one session, 100 concurrent
  sessions) and whether append cost depends on history length;
- :mod:`benchmarks.bench_history`: reading a 1,000-message history;
- :mod:`benchmarks.bench_fanout`: event fan-out latency to 1, 100 and 1,000 subscribers;
- :mod:`benchmarks.bench_memory`: bytes per idle session at 10k and 100k sessions (each size in a
  fresh subprocess);
- :mod:`benchmarks.bench_durable` (``--only durable``): the SQLite store against raw per-commit
  SQLite, session load time and start-up with 10k/100k stored sessions;
- :mod:`benchmarks.bench_peers` (``--only peers``, needs the ``bench`` extra): the same appends
  against the OpenAI Agents SDK's ``SQLiteSession`` and Google ADK's ``DatabaseSessionService``;
- :mod:`benchmarks.bench_hotpath` (``--only hotpath``, or ``python -m benchmarks.bench_hotpath
  --before SRC``): issue 14's table, two source trees alternating in child processes next to
  ``SQLiteSession`` and raw SQLite, plus idle memory per session.

Every measurement is repeated and reported as a median with its spread, next to a baseline
measured in the same process and run. Results and method: ``docs/performance.md``.
"""
