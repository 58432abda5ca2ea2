"""Metrics and spans, read back through the OpenTelemetry SDK's in-memory reader/exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import jidoka
from tests.helpers import drain, take


@pytest.fixture
def otel() -> Iterator[tuple[InMemoryMetricReader, InMemorySpanExporter, dict[str, Any]]]:
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    yield reader, exporter, {"meter_provider": meter_provider, "tracer_provider": tracer_provider}
    meter_provider.shutdown()
    tracer_provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def total(found: dict[str, list[Any]], name: str, **attributes: str) -> float:
    return sum(
        p.value
        for p in found.get(name, [])
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


async def test_metrics(
    otel: tuple[InMemoryMetricReader, InMemorySpanExporter, dict[str, Any]],
    clock: jidoka.FakeClock,
    project: Path,
) -> None:
    reader, _, providers = otel
    async with jidoka.Runtime(clock=clock, subscriber_queue_size=1, **providers) as rt:
        client = rt.client
        a = await client.create_session(project_root=str(project))
        b = await client.create_session(config={"max_restarts": 0})
        async with client.subscribe_to_all_sessions() as slow:
            await client.create_session()
            await client.create_session()
            await take(slow, 2)  # the queued one, then the dropped-marker
        for n in range(7):
            await client.send_message(a, "user", str(n))
        await client.add_file(a, "src/app.py")
        await client.build_context(a)  # a hit: add_file warmed the cache
        (project / "src" / "app.py").write_text("changed = True\n", encoding="utf-8")
        await client.build_context(a)  # a miss: the file changed
        await client.terminate_session(a)

        async def broken() -> None:
            raise RuntimeError("x")

        async with client.subscribe_to_session(b) as events:
            rt.start_worker(b, "broken", broken)
            assert (await drain(events))[-1].type == "session_terminated"
        found = points(reader)
    assert total(found, "jidoka.sessions.created") == 4
    assert total(found, "jidoka.sessions.terminated", reason="requested") == 1
    assert total(found, "jidoka.sessions.terminated", reason="error") == 1
    assert total(found, "jidoka.sessions.active") == 2
    assert total(found, "jidoka.messages.appended") == 7
    assert total(found, "jidoka.events.published") > 7
    assert total(found, "jidoka.events.dropped") >= 1
    assert total(found, "jidoka.cache.hits") == 1
    assert total(found, "jidoka.cache.misses") == 1
    created = found["jidoka.session.create.duration"]
    assert sum(p.count for p in created) == 4
    assert sum(p.count for p in found["jidoka.session.terminate.duration"]) == 2


async def test_spans_carry_session_id(
    otel: tuple[InMemoryMetricReader, InMemorySpanExporter, dict[str, Any]],
    clock: jidoka.FakeClock,
) -> None:
    _, exporter, providers = otel
    async with jidoka.Runtime(clock=clock, **providers) as rt:
        sid = await rt.client.create_session()
        await rt.client.send_message(sid, "user", "hi")
        with pytest.raises(jidoka.InvalidRole):
            await rt.client.send_message(sid, "robot", "hi")
        await rt.client.build_context(sid)
        await rt.client.terminate_session(sid)
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names == [
        "jidoka.create_session",
        "jidoka.send_message",
        "jidoka.send_message",
        "jidoka.build_context",
        "jidoka.terminate_session",
    ]
    assert all(s.attributes["jidoka.session_id"] == sid for s in spans)  # type: ignore[index]
    failed = spans[2]
    assert not failed.status.is_ok
    assert any(e.name == "exception" for e in failed.events)


async def test_no_sdk_means_no_cost_and_no_error(clock: jidoka.FakeClock) -> None:
    async with jidoka.Runtime(clock=clock) as rt:
        sid = await rt.client.create_session()
        await rt.client.send_message(sid, "user", "x")
        assert rt.counts().messages_appended == 1
