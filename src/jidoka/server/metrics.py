"""``/metrics``: the runtime's OpenTelemetry metrics in the Prometheus text format, and the
HTTP server's own measurement (:class:`HttpMetrics`).

The runtime records with the OpenTelemetry API only; the server gives it a ``MeterProvider``
whose reader this module collects on each scrape and renders with ``prometheus_client`` into a
registry of its own (never the process-global one, so two servers in one process do not clash).
Names follow the usual mapping: ``jidoka.sessions.created`` becomes ``jidoka_sessions_created``
(counters get ``_total``), seconds histograms get ``_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from .middleware import StatusWatch, response_status
from .router import route_template

__all__ = ["HttpMetrics", "PrometheusMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Buckets for durations in seconds: 100 µs to 10 s (the SDK's defaults suit milliseconds).
SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip


def _name(otel_name: str, unit: str) -> str:
    name = otel_name.replace(".", "_").replace("-", "_")
    if unit == "s" and not name.endswith("_seconds"):
        name += "_seconds"
    return name


def _labels(attributes: Any) -> dict[str, str]:
    return {str(k).replace(".", "_"): str(v) for k, v in (attributes or {}).items()}


class _OtelCollector(Collector):
    def __init__(self, reader: InMemoryMetricReader) -> None:
        self._reader = reader

    def collect(self) -> Iterator[Metric]:
        data = self._reader.get_metrics_data()
        if data is None:
            return
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    yield from self._convert(metric)

    def _convert(self, metric: Any) -> Iterator[Metric]:
        name = _name(metric.name, metric.unit or "")
        points = list(metric.data.data_points)
        keys = sorted({k for p in points for k in _labels(p.attributes)})
        doc = metric.description or metric.name
        if isinstance(metric.data, Sum) and metric.data.is_monotonic:
            counter = CounterMetricFamily(name, doc, labels=keys)
            for p in points:
                labels = _labels(p.attributes)
                counter.add_metric([labels.get(k, "") for k in keys], p.value)
            yield counter
        elif isinstance(metric.data, Sum | Gauge):
            gauge = GaugeMetricFamily(name, doc, labels=keys)
            for p in points:
                labels = _labels(p.attributes)
                gauge.add_metric([labels.get(k, "") for k in keys], p.value)
            yield gauge
        elif isinstance(metric.data, Histogram):
            histogram = HistogramMetricFamily(name, doc, labels=keys)
            for p in points:
                labels = _labels(p.attributes)
                cumulative, buckets = 0, []
                for bound, count in zip(
                    [*p.explicit_bounds, float("inf")], p.bucket_counts, strict=False
                ):
                    cumulative += count
                    buckets.append((_le(bound), cumulative))
                histogram.add_metric([labels.get(k, "") for k in keys], buckets, p.sum)
            yield histogram


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class PrometheusMetrics:
    """A meter provider for the runtime, and the scrape of what it recorded."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        seconds = View(
            instrument_type=HistogramInstrument,
            instrument_unit="s",
            aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
        )
        self.meter_provider = MeterProvider(metric_readers=[self.reader], views=[seconds])
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_OtelCollector(self.reader))

    def render(self) -> bytes:
        """Blocking-free but not free: call it off the event loop for big registries."""
        return bytes(generate_latest(self._registry))

    def shutdown(self) -> None:
        self.meter_provider.shutdown()


#: The methods OpenTelemetry's HTTP conventions name; any other is recorded as ``_OTHER``, so a
#: client inventing methods cannot grow the label set.
_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


class HttpMetrics:
    """``http.server.request.duration`` (seconds) per request, with OpenTelemetry's semantic
    convention attributes: ``http.request.method``, ``http.route`` (the route's template, never
    an id; ``unmatched`` for a 404), ``http.response.status_code`` and ``url.scheme``. On
    ``/metrics`` that is ``http_server_request_duration_seconds`` (its ``_count`` counts the
    requests). Written here rather than taken from ``opentelemetry-instrumentation-asgi``,
    which also opens a span per request and wraps every message sent: this records one
    histogram point and nothing else.

    ``meter_provider``: the server's (``None``: the global one, a no-op unless set)."""

    def __init__(self, app: ASGIApp, *, meter_provider: Any = None) -> None:
        self.app = app
        provider = meter_provider or otel_metrics.get_meter_provider()
        self._duration = provider.get_meter("jidoka.server").create_histogram(
            "http.server.request.duration", unit="s", description="Duration of HTTP requests"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            method = scope["method"]
            attributes: dict[str, str | int] = {
                "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
                "http.route": route_template(scope),
                "http.response.status_code": response_status(scope, watch.status),
                "url.scheme": scope.get("scheme", "http"),
            }
            self._duration.record(time.perf_counter() - started, attributes)
