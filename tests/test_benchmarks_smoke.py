"""The benchmark suite still runs: every benchmark at tiny sizes, numbers well formed (never fast).

Speed is not asserted anywhere: these sizes measure nothing. Nor is the sign of a difference of
two timings (a row marked ``"difference": true``, like the agent's overhead per chunk): at these
sizes it is noise, and was negative in 8 of 19 loaded runs. See docs/performance.md.
"""

from __future__ import annotations

import importlib
import json
import math
import os
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
    "bench_steering",
    "bench_chunk_pruning",
    "bench_compaction",
    "bench_mcp",
    "bench_webhooks",
    "bench_runs",
]


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{name}")


def _sane(value: Any) -> bool:
    """A measured amount (a time, a rate, a size): finite and positive."""
    return _finite(value) and value > 0


def _finite(value: Any) -> bool:
    """Any well-formed number: a difference of two timings may have either sign."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_well_formed(result: Any) -> None:
    """What a result must be whatever the machine's load: complete, finite, serialisable."""
    difference = bool(result.details.get("difference"))
    amount = _finite if difference else _sane
    assert result.samples, result.key
    assert all(amount(s) for s in result.samples), (result.key, result.samples)
    assert amount(result.value), (result.key, result.value)
    assert result.unit, result.key
    if result.baseline is not None:
        assert all(_sane(s) for s in result.baseline.samples), (result.key, result.baseline)
        assert result.ratio is not None
        assert amount(result.ratio), (result.key, result.ratio)
    if result.target is not None:
        assert result.met in (True, False)
    json.dumps(result.to_dict())  # serialisable as the runner writes it


@pytest.fixture(autouse=True)
def _scratch_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The durable benchmarks write their databases under the test's own temporary directory."""
    monkeypatch.setenv("JIDOKA_BENCH_TMPDIR", str(tmp_path / "bench"))


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_runs_and_reports_well_formed_results(name: str) -> None:
    results = _load(name).run(quick=True)
    assert results, f"{name} returned no results"
    keys = [r.key for r in results]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    for result in results:
        _check_well_formed(result)


def test_agent_overheads_measured_below_zero_are_still_well_formed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a loaded machine does at random, forced: the raw streams are timed slower than the
    turns that wrapped them (a clock that moves only while they run), so every overhead is
    negative. The rows are still complete and well formed."""
    agent = _load("bench_agent")
    now = [0.0]
    consume = agent._consume

    async def slow_consume(provider: Any, requests: list[Any]) -> None:
        await consume(provider, requests)
        now[0] += 1.0

    monkeypatch.setattr(agent, "clock", lambda: now[0])
    monkeypatch.setattr(agent, "_consume", slow_consume)
    results = _load("_common").run_async(lambda: agent._scripted_rows(agent.QUICK))
    assert {r.key.split(".")[1] for r in results} == {"chunk_overhead", "tool_overhead"}
    for result in results:
        assert result.value < 0, (result.key, result.samples)  # the case being checked
        _check_well_formed(result)


def test_a_negative_difference_is_well_formed_and_a_nan_is_not() -> None:
    """A turn measured faster than its raw stream (noise) is a valid result; NaN never is."""
    common = _load("_common")
    raw = common.Baseline("raw", [2e-6, 3e-6])
    negative = common.Result(
        key="x.overhead",
        title="overhead",
        unit="s",
        samples=[-1e-6, 4e-7],
        higher_is_better=False,
        baseline=raw,
        details={"difference": True},
    )
    _check_well_formed(negative)
    with pytest.raises(AssertionError):  # the same numbers as a plain timing are not
        _check_well_formed(common.Result("x.t", "t", "s", [-1e-6, 4e-7], baseline=raw))
    with pytest.raises(AssertionError):
        _check_well_formed(common.Result("x.o", "o", "s", [math.nan], details={"difference": True}))


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


def test_memory_with_a_message_charges_each_session_its_text() -> None:
    """The ``--message-bytes`` variant: one more event per session, and its own text."""
    child = _load("bench_memory")._spawn("tracemalloc", 300, breakdown=True, message_bytes=200)
    assert child["message_bytes"] == 200
    assert child["events_per_session"] == 4  # created, active, the message, idle
    assert child["idle_sessions"] == 301
    strings = [row for row in child["anatomy"]["objects"] if row["type"] == "str"]
    assert strings
    assert strings[0]["bytes"] > 200  # the text is owned by its session alone


def test_durable_benchmarks_run_only_when_named() -> None:
    run = _load("run")
    assert {"durable", "peers", "hotpath", "http", "agent"} <= set(run.MODULES)
    assert "hotpath" not in run.DEFAULT
    assert "durable" not in run.DEFAULT
    assert "peers" not in run.DEFAULT
    assert "http" not in run.DEFAULT
    assert "agent" not in run.DEFAULT
    assert "chunk_pruning" in run.MODULES
    assert "chunk_pruning" not in run.DEFAULT


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


def test_the_app_benchmark_runs_both_ways() -> None:
    """``bench_http_app`` (the app without a server, and the router alone): every figure a
    positive, finite number of microseconds."""
    import asyncio

    bench = _load("bench_http_app")
    app = asyncio.run(bench.measure(1, 3))
    routing = asyncio.run(bench.measure_routing(1, 3))
    assert set(app) == {"post_message_us", "healthz_us"}
    assert set(routing) == {
        "route_post_message_us", "route_healthz_us", "route_stream_tickets_us",
    }  # fmt: skip
    for value in [*app.values(), *routing.values()]:
        assert _sane(value)
        assert value > 0


def test_the_tree_ab_runs_and_prints_a_ratio_per_measure() -> None:
    import subprocess

    src = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", src, src, "--rounds", "2",
         "--messages", "50", "--sessions", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| ")]
    measures = {row[1].strip(): float(row[4]) for row in rows[1:]}
    assert set(measures) == {"append", "lifecycle"}
    assert all(math.isfinite(ratio) and ratio > 0 for ratio in measures.values())


def test_hotpath_measures_two_trees_and_writes_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI with ``--before`` (this checkout's src as both trees, so each child's import is
    checked against its tree): every workload's rows, before and after measured, every number
    positive and finite, the JSON written, the table printed with a row per result."""
    hotpath = _load("bench_hotpath")
    output = tmp_path / "hotpath.json"
    src = str(ROOT / "src")
    assert hotpath.main(["--quick", "--before", src, "--after", src, "--output", str(output)]) == 0
    document = json.loads(output.read_text(encoding="utf-8"))
    assert document["trees"]["before"]["src"] == str((ROOT / "src").resolve())
    keys = [r["key"] for r in document["results"]]
    assert len(keys) == len(set(keys)), keys
    workloads = {key.split(".")[1] for key in keys}
    expected = {"lifecycle", "single", "concurrent", "shared", "idle_300", "idle_600"}
    assert expected <= workloads, keys
    peer_installed = _peer_reason("openai-agents") is None
    for result in document["results"]:
        details = result["details"]
        assert all(_sane(s) for s in result["samples"]), result["key"]
        assert all(_sane(s) for s in details["before_samples"]), result["key"]
        assert _sane(details["after_over_before_per_round"]), result["key"]
        if details.get("reference_missing"):
            assert not peer_installed, details["reference_missing"]
            assert result["baseline"] is None
        else:
            assert all(_sane(s) for s in result["baseline"]["samples"]), result["key"]
            assert _sane(result["ratio"]), result["key"]
        if result["target"] is not None:
            assert result["met"] in (True, False)
    table = capsys.readouterr().out
    assert "| Workload | measured | before | after | reference | ratio | target | met |" in table
    assert table.count("\n| ") == len(keys) + 1  # the header's separator starts with "|-"


def test_hotpath_without_the_peer_says_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without openai-agents its cells say so and the rest is measured ("after" alone here)."""
    hotpath = _load("bench_hotpath")
    monkeypatch.setattr(hotpath, "missing", lambda peer: f"not installed ({peer} missing; test)")
    results = hotpath.measure(hotpath.QUICK, ROOT / "src", only=["lifecycle"])
    assert [r.key for r in results] == ["hotpath.lifecycle.vs_peer", "hotpath.lifecycle.vs_raw"]
    peer, raw = results
    assert peer.baseline is None
    assert peer.details["reference_missing"].startswith("not installed")
    assert raw.baseline is not None
    for result in results:
        _check_well_formed(result)
        assert result.details["before_samples"] == []
    assert "SQLiteSession: not installed" in hotpath.format_hotpath(results)


def _postgres_dsn() -> str:
    """The test server's DSN; without a server the test skips, or fails under ``CI=true``."""
    pg = _load("_pg")
    dsn: str = pg.dsn_from(None)
    reason = pg.unavailable(dsn)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs PostgreSQL for the Postgres benchmark: {reason}")
        pytest.skip(f"the Postgres benchmark needs a server: {reason}")
    return dsn


def _schemas(dsn: str, prefix: str) -> list[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)
        ).fetchall()
    return [row[0] for row in rows]


def test_postgres_benchmark_runs_and_drops_its_schemas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every part at tiny sizes: Jidoka measured on each workload, the raw and driver rows
    and (when the `bench` extra is installed) the peers' positive and finite, the JSON written,
    a table row per result, and no schema of the run left behind."""
    dsn = _postgres_dsn()
    bench = _load("bench_postgres")
    peers = _load("_pg_peers")
    output = tmp_path / "postgres.json"
    assert bench.main(["--quick", "--dsn", dsn, "--output", str(output)]) == 0
    document = json.loads(output.read_text(encoding="utf-8"))
    info = document["postgres"]
    assert info["schemas_dropped"] > 0
    assert _schemas(dsn, info["schema_prefix"]) == []
    results = document["results"]
    keys = [r["key"] for r in results]
    assert len(keys) == len(set(keys)), keys
    parts = {key.split(".")[1] for key in keys}
    assert {"single", "concurrent", "driver", "load", "startup", "list_page_first"} <= parts
    drivers = {r["details"]["driver"] for r in results if r["key"].startswith("postgres.driver.")}
    assert drivers == {"psycopg", "psycopg-binary", "psycopg-pipeline", "asyncpg"}
    installed = {peers.LANGGRAPH: False, peers.ADK: False}
    for peer in installed:
        installed[peer] = peers.missing(peer) is None
    for result in results:
        key, details = result["key"], result["details"]
        assert all(_sane(s) for s in result["samples"]), (key, result["samples"])
        reference = details["reference"]
        peer = {"LangGraph": peers.LANGGRAPH, "ADK": peers.ADK}.get(reference)
        if peer is not None and not installed[peer]:
            assert result["baseline"] is None, key
            continue
        if reference is not None:
            assert all(_sane(s) for s in result["baseline"]["samples"]), key
            assert _sane(result["ratio"]), key
        if result["target"] is not None:
            assert result["met"] in (True, False)
    table = capsys.readouterr().out
    assert table.count("\n| ") == len(keys) + 1  # the header's separator starts with "|-"


def test_postgres_benchmark_drops_its_schemas_when_a_part_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A part that fails after making a schema: the error comes out, the schema does not stay."""
    dsn = _postgres_dsn()
    bench = _load("bench_postgres")
    made: list[str] = []

    def failing(run: Any, sizes: Any) -> Any:
        schema = run.schema("doomed")
        _load("_common").run_async(lambda: _load("_pg").make_tables(run.dsn, schema))
        made.append(run.prefix)
        raise RuntimeError("the part failed")

    monkeypatch.setattr(bench, "_drivers", failing)
    with pytest.raises(RuntimeError, match="the part failed"):
        bench.measure(dsn, bench.QUICK, ["drivers"])
    [prefix] = made
    assert _schemas(dsn, prefix) == []


def _redis_for_cluster() -> str:
    """The test Redis; without one the cluster benchmark's test skips, or fails under CI."""
    cluster = _load("_cluster")
    url: str = cluster.redis_url()
    reason = cluster.redis_unavailable(url)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs Redis for the cluster benchmark: {reason}")
        pytest.skip(f"the cluster benchmark needs Redis: {reason}")
    return url


def test_cluster_benchmark_runs_and_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every part at tiny sizes on three real nodes: each row's numbers positive and finite
    (the forwarding overhead may have either sign), the takeovers measured for the kill and
    the hand-over, the JSON written, a table row per result, and neither a schema nor a Redis
    key of the run left behind. Only run when named (``--only cluster``)."""
    import redis

    dsn = _postgres_dsn()
    url = _redis_for_cluster()
    run = _load("run")
    assert "cluster" in run.MODULES
    assert "cluster" not in run.DEFAULT
    bench = _load("bench_cluster")
    output = tmp_path / "cluster.json"
    assert bench.main(["--quick", "--dsn", dsn, "--redis", url, "--output", str(output)]) == 0
    document = json.loads(output.read_text(encoding="utf-8"))
    info = document["cluster"]
    assert info["schemas_dropped"] == len(bench.PARTS)
    assert _schemas(dsn, info["schema_prefix"]) == []
    with redis.Redis.from_url(url) as client:
        assert list(client.scan_iter(match=f"{info['schema_prefix']}:*")) == []
    results = {r["key"]: r for r in document["results"]}
    parts = {key.split(".")[1] for key in results}
    assert parts == {"rtt", "failover", "throughput", "ownership"}
    for name in ("kill", "term"):
        [round_] = results[f"cluster.failover.{name}"]["details"]["rounds"]
        assert round_["seconds"] == max(round_["per_session"]) > 0
    assert results["cluster.failover.kill"]["details"]["rounds"][0]["exit_code"] == -9
    owned = results["cluster.rtt.direct"]["details"]["owned_after"]
    assert owned["n1"] == bench.QUICK.rtt_sessions
    assert owned["n2"] == 0
    for key, result in results.items():
        amount = _finite if result["details"].get("difference") else _sane
        assert result["samples"], key
        assert all(amount(s) for s in result["samples"]), key
        if result["baseline"] is not None:
            assert _sane(result["ratio"]), key
        if result["target"] is not None:
            assert result["met"] in (True, False), key
    table = capsys.readouterr().out
    assert table.count("\n| ") == len(results) + 1  # the header's separator starts with "|-"


def test_cluster_benchmark_stops_its_nodes_and_drops_its_schema_when_a_part_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A part that fails while its three nodes run: the error comes out, every node process
    has ended, and the part's schema does not stay."""
    dsn = _postgres_dsn()
    url = _redis_for_cluster()
    bench = _load("bench_cluster")
    seen: list[Any] = []

    async def failing(nodes: Any, sizes: Any) -> Any:
        seen.extend(nodes)
        assert all(node.running for node in nodes)
        raise RuntimeError("the part failed")

    monkeypatch.setattr(bench, "_rtt", failing)
    with pytest.raises(RuntimeError, match="the part failed"):
        bench.measure(dsn, url, bench.QUICK, ["rtt"])
    assert len(seen) == 3
    assert not any(node.running for node in seen)
    schema = seen[0].command[seen[0].command.index("--postgres-schema") + 1]
    assert _schemas(dsn, schema) == []
