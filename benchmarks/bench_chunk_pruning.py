"""Stream-chunk pruning (issue 17): what a 100-turn streamed session stores on SQLite with
``keep_stream_chunks`` on (the default) and off.

One session, one scripted model (``provider: scripted``), run through ``client.chat``: each turn
is a user message, a first model call that streams a short sentence and reads a ~2 KB project
file with ``read_file``, then a second call that streams a ~1 KB answer in 8-character deltas
(an LLM's token-sized pieces, a short pause before each, so the stored chunk events are about
as many as the deltas, as with a live model). The same script runs on a fresh SQLite store with
the setting on and off (``durability="normal"``: the fsync is not what is measured), then the
runtime is closed (the WAL checkpointed into the file) and the database is read with raw
``sqlite3``:

- **events table**: the pages of the ``events`` table and its index (SQLite's ``dbstat``); with
  pruning the freed pages are on the free list, reused by the next turns' appends;
- **file**: the database file's size, free pages included (nothing runs ``VACUUM``);
- **per turn** (the median turn): the JSON bytes of one turn's stored events beyond the issue's
  bound of "2x the answer plus the tool results". The answer is stored twice (its assistant
  message and its ``llm_response``), the tool results once; what is left is the turn's fixed
  events (the user's message, four statuses, the tool call, the file index entry, the
  response's usage) and the first call's kept chunk (its text is in no other event): a few
  hundred bytes whatever the answer's length. With every chunk kept, the chunks come on top:
  an 8-character delta is about 40 bytes of JSON.

Repeated (the order of the two settings alternating); each row is the median run, its baseline
the same measure with every chunk kept.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

import jidoka
from jidoka.store.sqlite import DATABASE_NAME

from ._common import Baseline, Result, format_table, run_async
from .bench_durable import scratch_dir

__all__ = ["NAME", "run"]

NAME = "chunk_pruning"

#: What the model reads each turn (about 2 KB of a source file).
SOURCE = "".join(
    f"def step_{n}(value: int) -> int:\n    return value * {n} + 1\n\n" for n in range(45)
)
PROSE = (
    "The parser fails because the tokenizer treats a trailing comma as the end of the list; "
    "the fix is to look one token ahead before closing it, and to add a regression test. "
)


@dataclass(frozen=True)
class Sizes:
    turns: int
    answer_chars: int
    delta_chars: int
    delay: float  # seconds before each delta of the answer (the scripted model's pace)
    repeats: int


FULL = Sizes(turns=100, answer_chars=1_000, delta_chars=8, delay=0.000_5, repeats=3)
QUICK = Sizes(turns=3, answer_chars=80, delta_chars=8, delay=0.0, repeats=1)


def _script(sizes: Sizes) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for turn in range(sizes.turns):
        answer = (f"Turn {turn}: " + PROSE * (sizes.answer_chars // len(PROSE) + 1))[
            : sizes.answer_chars
        ]
        pieces = [
            answer[i : i + sizes.delta_chars] for i in range(0, len(answer), sizes.delta_chars)
        ]
        read = {"id": f"c{turn}", "name": "read_file", "arguments": {"path": "src/parser.py"}}
        calls.append({"chunks": ["Let me read ", "the parser."], "tool_calls": [read]})
        calls.append({"chunks": pieces, "delay": sizes.delay})
    return calls


@dataclass(frozen=True)
class Stored:
    events_bytes: int  # pages of the events table and its index
    file_bytes: int
    turn_excess: float  # median over turns: turn bytes - tool results - 2 x answer bytes
    chunks_per_turn: float  # chunk events stored per turn (what the log holds at the end)
    turn_bytes: float  # median JSON bytes a turn stores
    answer_bytes: float
    tool_bytes: float


async def _session(data: Path, sizes: Sizes, *, keep: bool) -> None:
    project = data.parent / "project"
    (project / "src").mkdir(parents=True, exist_ok=True)
    (project / "src" / "parser.py").write_text(SOURCE, encoding="utf-8")
    settings = jidoka.Settings(
        keep_stream_chunks=keep, durability="normal", max_llm_config_bytes=1 << 22
    )
    async with jidoka.Runtime(data, store="sqlite", settings=settings) as rt:
        llm = {"provider": "scripted", "script": _script(sizes)}
        sid = await rt.client.create_session(project_root=str(project), llm_config=llm)
        for turn in range(sizes.turns):
            await rt.client.chat(sid, f"Next step, please ({turn}).")
        await rt.manager.wait_background()  # the last turn's drop


def _measure(path: Path) -> Stored:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        events_bytes = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name IN"
            " (SELECT name FROM sqlite_master WHERE tbl_name = 'events')"
        ).fetchone()[0]
        rows = conn.execute("SELECT type, data FROM events ORDER BY session_id, seq").fetchall()
    turns: list[dict[str, float]] = []
    for kind, data in rows:
        payload = msgspec.json.decode(data)
        if kind == "conversation_added" and payload.get("role") == "user":
            turns.append({"bytes": 0, "tool": 0, "answer": 0, "chunks": 0})
        if not turns:
            continue  # the session's creation, before the first turn
        turn = turns[-1]
        turn["bytes"] += len(data)
        if kind == "tool_result":
            turn["tool"] += len(data)
        elif kind == "llm_response":
            turn["answer"] = len(payload["content"].encode())
        elif kind == "llm_stream_chunk":
            turn["chunks"] += 1
    excess = [t["bytes"] - t["tool"] - 2 * t["answer"] for t in turns]
    return Stored(
        events_bytes=int(events_bytes),
        file_bytes=path.stat().st_size,
        turn_excess=statistics.median(excess),
        chunks_per_turn=statistics.mean(t["chunks"] for t in turns),
        turn_bytes=statistics.median(t["bytes"] for t in turns),
        answer_bytes=statistics.median(t["answer"] for t in turns),
        tool_bytes=statistics.median(t["tool"] for t in turns),
    )


def _one(sizes: Sizes, *, keep: bool) -> Stored:
    with scratch_dir("chunks") as root:
        data = root / "data"
        run_async(lambda: _session(data, sizes, keep=keep))
        return _measure(data / DATABASE_NAME)


def run(quick: bool = False) -> list[Result]:
    sizes = QUICK if quick else FULL
    kept: list[Stored] = []
    pruned: list[Stored] = []
    for repeat in range(sizes.repeats):
        for keep in (True, False) if repeat % 2 == 0 else (False, True):
            (kept if keep else pruned).append(_one(sizes, keep=keep))
    label = f"{sizes.turns} streamed turns"
    every = "every chunk kept (the default)"
    details = {
        "turns": sizes.turns,
        "answer_chars": sizes.answer_chars,
        "delta_chars": sizes.delta_chars,
        "chunks_per_turn_kept": statistics.median(s.chunks_per_turn for s in kept),
        "chunks_per_turn_pruned": statistics.median(s.chunks_per_turn for s in pruned),
        "turn_bytes_kept": statistics.median(s.turn_bytes for s in kept),
        "turn_bytes_pruned": statistics.median(s.turn_bytes for s in pruned),
        "answer_bytes": statistics.median(s.answer_bytes for s in pruned),
        "tool_result_bytes": statistics.median(s.tool_bytes for s in pruned),
    }
    return [
        Result(
            key="chunk_pruning.events_table",
            title=f"events table + index, {label}, chunks pruned",
            unit="B",
            samples=[float(s.events_bytes) for s in pruned],
            higher_is_better=False,
            baseline=Baseline(
                "every chunk kept (the default)", [float(s.events_bytes) for s in kept]
            ),
            notes="SQLite dbstat pages; ratio = pruned / kept",
            details=details,
        ),
        Result(
            key="chunk_pruning.file",
            title=f"database file, {label}, chunks pruned",
            unit="B",
            samples=[float(s.file_bytes) for s in pruned],
            higher_is_better=False,
            baseline=Baseline(
                "every chunk kept (the default)", [float(s.file_bytes) for s in kept]
            ),
            notes="free pages included (no VACUUM); ratio = pruned / kept",
        ),
        Result(
            key="chunk_pruning.turn_excess",
            title="a turn's stored JSON beyond 2x its answer plus its tool results (median)",
            unit="B",
            samples=[s.turn_excess for s in pruned],
            higher_is_better=False,
            baseline=Baseline(every, [s.turn_excess for s in kept]),
            notes=f"answer {sizes.answer_chars:,} B; beyond: fixed events, first call's chunk",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_chunk_pruning")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = parser.parse_args(argv)
    print(format_table(run(quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
