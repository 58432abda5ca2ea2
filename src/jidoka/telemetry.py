"""OpenTelemetry metrics and spans for the runtime.

Only the OpenTelemetry *API* is a dependency: without an SDK configured, every instrument is a
no-op. Install ``opentelemetry-sdk`` and pass ``meter_provider=`` / ``tracer_provider=`` to
:class:`~jidoka.Runtime` (or set the global providers) to collect them.

Counts that change on the hot path (messages appended, events published or dropped, cache hits
and misses) are kept as plain integers by the parts that own them and *observed* when the SDK
collects, so appending a message costs no metric call at all. Rare operations (create,
terminate, worker restarts) record directly, with their latency as histograms.

Metric names (Prometheus renders dots as underscores and adds ``_total`` to counters):

=====================================  ==========================================================
``jidoka.sessions.created``            sessions created
``jidoka.sessions.terminated``         sessions terminated, by ``reason``
``jidoka.sessions.active``             live sessions now (any status but terminated)
``jidoka.session.create.duration``     seconds to create a session
``jidoka.session.terminate.duration``  seconds to terminate one (tasks awaited)
``jidoka.messages.appended``           conversation messages appended
``jidoka.events.published``            events published to the bus
``jidoka.events.dropped``              events a slow subscriber never got (see the bus policy)
``jidoka.cache.hits`` / ``.misses``    file cache look-ups
``jidoka.workers.restarted``           supervised worker restarts
``jidoka.llm.turns``                   agent turns, by ``outcome``
``jidoka.llm.tokens``                  tokens the agents used, by ``kind`` (prompt, completion)
``jidoka.cluster.takeovers``           sessions this node took from another (lost) node
``jidoka.cluster.forwards``            commands this node sent on to a session's owner
``jidoka.cluster.fence_refusals``      appends refused because another node owns the session
``jidoka.cluster.lease_lapses``        times this node's lease could not be renewed in time
``jidoka.webhook.deliveries``          webhook attempts, by ``outcome`` (delivered, retried,
                                       failed)
=====================================  ==========================================================

On a node of a cluster, ``jidoka.sessions.active`` counts the sessions this node owns (holds).

Spans are named ``jidoka.<operation>`` and carry the ``jidoka.session_id`` attribute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, TracerProvider

from ._version import __version__

__all__ = ["RuntimeCounts", "Telemetry"]

SESSION_ID_ATTRIBUTE = "jidoka.session_id"


class RuntimeCounts(NamedTuple):
    """The counts the runtime keeps as integers, read when metrics are collected."""

    active_sessions: int
    messages_appended: int
    events_published: int
    events_dropped: int
    cache_hits: int
    cache_misses: int
    takeovers: int = 0
    forwards: int = 0
    fence_refusals: int = 0
    lease_lapses: int = 0


class Telemetry:
    """The runtime's instruments and tracer."""

    def __init__(
        self,
        counts: Callable[[], RuntimeCounts],
        *,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("jidoka", __version__)
        tracing = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer = tracing.get_tracer("jidoka", __version__)
        self._tracing = tracer_provider is not None
        self._next_probe = 0.0
        self._counts = counts
        self.sessions_created = meter.create_counter(
            "jidoka.sessions.created", unit="{session}", description="Sessions created"
        )
        self.sessions_terminated = meter.create_counter(
            "jidoka.sessions.terminated", unit="{session}", description="Sessions terminated"
        )
        self.create_duration = meter.create_histogram(
            "jidoka.session.create.duration", unit="s", description="Time to create a session"
        )
        self.terminate_duration = meter.create_histogram(
            "jidoka.session.terminate.duration", unit="s", description="Time to terminate one"
        )
        self.llm_tokens = meter.create_counter(
            "jidoka.llm.tokens", unit="{token}", description="Tokens the agents used, by kind"
        )
        self.llm_turns = meter.create_counter(
            "jidoka.llm.turns", unit="{turn}", description="Agent turns, by outcome"
        )
        self.workers_restarted = meter.create_counter(
            "jidoka.workers.restarted", unit="{restart}", description="Worker restarts"
        )
        self.webhook_deliveries = meter.create_counter(
            "jidoka.webhook.deliveries", unit="{attempt}", description="Webhook attempts"
        )
        meter.create_observable_up_down_counter(
            "jidoka.sessions.active",
            callbacks=[self._observe("active_sessions")],
            unit="{session}",
            description="Live sessions",
        )
        for name, field, description in (
            ("jidoka.messages.appended", "messages_appended", "Conversation messages appended"),
            ("jidoka.events.published", "events_published", "Events published"),
            ("jidoka.events.dropped", "events_dropped", "Events a slow subscriber never got"),
            ("jidoka.cache.hits", "cache_hits", "File cache hits"),
            ("jidoka.cache.misses", "cache_misses", "File cache misses"),
            ("jidoka.cluster.takeovers", "takeovers", "Sessions taken from a lost node"),
            ("jidoka.cluster.forwards", "forwards", "Commands forwarded to the owner node"),
            ("jidoka.cluster.fence_refusals", "fence_refusals", "Appends refused by the fence"),
            ("jidoka.cluster.lease_lapses", "lease_lapses", "Lease renewals missed in time"),
        ):
            meter.create_observable_counter(
                name, callbacks=[self._observe(field)], description=description
            )

    def record_turn(self, prompt_tokens: int, completion_tokens: int, outcome: str) -> None:
        """One agent turn ended (``completed``, ``interrupted`` or ``failed``)."""
        self.llm_turns.add(1, {"outcome": outcome})
        if prompt_tokens:
            self.llm_tokens.add(prompt_tokens, {"kind": "prompt"})
        if completion_tokens:
            self.llm_tokens.add(completion_tokens, {"kind": "completion"})

    def record_webhook(self, outcome: str) -> None:
        """One webhook attempt ended: ``delivered``, ``retried`` (to be tried again) or
        ``failed`` (given up, or refused by the allow-list)."""
        self.webhook_deliveries.add(1, {"outcome": outcome})

    def _observe(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(getattr(self._counts(), field))

        return callback

    def span(
        self, operation: str, session_id: str | None = None
    ) -> AbstractContextManager[Span | None]:
        """A span named ``jidoka.<operation>``; exceptions are recorded on it and re-raised.

        While no tracer provider is configured (none passed in, none set globally), this is a
        shared no-op context: an un-traced ``send_message`` then costs no tracing work at all,
        which is about half of its cost otherwise. A global provider set later is noticed
        within a second.
        """
        if not self._tracing:
            # Asking OpenTelemetry costs an environment lookup; ask at most once a second.
            now = time.monotonic()
            if now < self._next_probe:
                return _NO_SPAN
            self._next_probe = now + 1.0
            if not _global_tracing_configured():
                return _NO_SPAN
            self._tracing = True
        attributes = {SESSION_ID_ATTRIBUTE: session_id} if session_id else None
        return self.tracer.start_as_current_span(f"jidoka.{operation}", attributes=attributes)


_NO_SPAN: AbstractContextManager[None] = nullcontext()


def _global_tracing_configured() -> bool:
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)
