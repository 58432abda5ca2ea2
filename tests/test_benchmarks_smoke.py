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

MODULES = [
    "bench_lifecycle",
    "bench_append",
    "bench_history",
    "bench_fanout",
    "bench_memory",
    "bench_durable",
    "bench_http",
    "bench_agent",
]


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{name}")


def _sane(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(autouse=True)
def _scratch_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The durable benchmarks write their databases under the test's own temporary directory."""
    monkeypatch.setenv("JIDOKA_BENCH_TMPDIR", str(tmp_path / "bench"))


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


def test_durable_benchmarks_run_only_when_named() -> None:
    run = _load("run")
    assert {"durable", "peers", "http", "agent"} <= set(run.MODULES)
    assert "durable" not in run.DEFAULT
    assert "peers" not in run.DEFAULT
    assert "http" not in run.DEFAULT
    assert "agent" not in run.DEFAULT


def test_durable_scratch_stays_in_the_tmpdir(tmp_path: Path) -> None:
    durable = _load("bench_durable")
    assert durable.scratch_root() == (tmp_path / "bench").resolve()
    with durable.scratch_dir("x") as path:
        assert path.parent == (tmp_path / "bench").resolve()
    assert not path.exists()


def _peer_reason(peer: str) -> str | None:
    reason: str | None = _load("bench_peers").missing(peer)
    return reason


@pytest.mark.parametrize("peer", ["openai-agents", "google-adk"])
def test_peer_comparison_runs(peer: str) -> None:
    """Needs the `bench` extra (JIDOKA_EXTRAS=dev,bench); skipped without it."""
    reason = _peer_reason(peer)
    if reason is not None:
        pytest.skip(f"{peer} is {reason}: the peer comparison needs the `bench` extra")
    results = _load("bench_peers").run(quick=True, peers=[peer])
    assert len(results) == 2
    for result in results:
        assert result.details["installed"] is True, result.notes
        assert all(_sane(s) for s in result.samples), (result.key, result.samples)
        assert result.baseline is not None
        assert all(_sane(s) for s in result.baseline.samples), (result.key, result.baseline)
        assert _sane(result.ratio)
        json.dumps(result.to_dict())


def test_missing_peers_give_not_installed_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    peers = _load("bench_peers")
    monkeypatch.setattr(peers, "missing", lambda peer: f"not installed ({peer} missing; test)")
    results = peers.run(quick=True)
    assert [r.key for r in results] == [
        "peers.openai_single",
        "peers.openai_many",
        "peers.adk_single",
        "peers.adk_many",
    ]
    for result in results:
        assert result.details["installed"] is False
        assert "not installed" in result.notes
        assert "(not installed)" in result.title
        assert result.baseline is None
        assert math.isnan(result.value)
        json.dumps(result.to_dict())
    assert "(not installed)" in _load("_common").format_table(results)
