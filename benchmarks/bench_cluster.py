"""Issue 16's table: a cluster of ``jidoka serve`` nodes on one Postgres and one Redis.

``python -m benchmarks.bench_cluster [--dsn DSN] [--redis URL] [--quick] [--only PART ...]
[--kills N] [--src SRC] [--output FILE]``; the DSN defaults to ``JIDOKA_TEST_POSTGRES_DSN``
(else the local test database), the Redis URL to ``JIDOKA_TEST_REDIS_URL`` (else
``redis://127.0.0.1:6379/0``). Every part starts its own three nodes (real subprocesses,
``--lease-ttl 2`` as the tests use, logs at ``warning``; ``--src`` runs them on another
checkout's ``src``) on a schema and a Redis prefix of its own, and the run drops all of them at
the end, also when it fails. Parts (``--only``):

- ``rtt``: sessions created on n1 (so n1 owns them); ``POST /v1/sessions/{id}/messages`` sent
  to n1 (direct) and to n2 (which forwards to n1), one request at a time, interleaved in pairs
  whose order alternates, each on a keep-alive connection. Per round: the p50 of each and
  their difference; over all rounds the p99. Target: forwarding adds <= 1 ms at p50.
- ``failover``: for each of >= 20 rounds, a victim node (n1, n2, n3 in turn) creates sessions
  and writes one message to each, then gets SIGKILL; every session is written through the
  other nodes (a POST every 20 ms until one is accepted, alternately to each survivor); the
  round's time is from the signal until the last of its sessions accepted a write. The victim
  is restarted (same id, port) and the next round waits until it is a member again. Target
  p99 <= TTL + 2 s. The same with SIGTERM (the node hands its sessions over as it stops):
  target p99 <= 1 s.
- ``throughput``: closed-loop clients, each on a session of its own, writing messages for a
  fixed window: all sessions owned by n1 and sent to n1 (**1 node**; the two others idle), one
  third owned by each node and each client sending to its session's owner (**3 nodes**), and
  the same sessions with each request sent to a random node (what a load balancer without
  stickiness does: two thirds are forwarded). Rounds alternate the order.
- ``ownership``: what owning sessions costs a node. Rows: session head rows copied with SQL so
  one node owns ``rows`` of them (100,000), then the size of the ``sessions_node_live`` index
  per session and of the ``nodes`` table, the average width of the ``node`` column, and how
  long ``GET /v1/cluster`` (which counts each node's sessions) takes. Renewals: every change of
  a node's ``heartbeat_at`` counted by polling ``nodes`` every 50 ms for a window (expected:
  nodes x 3 / TTL, whatever the sessions). Memory: the RSS of the node owning those rows (not
  loaded: ownership is a column, sessions load on demand), and of a node before and after
  ``loaded`` (10,000) sessions were created through it and stay loaded. Extrapolated linearly
  to 1,000,000 sessions.

Targets are reported, never asserted. The JSON keeps every sample and per-session time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from . import _pg
from ._cluster import (
    Http,
    HttpError,
    Node,
    drop_redis_keys,
    free_ports,
    redis_unavailable,
    redis_url,
    running,
)
from ._common import (
    ROOT,
    Baseline,
    Result,
    Target,
    clock,
    format_table,
    git_commit,
    percentile,
    run_async,
)

__all__ = ["FULL", "NAME", "PARTS", "QUICK", "Sizes", "main", "measure", "run"]

NAME: Final = "cluster"
PARTS: Final = ("rtt", "failover", "throughput", "ownership")
MESSAGE: Final = b'{"role":"user","content":"hello from the cluster benchmark"}'
#: Between two attempts to write a session whose owner was lost.
POLL_INTERVAL: Final = 0.02
#: How long a lost owner's session may stay unwritable before the run gives up.
FAILOVER_DEADLINE: Final = 30.0


@dataclass(frozen=True)
class Sizes:
    ttl: float
    rtt_sessions: int
    rtt_pairs: int
    rtt_rounds: int
    kills: int
    terms: int
    victim_sessions: int
    clients: int
    window: float
    tp_rounds: int
    rows: int
    loaded: int
    renew_window: float


FULL = Sizes(
    ttl=2.0,
    rtt_sessions=20,
    rtt_pairs=400,
    rtt_rounds=5,
    kills=20,
    terms=20,
    victim_sessions=5,
    clients=24,
    window=5.0,
    tp_rounds=3,
    rows=100_000,
    loaded=10_000,
    renew_window=12.0,
)
QUICK = Sizes(
    ttl=2.0,
    rtt_sessions=2,
    rtt_pairs=20,
    rtt_rounds=2,
    kills=1,
    terms=1,
    victim_sessions=2,
    clients=3,
    window=0.5,
    tp_rounds=1,
    rows=2_000,
    loaded=1_000,
    renew_window=2.0,
)


# --- a cluster per part ---------------------------------------------------------------------------


@dataclass
class Run:
    """One run's names: its schemas (dropped at the end) and its Redis prefixes."""

    dsn: str
    bus: str
    pg: _pg.PgRun
    #: The ``src`` tree the nodes run (``None``: this checkout's).
    src: Path | None = None

    def __post_init__(self) -> None:
        self.prefixes: list[str] = []

    @contextlib.contextmanager
    def cluster(self, what: str, ttl: float, n: int = 3) -> Iterator[list[Node]]:
        schema = self.pg.schema(what)
        prefix = f"{self.pg.prefix}:{what}"
        self.prefixes.append(prefix)
        ports = free_ports(n)
        with tempfile.TemporaryDirectory(prefix="jbench-cluster-") as workdir:
            nodes = [
                Node(
                    f"n{i + 1}",
                    port,
                    dsn=self.dsn,
                    schema=schema,
                    bus=self.bus,
                    prefix=prefix,
                    ttl=ttl,
                    workdir=Path(workdir),
                    src=self.src,
                )
                for i, port in enumerate(ports)
            ]
            # The first node makes the schema; the others would race it to.
            try:
                nodes[0].start()
                with running(nodes[1:]):
                    run_async(lambda: _wait_members(nodes))
                    yield nodes
            finally:
                nodes[0].stop()

    def drop_all(self) -> dict[str, int]:
        schemas = self.pg.drop_all()
        keys = sum(drop_redis_keys(self.bus, prefix) for prefix in self.prefixes)
        return {"schemas_dropped": len(schemas), "redis_keys_dropped": keys}


async def _cluster_view(node: Node) -> dict[str, Any]:
    http = Http(node.port)
    try:
        view: dict[str, Any] = await http.json("GET", "/v1/cluster")
        return view
    finally:
        await http.close()


async def _wait_members(nodes: Sequence[Node], deadline: float = 60.0) -> None:
    """Until every running node answers ``/readyz`` and the first running one lists all of
    them alive (polling a condition with a deadline)."""
    end = clock() + deadline
    live = [node for node in nodes if node.running]
    want = {node.node_id for node in live}
    while True:
        try:
            for node in live:
                http = Http(node.port)
                try:
                    status, _ = await http.request("GET", "/readyz")
                finally:
                    await http.close()
                if status != 200:
                    raise HttpError(f"{node.node_id} /readyz {status}")
            view = await _cluster_view(live[0])
            alive = {row["node_id"] for row in view["nodes"] if row["alive"]}
            if want <= alive:
                return
        except (HttpError, RuntimeError):
            pass
        if clock() > end:
            raise RuntimeError(f"nodes {sorted(want)} not all members within {deadline} s")
        await asyncio.sleep(0.05)


async def _create(http: Http, n: int, batch: int = 16) -> list[str]:
    """``n`` sessions created through ``http``'s node, which owns them."""
    ids: list[str] = []
    conns = [http] + [Http(http.port) for _ in range(min(batch, n) - 1)]
    try:

        async def one(conn: Http, count: int) -> None:
            for _ in range(count):
                body = await conn.json("POST", "/v1/sessions", {}, expect=201)
                ids.append(body["session_id"])

        share = [n // len(conns) + (1 if i < n % len(conns) else 0) for i in range(len(conns))]
        await asyncio.gather(*(one(c, k) for c, k in zip(conns, share, strict=True)))
    finally:
        for conn in conns[1:]:
            await conn.close()
    return ids


async def _owned(node: Node) -> dict[str, int]:
    view = await _cluster_view(node)
    return {row["node_id"]: row["owned_sessions"] for row in view["nodes"]}


def _path(sid: str) -> str:
    return f"/v1/sessions/{sid}/messages"


# --- rtt ------------------------------------------------------------------------------------------


async def _rtt(nodes: Sequence[Node], sizes: Sizes) -> dict[str, Any]:
    n1, n2 = nodes[0], nodes[1]
    direct, forwarded = Http(n1.port), Http(n2.port)
    try:
        sids = await _create(direct, sizes.rtt_sessions)
        owned = await _owned(n1)
        if owned.get("n1") != len(sids) or owned.get("n2"):
            raise RuntimeError(f"n1 should own the {len(sids)} sessions: {owned}")
        for sid in sids:  # warm: each session loaded on n1, both connections open
            for http in (direct, forwarded):
                status, body = await http.request("POST", _path(sid), MESSAGE)
                if status != 201:
                    raise RuntimeError(f"warm-up: {status} {body[:200]!r}")
        rounds: list[dict[str, list[float]]] = []
        for _ in range(sizes.rtt_rounds):
            times: dict[str, list[float]] = {"direct": [], "forwarded": []}
            for i in range(sizes.rtt_pairs):
                sid = sids[i % len(sids)]
                pair = (("direct", direct), ("forwarded", forwarded))
                for name, http in pair if i % 2 == 0 else pair[::-1]:
                    start = clock()
                    status, body = await http.request("POST", _path(sid), MESSAGE)
                    elapsed = clock() - start
                    if status != 201:
                        raise RuntimeError(f"{name}: {status} {body[:200]!r}")
                    times[name].append(elapsed)
            rounds.append(times)
        after = await _owned(n1)
    finally:
        await direct.close()
        await forwarded.close()
    return {"rounds": rounds, "owned_after": after}


def _rtt_rows(data: dict[str, Any], sizes: Sizes) -> list[Result]:
    rounds = data["rounds"]
    p50 = {k: [statistics.median(r[k]) for r in rounds] for k in ("direct", "forwarded")}
    everything = {k: [t for r in rounds for t in r[k]] for k in ("direct", "forwarded")}
    stats = {
        k: {
            "p50": percentile(v, 50),
            "p99": percentile(v, 99),
            "max": max(v),
            "n": len(v),
        }
        for k, v in everything.items()
    }
    common = {
        "rounds": len(rounds),
        "pairs_per_round": sizes.rtt_pairs,
        "sessions": sizes.rtt_sessions,
        "all_requests": stats,
        "owned_after": data["owned_after"],
    }
    note = (
        f"p99 over {stats['direct']['n']} requests: direct "
        f"{stats['direct']['p99'] * 1e3:.2f} ms, forwarded {stats['forwarded']['p99'] * 1e3:.2f} ms"
    )
    return [
        Result(
            key="cluster.rtt.direct",
            title="message round trip, direct (n1 owns), p50 per round",
            unit="s",
            samples=p50["direct"],
            higher_is_better=False,
            notes=note,
            details=common,
        ),
        Result(
            key="cluster.rtt.forwarded",
            title="message round trip, forwarded (n2 -> n1), p50 per round",
            unit="s",
            samples=p50["forwarded"],
            higher_is_better=False,
            baseline=Baseline("direct", p50["direct"]),
            notes=note,
            details=common,
        ),
        Result(
            key="cluster.rtt.forwarding_overhead",
            title="forwarding adds (p50 forwarded - p50 direct, per round)",
            unit="s",
            samples=[f - d for f, d in zip(p50["forwarded"], p50["direct"], strict=True)],
            higher_is_better=False,
            target=Target("<=", 1e-3, "<= 1 ms"),
            details={**common, "difference": True},
        ),
    ]


# --- failover -------------------------------------------------------------------------------------


async def _write_until_accepted(via: Node, sid: str, start: float, statuses: Counter[str]) -> float:
    """Seconds from ``start`` until ``via`` accepted a message for ``sid`` (retrying every
    :data:`POLL_INTERVAL`: the answer, not a sleep, ends the wait)."""
    http = Http(via.port)
    try:
        while True:
            try:
                status, _ = await asyncio.wait_for(http.request("POST", _path(sid), MESSAGE), 10)
            except (HttpError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
                await http.close()
            else:
                if status == 201:
                    return clock() - start
                statuses[str(status)] += 1
            if clock() - start > FAILOVER_DEADLINE:
                raise RuntimeError(f"{sid} not writable through {via.node_id} after the loss")
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        await http.close()


async def _lose_owner(
    nodes: Sequence[Node], victim: Node, signum: int, sessions: int
) -> dict[str, Any]:
    """One round: the victim owns fresh sessions, gets ``signum``; each session is written
    through a survivor until accepted; then the victim is back and a member again."""
    http = Http(victim.port)
    try:
        sids = await _create(http, sessions)
        for sid in sids:
            await http.json("POST", _path(sid), json.loads(MESSAGE), expect=201)
    finally:
        await http.close()
    survivors = [node for node in nodes if node is not victim]
    statuses: Counter[str] = Counter()
    start = clock()
    victim.signal(signum)
    times = await asyncio.gather(
        *(
            _write_until_accepted(survivors[i % len(survivors)], sid, start, statuses)
            for i, sid in enumerate(sids)
        )
    )
    exit_code = await asyncio.to_thread(victim.wait_exit)
    await asyncio.to_thread(victim.start)
    await _wait_members(nodes)
    return {
        "victim": victim.node_id,
        "seconds": max(times),
        "per_session": list(times),
        "refused": dict(statuses),
        "exit_code": exit_code,
    }


async def _failover(nodes: Sequence[Node], sizes: Sizes) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"kill": [], "term": []}
    plan = [("kill", signal.SIGKILL)] * sizes.kills + [("term", signal.SIGTERM)] * sizes.terms
    for index, (name, signum) in enumerate(plan):
        victim = nodes[index % len(nodes)]
        out[name].append(await _lose_owner(nodes, victim, signum, sizes.victim_sessions))
    return out


def _failover_rows(data: dict[str, list[dict[str, Any]]], sizes: Sizes) -> list[Result]:
    rows: list[Result] = []
    what = {
        "kill": ("SIGKILL of the owner", Target("<=", sizes.ttl + 2, "p99 <= TTL + 2 s")),
        "term": ("SIGTERM of the owner (hand-over)", Target("<=", 1.0, "p99 <= 1 s")),
    }
    for name, rounds in data.items():
        if not rounds:
            continue
        title, target = what[name]
        seconds = [r["seconds"] for r in rounds]
        sessions = [t for r in rounds for t in r["per_session"]]
        refused: Counter[str] = Counter()
        for r in rounds:
            refused.update(r["refused"])
        details = {
            "ttl": sizes.ttl,
            "rounds": rounds,
            "p50": percentile(seconds, 50),
            "p99": percentile(seconds, 99),
            "max": max(seconds),
            "per_session_p50": percentile(sessions, 50),
            "per_session_max": max(sessions),
            "refused_while_waiting": dict(refused),
            "poll_interval": POLL_INTERVAL,
        }
        note = (
            f"{len(seconds)} rounds x {sizes.victim_sessions} sessions, TTL {sizes.ttl:g} s; "
            f"p99 {details['p99']:.2f} s, max {details['max']:.2f} s"
        )
        rows.append(
            Result(
                key=f"cluster.failover.{name}",
                title=f"{title}: writable elsewhere (p50)",
                unit="s",
                samples=seconds,
                higher_is_better=False,
                notes=note,
                details=details,
            )
        )
        rows.append(
            Result(
                key=f"cluster.failover.{name}_p99",
                title=f"{title}: writable elsewhere (p99)",
                unit="s",
                samples=[details["p99"]],
                higher_is_better=False,
                target=target,
                notes=note,
                details={"p99_of": len(seconds), "max": details["max"]},
            )
        )
    return rows


# --- throughput -----------------------------------------------------------------------------------


async def _window(plan: Sequence[tuple[Sequence[Node], str]], seconds: float) -> dict[str, Any]:
    """Every client (its nodes, its session) in a closed loop for ``seconds``: a client with
    several nodes picks one at random per request."""
    done = [0] * len(plan)
    rng = random.Random(7)

    async def client(index: int, targets: Sequence[Node], sid: str, end: float) -> None:
        conns = {node.node_id: Http(node.port) for node in targets}
        try:
            while clock() < end:
                node = targets[0] if len(targets) == 1 else rng.choice(targets)
                status, body = await conns[node.node_id].request("POST", _path(sid), MESSAGE)
                if status != 201:
                    raise RuntimeError(f"throughput: {status} {body[:200]!r}")
                done[index] += 1
        finally:
            for conn in conns.values():
                await conn.close()

    start = clock()
    end = start + seconds
    await asyncio.gather(*(client(i, t, sid, end) for i, (t, sid) in enumerate(plan)))
    elapsed = clock() - start
    return {"rate": sum(done) / elapsed, "messages": sum(done), "seconds": elapsed}


async def _throughput(nodes: Sequence[Node], sizes: Sizes) -> dict[str, Any]:
    c = sizes.clients
    per = -(-c // len(nodes))
    owned: dict[str, list[str]] = {}
    for node in nodes:
        http = Http(node.port)
        try:
            owned[node.node_id] = await _create(http, c if node is nodes[0] else per)
        finally:
            await http.close()
    spread = [(node, sid) for i in range(per) for node in nodes for sid in [owned[node.node_id][i]]]
    spread = spread[:c]
    plans: dict[str, list[tuple[Sequence[Node], str]]] = {
        "one": [([nodes[0]], sid) for sid in owned["n1"][:c]],
        "three_owner": [([node], sid) for node, sid in spread],
        "three_any": [(nodes, sid) for _, sid in spread],
    }
    for plan in plans.values():  # warm: every session loaded, every connection opened
        await _window(plan, min(0.5, sizes.window))
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in plans}
    for index in range(sizes.tp_rounds):
        order = list(plans) if index % 2 == 0 else list(plans)[::-1]
        for name in order:
            rounds[name].append(await _window(plans[name], sizes.window))
    return {"rounds": rounds, "owned": await _owned(nodes[0])}


def _throughput_rows(data: dict[str, Any], sizes: Sizes) -> list[Result]:
    rounds = data["rounds"]
    rates = {name: [r["rate"] for r in rs] for name, rs in rounds.items()}
    common = {
        "clients": sizes.clients,
        "window_s": sizes.window,
        "rounds": rounds,
        "owned": data["owned"],
        "nproc": len(os.sched_getaffinity(0)),
    }
    titles = {
        "one": f"{sizes.clients} clients, 1 node (n1 owns all; 2 idle)",
        "three_owner": f"{sizes.clients} clients, 3 nodes, each request to the owner",
        "three_any": f"{sizes.clients} clients, 3 nodes, each request to a random node",
    }
    rows = []
    for name, title in titles.items():
        rows.append(
            Result(
                key=f"cluster.throughput.{name}",
                title=title,
                unit="msg/s",
                samples=rates[name],
                baseline=None if name == "one" else Baseline("1 node", rates["one"]),
                notes="load generator, 3 servers, Postgres and Redis share the machine's CPUs",
                details=common,
            )
        )
    return rows


# --- ownership ------------------------------------------------------------------------------------


def _new_id(template: str) -> str:
    """SQL for copy ``g``'s id: the template's prefix and ``g`` in hex (valid Crockford)."""
    keep = len(template) - 12
    return f"left('{template}', {keep}) || lpad(upper(to_hex(g)), 12, '0')"


async def _copy_owned(dsn: str, schema: str, template: str, node: str, rows: int) -> dict[str, Any]:
    """``rows`` copies of the template's head row, owned by ``node``; then the sizes."""
    async with _pg.connect("psycopg", dsn, schema) as conn:
        raw = conn.raw
        columns = [
            row[0]
            for row in await (
                await raw.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = 'sessions'"
                    " ORDER BY ordinal_position",
                    (schema,),
                )
            ).fetchall()
        ]
        exprs = [
            _new_id(template) if c == "session_id" else f"'{node}'" if c == "node" else f"t.{c}"
            for c in columns
        ]
        names = ", ".join(f'"{c}"' for c in columns)
        start = clock()
        await raw.execute(
            f"INSERT INTO sessions ({names}) SELECT {', '.join(exprs)}"
            f" FROM sessions AS t, generate_series(1, {rows}) AS g WHERE t.session_id = %s",
            (template,),
        )
        copy_seconds = clock() - start
        await raw.execute("VACUUM ANALYZE sessions")
        await raw.execute("VACUUM ANALYZE nodes")

        async def one(sql: str, *params: Any) -> Any:
            row = await (await raw.execute(sql, params)).fetchone()
            return row[0] if row else None

        return {
            "copy_seconds": copy_seconds,
            "owned_rows": await one("SELECT count(*) FROM sessions WHERE node = %s", node),
            "node_index_bytes": await one("SELECT pg_relation_size('sessions_node_live')"),
            "sessions_table_bytes": await one("SELECT pg_total_relation_size('sessions')"),
            "sessions_heap_bytes": await one("SELECT pg_relation_size('sessions')"),
            "node_column_avg_bytes": await one(
                "SELECT avg(pg_column_size(node))::float8 FROM sessions"
            ),
            "nodes_rows": await one("SELECT count(*) FROM nodes"),
            "nodes_table_bytes": await one("SELECT pg_total_relation_size('nodes')"),
        }


async def _index_size(dsn: str, schema: str) -> int:
    async with _pg.connect("psycopg", dsn, schema) as conn:
        row = await (
            await conn.raw.execute("SELECT pg_relation_size('sessions_node_live')")
        ).fetchone()
        return int(row[0]) if row else 0


async def _renewals(dsn: str, schema: str, seconds: float) -> dict[str, Any]:
    """Each node's ``heartbeat_at`` changes seen by polling ``nodes`` every 50 ms."""
    seen: dict[str, Any] = {}
    changes: Counter[str] = Counter()
    async with _pg.connect("psycopg", dsn, schema) as conn:
        start = clock()
        while clock() - start < seconds:
            for node_id, beat in await (
                await conn.raw.execute("SELECT node_id, heartbeat_at FROM nodes")
            ).fetchall():
                if node_id in seen and seen[node_id] != beat:
                    changes[node_id] += 1
                seen[node_id] = beat
            await asyncio.sleep(0.05)  # the sampling period of the poll, not a wait for an event
        elapsed = clock() - start
    rate = sum(changes.values()) / elapsed
    return {"per_node": dict(changes), "seconds": elapsed, "per_second": rate}


async def _timed_cluster_view(node: Node, repeats: int) -> list[float]:
    http = Http(node.port)
    out = []
    try:
        for _ in range(repeats + 1):
            start = clock()
            await http.json("GET", "/v1/cluster")
            out.append(clock() - start)
    finally:
        await http.close()
    return out[1:]


async def _ownership(run: Run, schema: str, nodes: Sequence[Node], sizes: Sizes) -> dict[str, Any]:
    n1, n3 = nodes[0], nodes[2]
    out: dict[str, Any] = {"nodes": len(nodes), "ttl": sizes.ttl}
    empty_index = await _index_size(run.dsn, schema)
    view_empty = await _timed_cluster_view(n1, 10)
    http = Http(n3.port)
    try:
        [template] = await _create(http, 1)
    finally:
        await http.close()
    rss_before_rows = n3.rss()
    out["rows"] = await _copy_owned(run.dsn, schema, template, n3.node_id, sizes.rows)
    out["rows"]["node_index_bytes_empty"] = empty_index
    out["view_seconds_empty"] = view_empty
    out["view_seconds_owned"] = await _timed_cluster_view(n1, 10)
    out["renewals"] = await _renewals(run.dsn, schema, sizes.renew_window)
    out["rss_owner_of_rows"] = {"before": rss_before_rows, "after": n3.rss()}
    http = Http(n1.port)
    try:
        before = n1.rss()
        start = clock()
        await _create(http, sizes.loaded)
        create_seconds = clock() - start
        after = n1.rss()
    finally:
        await http.close()
    out["loaded"] = {
        "sessions": sizes.loaded,
        "rss_before": before,
        "rss_after": after,
        "create_seconds": create_seconds,
        "idle_node_rss": nodes[1].rss(),
    }
    out["owned"] = await _owned(n1)
    return out


def _ownership_rows(data: dict[str, Any], sizes: Sizes) -> list[Result]:
    million = 1_000_000
    rows_info, loaded, renewals = data["rows"], data["loaded"], data["renewals"]
    owned = rows_info["owned_rows"]
    index_per = (rows_info["node_index_bytes"] - rows_info["node_index_bytes_empty"]) / owned
    per_loaded = (loaded["rss_after"] - loaded["rss_before"]) / loaded["sessions"]
    view = statistics.median(data["view_seconds_owned"])
    expected_renewals = data["nodes"] * 3 / sizes.ttl
    details = {**data, "extrapolated_to": million}
    return [
        Result(
            key="cluster.ownership.index_per_session",
            title=f"sessions_node_live index per owned session ({owned:,} owned)",
            unit="B",
            samples=[index_per],
            higher_is_better=False,
            notes=f"at 1M: {index_per * million / 2**20:.0f} MiB; nodes table "
            f"{rows_info['nodes_rows']} rows, {rows_info['nodes_table_bytes']:,} B",
            details=details,
        ),
        Result(
            key="cluster.ownership.renewals",
            title=f"lease renewals per second ({data['nodes']} nodes, TTL {sizes.ttl:g} s)",
            unit="1/s",
            samples=[renewals["per_second"]],
            higher_is_better=False,
            notes=f"expected nodes x 3 / TTL = {expected_renewals:g}/s, whatever the sessions",
            details={"expected": expected_renewals, **renewals},
        ),
        Result(
            key="cluster.ownership.cluster_view",
            title=f"GET /v1/cluster (counts owned sessions), {owned:,} owned",
            unit="s",
            samples=data["view_seconds_owned"],
            higher_is_better=False,
            notes=f"at 1M (linear): ~{view * million / owned * 1e3:.0f} ms",
            details={"empty": data["view_seconds_empty"]},
        ),
        Result(
            key="cluster.ownership.rss_per_loaded_session",
            title=f"node RSS per loaded session ({loaded['sessions']:,} created on it)",
            unit="B",
            samples=[per_loaded],
            higher_is_better=False,
            notes=f"at 1M loaded: {per_loaded * million / 2**30:.1f} GiB; owning rows not "
            "loaded costs the node nothing (see details)",
            details={
                "loaded": loaded,
                "rss_owner_of_rows": data["rss_owner_of_rows"],
                "rows": owned,
            },
        ),
    ]


# --- the run --------------------------------------------------------------------------------------


def measure(
    dsn: str, bus: str, sizes: Sizes, only: Sequence[str] = PARTS, src: Path | None = None
) -> tuple[list[Result], dict[str, Any]]:
    """The rows of every part in ``only`` and what they ran on; every schema and Redis key
    of the run is dropped at the end, also on failure."""
    for reason in (_pg.unavailable(dsn), redis_unavailable(bus)):
        if reason is not None:
            raise RuntimeError(f"bench_cluster cannot run: {reason}")
    run = Run(dsn=dsn, bus=bus, pg=_pg.PgRun(dsn), src=src)
    tree = (src or ROOT / "src").resolve()
    info: dict[str, Any] = {
        "nodes_src": str(tree),
        "nodes_git_commit": git_commit(tree),
        "server": _pg.server_facts(dsn),
        "dsn": _pg.redact(dsn),
        "redis": bus,
        "schema_prefix": run.pg.prefix,
        "sizes": asdict(sizes),
        "part_seconds": {},
    }
    results: list[Result] = []

    def part(name: str, body: Callable[[list[Node]], Coroutine[Any, Any, Any]]) -> Any:
        with run.cluster(name, sizes.ttl) as nodes:
            return run_async(lambda: body(nodes))

    def ownership() -> list[Result]:
        with run.cluster("ownership", sizes.ttl) as nodes:
            schema = nodes[0].command[nodes[0].command.index("--postgres-schema") + 1]
            return _ownership_rows(run_async(lambda: _ownership(run, schema, nodes, sizes)), sizes)

    parts: dict[str, Callable[[], list[Result]]] = {
        "rtt": lambda: _rtt_rows(part("rtt", lambda n: _rtt(n, sizes)), sizes),
        "failover": lambda: _failover_rows(part("failover", lambda n: _failover(n, sizes)), sizes),
        "throughput": lambda: _throughput_rows(
            part("throughput", lambda n: _throughput(n, sizes)), sizes
        ),
        "ownership": ownership,
    }
    try:
        for name in PARTS:
            if name in only:
                start = clock()
                results += parts[name]()
                info["part_seconds"][name] = clock() - start
    finally:
        info.update(run.drop_all())
    return results, info


def run(quick: bool = False) -> list[Result]:
    """For ``benchmarks.run --only cluster``: every part, servers from the environment."""
    results, _ = measure(_pg.dsn_from(None), redis_url(), QUICK if quick else FULL)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cluster", description=__doc__)
    parser.add_argument("--dsn", help=f"default: ${_pg.DSN_VARIABLE}, else {_pg.DEFAULT_DSN}")
    parser.add_argument("--redis", help="default: $JIDOKA_TEST_REDIS_URL, else local")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--kills", type=int, help="SIGKILL rounds (default 20)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--output", type=Path, help="the JSON file to write")
    parser.add_argument(
        "--src", type=Path, help="the src tree the nodes run (default: this checkout's)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.kills:
        sizes = replace(sizes, kills=args.kills, terms=args.kills)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # through measure's finally: schemas and keys dropped

    signal.signal(signal.SIGTERM, stop)
    start = clock()
    load_before = os.getloadavg()
    dsn, bus = _pg.dsn_from(args.dsn), args.redis or redis_url()
    results, info = measure(dsn, bus, sizes, args.only, src=args.src)
    from .run import RESULTS_DIR, _document  # here: run imports this module

    document = _document(
        results, {NAME: clock() - start}, quick=args.quick, argv=list(argv or sys.argv[1:])
    )
    document["suite"] = "jidoka cluster (issue 16)"
    document["cluster"] = info
    document["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS_DIR / f"cluster-{stamp}{'-quick' if args.quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"nodes run {info['nodes_src']} at {info['nodes_git_commit']}")
    print(f"load average before/after: {document['loadavg']}")
    print(format_table(results))
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
