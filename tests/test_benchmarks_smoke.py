"""The benchmark suite still runs: every benchmark at tiny sizes, numbers sane (never fast).

Speed is not asserted anywhere: these sizes measure nothing. See docs/performance.md.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (unlike `python -m pytest`) does not add the cwd
    sys.path.insert(0, str(ROOT))

MODULES = ["bench_lifecycle", "bench_append", "bench_history", "bench_fanout", "bench_memory"]


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{name}")


def _sane(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_runs_and_reports_sane_numbers(name: str) -> None:
    results = _load(name).run(quick=True)
    assert results, f"{name} returned no results"
    keys = [r.key for r in results]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    for result in results:
        assert result.samples, result.key
        assert all(_sane(s) for s in result.samples), (result.key, result.samples)
        assert _sane(result.value), (result.key, result.value)
        assert result.unit, result.key
        if result.baseline is not None:
            assert all(_sane(s) for s in result.baseline.samples), (result.key, result.baseline)
            assert result.ratio is not None
            assert _sane(result.ratio), (result.key, result.ratio)
        if result.target is not None:
            assert result.met in (True, False)
        json.dumps(result.to_dict())  # serialisable as the runner writes it


def test_runner_writes_json_and_prints_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _load("run")
    output = tmp_path / "results.json"
    assert run.main(["--quick", "--only", "history", "--output", str(output)]) == 0
    document = json.loads(output.read_text(encoding="utf-8"))
    assert document["quick"] is True
    assert document["machine"]["python"]
    [result] = document["results"]
    assert result["key"] == "history.read_1000"
    assert _sane(result["value"])
    table = capsys.readouterr().out
    assert "| get_conversation_history, 1,000 messages |" in table


def test_memory_anatomy_accounts_for_most_of_a_session() -> None:
    """The per-object breakdown of one idle session (a diagnostic on private attributes)."""
    child = _load("bench_memory")._spawn("tracemalloc", 300, breakdown=True)
    anatomy = child["anatomy"]
    assert "error" not in anatomy, anatomy
    assert _sane(anatomy["total_bytes"])
    assert anatomy["total_bytes"] <= child["after_idle"] * 1.5
