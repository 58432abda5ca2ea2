"""Webhook delivery (issue 18, part 3) against a real receiver on loopback.

Runs are made the way the run machinery makes them: their events appended to the memory store,
whose runs index puts a run with a webhook in the outbox when its ``run_completed`` lands. The
deliverer drains it with a real HTTP client; signatures are checked with the reference library
(``standardwebhooks``). Time is a :class:`FakeClock` whose wall clock is now (so the reference
library's five-minute tolerance holds): a retry is due when the test advances the clock, and the
test then waits for the request or the outcome it expects, never a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import standardwebhooks

from jidoka import FakeClock, Runtime
from jidoka._version import __version__
from jidoka.events import Event, EventType
from jidoka.runs.policy import WebhookPolicy
from jidoka.runs.webhooks import WebhookDeliverer
from jidoka.server.metrics import PrometheusMetrics
from jidoka.store.base import SessionStore
from jidoka.store.runs import RunRecord
from tests.support.webhook_receiver import WebhookReceiver, free_port
from tests.unit.test_store_contract import STORES

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Outcomes:
    """What the deliverer reported (its ``on_outcome``), waitable."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, outcome: str) -> None:
        self.seen.append(outcome)
        self._changed.set()

    async def wait(self, outcome: str, count: int = 1, *, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while self.seen.count(outcome) < count:
                self._changed.clear()
                await self._changed.wait()


class Runs:
    """Sessions and runs written to a store as the run machinery writes them."""

    def __init__(self, store: SessionStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self._n = 0

    async def ended(
        self, webhook: str, *, webhook_id: str | None = "wh_1", status: str = "completed"
    ) -> str:
        """One session with one run that has ended; its run id."""
        self._n += 1
        sid = f"{self._n:026d}"
        run_id = f"run_{self._n}"
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        done: dict[str, Any] = {
            "run_id": run_id,
            "status": status,
            "message": {
                "id": "m1",
                "role": "assistant",
                "content": "done",
                "seq": 3,
                "timestamp": now.isoformat(),
            },
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            "error": None,
        }
        if webhook_id is not None:
            done["webhook_id"] = f"{webhook_id}_{self._n}"
        await self.store.append(
            sid,
            [
                Event(EventType.SESSION_CREATED, sid, 1, now, {"owner": None}),
                Event(
                    EventType.RUN_QUEUED,
                    sid,
                    2,
                    now,
                    {
                        "run_id": run_id,
                        "text": "hi",
                        "multitask": "reject",
                        "webhook": webhook,
                        "metadata": {"k": "v"},
                    },
                ),
                Event(EventType.RUN_STARTED, sid, 3, now, {"run_id": run_id}),
                Event(EventType.RUN_COMPLETED, sid, 4, now, done),
            ],
        )
        return run_id

    async def run(self, run_id: str) -> RunRecord:
        record = await self.store.get_run(run_id)
        assert record is not None
        return record


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=time.time())


@pytest.fixture
async def store(request: pytest.FixtureRequest, store_backend: str) -> AsyncIterator[SessionStore]:
    """The store under test (memory, SQLite, Postgres): the outbox is each one's own."""
    instance = await STORES[store_backend](request)
    yield instance
    await instance.aclose()


@pytest.fixture
def runs(store: SessionStore, clock: FakeClock) -> Runs:
    return Runs(store, clock)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as server:
        yield server


def clock_now(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock.time(), UTC)


def deliverer(
    store: SessionStore,
    clock: FakeClock,
    allow: tuple[str, ...],
    outcomes: Callable[[str], None],
    **options: Any,
) -> WebhookDeliverer:
    options = {"backoff_base": 1.0, "backoff_cap": 1.0, "timeout": 5.0, **options}
    return WebhookDeliverer(
        store, WebhookPolicy(allow, SECRET), clock=clock, on_outcome=outcomes, **options
    )


def verify(request_body: bytes, headers: dict[str, str]) -> Any:
    return standardwebhooks.Webhook(SECRET).verify(request_body, headers)


async def test_one_delivery_is_signed_per_standard_webhooks(
    store: SessionStore, clock: FakeClock, runs: Runs, receiver: WebhookReceiver
) -> None:
    outcomes = Outcomes()
    async with deliverer(store, clock, (receiver.origin,), outcomes) as hooks:
        run_id = await runs.ended(receiver.url("/hooks/run?x=1"))
        hooks.notify()
        [request] = await receiver.wait(1)
        await outcomes.wait("delivered")
    payload = verify(request.body, request.headers)
    assert payload["type"] == "run.completed"
    data = payload["data"]
    assert data["run_id"] == run_id
    assert data["status"] == "completed"
    assert data["message"]["content"] == "done"
    assert data["usage"]["total_tokens"] == 5
    assert data["metadata"] == {"k": "v"}
    assert request.path == "/hooks/run"
    assert request.headers["webhook-id"] == "wh_1_1"
    assert int(request.headers["webhook-timestamp"]) == int(clock.time())
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"Jidoka/{__version__}"
    record = await runs.run(run_id)
    assert (record.webhook_state, record.webhook_attempts, record.webhook_error) == (
        "delivered",
        1,
        None,
    )
    # A tampered body does not verify.
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verify(request.body.replace(b"done", b"dona"), request.headers)
    assert hooks.statistics().delivered == 1


async def test_500_then_200_is_retried_with_the_same_id(
    store: SessionStore, clock: FakeClock, runs: Runs, receiver: WebhookReceiver
) -> None:
    receiver.answers.extend([500])
    outcomes = Outcomes()
    async with deliverer(store, clock, (receiver.origin,), outcomes):
        run_id = await runs.ended(receiver.url(), webhook_id=None)
        clock.advance(1.5)  # no notify: the next poll (every second) finds it
        await receiver.wait(1)
        await outcomes.wait("retried")
        pending = await runs.run(run_id)
        assert pending.webhook_state == "pending"
        assert pending.webhook_attempts == 1
        assert pending.webhook_error is not None
        assert "answered 500" in pending.webhook_error
        assert receiver.url() in pending.webhook_error
        clock.advance(5)  # past the back-off (at most 1 s here)
        first, second = await receiver.wait(2)
        await outcomes.wait("delivered")
    for request in (first, second):
        verify(request.body, request.headers)
    # Without a webhook_id in run_completed, the run id is the webhook's id; the same each time.
    assert (
        first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_{run_id}"
    )  # made from the run id when its event has none
    assert int(second.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"]) + 5
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    record = await runs.run(run_id)
    assert (record.webhook_state, record.webhook_attempts, record.webhook_error) == (
        "delivered",
        2,
        None,
    )


async def test_receiver_down_for_a_while_gets_it_later(
    store: SessionStore, clock: FakeClock, runs: Runs
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    outcomes = Outcomes()
    async with deliverer(store, clock, (f"http://127.0.0.1:{port}/hooks/",), outcomes) as hooks:
        run_id = await runs.ended(url)
        hooks.notify()
        await outcomes.wait("retried", 1)
        clock.advance(5)
        await outcomes.wait("retried", 2)
        record = await runs.run(run_id)
        assert record.webhook_state == "pending"
        assert record.webhook_attempts == 2
        assert record.webhook_error is not None
        assert url in record.webhook_error
        assert "ConnectError" in record.webhook_error
        receiver = await WebhookReceiver().start(port)
        try:
            clock.advance(5)
            [request] = await receiver.wait(1)
            await outcomes.wait("delivered")
        finally:
            await receiver.stop()
    verify(request.body, request.headers)
    record = await runs.run(run_id)
    assert (record.webhook_state, record.webhook_attempts) == ("delivered", 3)


async def test_max_attempts_fails_visibly_and_is_counted(
    store: SessionStore, clock: FakeClock, runs: Runs, receiver: WebhookReceiver
) -> None:
    receiver.answers.extend([500, 502, 503])
    outcomes = Outcomes()
    async with deliverer(store, clock, (receiver.origin,), outcomes, max_attempts=3) as hooks:
        run_id = await runs.ended(receiver.url())
        hooks.notify()
        for attempt in (1, 2):
            await outcomes.wait("retried", attempt)
            clock.advance(5)
        await outcomes.wait("failed")
        assert hooks.statistics().failed == 1
    # Given up: the outbox no longer offers it, however late it is.
    assert await store.claim_webhooks(datetime.max.replace(tzinfo=UTC), clock_now(clock)) == []
    assert len(receiver.requests) == 3
    record = await runs.run(run_id)
    assert record.webhook_state == "failed"
    assert record.webhook_attempts == 3
    assert record.webhook_error == f"POST {receiver.url()}: answered 503"
    assert outcomes.seen == ["retried", "retried", "failed"]


async def test_the_allow_list_is_checked_again_at_delivery(
    store: SessionStore, clock: FakeClock, runs: Runs, receiver: WebhookReceiver
) -> None:
    """The run was started while the destination was allowed; the operator has narrowed the
    list since: the webhook fails at once, with the reason, and nothing is sent."""
    outcomes = Outcomes()
    narrowed = (f"{receiver.origin}/other/",)
    async with deliverer(store, clock, narrowed, outcomes) as hooks:
        run_id = await runs.ended(receiver.url("/hooks"))
        hooks.notify()
        await outcomes.wait("failed")
    record = await runs.run(run_id)
    assert record.webhook_state == "failed"
    assert record.webhook_attempts == 1
    assert record.webhook_error is not None
    assert "is not allowed" in record.webhook_error
    assert receiver.url("/hooks") in record.webhook_error
    assert receiver.requests == []


async def test_redirects_are_not_followed(
    store: SessionStore, clock: FakeClock, runs: Runs, receiver: WebhookReceiver
) -> None:
    receiver.answers.extend(["redirect"])
    outcomes = Outcomes()
    async with deliverer(store, clock, (receiver.origin,), outcomes, max_attempts=1) as hooks:
        run_id = await runs.ended(receiver.url())
        hooks.notify()
        await outcomes.wait("failed")
    assert [r.path for r in receiver.requests] == ["/hooks"]
    record = await runs.run(run_id)
    assert record.webhook_error is not None
    assert "307" in record.webhook_error
    assert "redirect" in record.webhook_error


async def test_two_deliverers_on_one_store_send_each_webhook_once(
    store: SessionStore, clock: FakeClock, runs: Runs, receiver: WebhookReceiver
) -> None:
    """Two nodes draining one outbox: the claim's lease gives each entry to one of them."""
    outcomes = Outcomes()
    count = 40
    async with (
        deliverer(store, clock, (receiver.origin,), outcomes, concurrency=4) as one,
        deliverer(store, clock, (receiver.origin,), outcomes, concurrency=4) as two,
    ):
        ids = [await runs.ended(receiver.url()) for _ in range(count)]
        one.notify()
        two.notify()
        await receiver.wait(count)
        await outcomes.wait("delivered", count)
        # How the 40 split between the two depends on timing; that none is sent twice does not.
    sent = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(sent) == count
    assert len(set(sent)) == count
    assert one.statistics().delivered + two.statistics().delivered == count
    for run_id in ids:
        assert (await runs.run(run_id)).webhook_state == "delivered"


async def test_a_deliverer_that_stops_mid_request_leaves_it_to_the_next(
    store: SessionStore, clock: FakeClock, runs: Runs, receiver: WebhookReceiver
) -> None:
    """Closing the deliverer while a receiver hangs is prompt; the claim lapses after the
    lease and another deliverer (this node restarted, or another) sends it."""
    receiver.answers.extend(["hang"])
    outcomes = Outcomes()
    first = deliverer(store, clock, (receiver.origin,), outcomes, lease=30.0)
    async with first:
        run_id = await runs.ended(receiver.url())
        first.notify()
        await receiver.wait(1)
    assert first.statistics().in_flight == 0
    assert outcomes.seen == []
    record = await runs.run(run_id)
    assert (record.webhook_state, record.webhook_attempts) == ("pending", 0)
    # Still claimed by the first: not due now.
    assert await store.claim_webhooks(clock_now(clock), clock_now(clock)) == []
    async with deliverer(store, clock, (receiver.origin,), outcomes, lease=30.0) as second:
        clock.advance(31)
        second.notify()
        requests = await receiver.wait(2)
        await outcomes.wait("delivered")
    assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"]


@pytest.fixture
def metrics() -> Iterator[PrometheusMetrics]:
    """Made outside the event loop: the SDK's set-up takes locks and reads the environment."""
    instance = PrometheusMetrics()
    yield instance
    instance.shutdown()


async def test_the_runtime_runs_a_deliverer_and_counts_outcomes(
    clock: FakeClock, metrics: PrometheusMetrics
) -> None:
    async with WebhookReceiver(500) as receiver:
        rt = Runtime(
            webhook_allow=(receiver.origin,),
            webhook_secret=SECRET,
            clock=clock,
            meter_provider=metrics.meter_provider,
            webhook_options={"max_attempts": 2, "backoff_base": 0.5, "backoff_cap": 0.5},
        )
        async with rt:
            hooks = rt.webhooks
            assert hooks is not None
            store = rt.store
            run_id = await Runs(store, clock).ended(receiver.url())
            hooks.notify()
            async with asyncio.timeout(10):
                await hooks.wait_statistics(lambda s: s.retried == 1)
                clock.advance(1)
                await hooks.wait_statistics(lambda s: s.delivered == 1)
            record = await store.get_run(run_id)
            assert len(receiver.requests) == 2
    assert record is not None
    assert record.webhook_state == "delivered"
    text = (await asyncio.to_thread(metrics.render)).decode()
    assert 'jidoka_webhook_deliveries_total{outcome="retried"} 1.0' in text
    assert 'jidoka_webhook_deliveries_total{outcome="delivered"} 1.0' in text


def test_body_is_run_info_json() -> None:
    """The body is the public RunInfo under ``data``, as msgspec encodes it."""
    from jidoka.runs.webhooks import WebhookEvent

    event = msgspec.json.decode(
        b'{"type": "run.completed", "timestamp": "2026-01-01T00:00:00Z", "data": {'
        b'"run_id": "r", "session_id": "s", "status": "completed", "text": "t",'
        b' "multitask": "reject", "created_at": "2026-01-01T00:00:00Z"}}',
        type=WebhookEvent,
    )
    assert event.data.run_id == "r"


async def test_the_log_names_the_origin_not_the_url(
    store: SessionStore,
    clock: FakeClock,
    runs: Runs,
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A webhook URL may carry the receiver's own token: the run's owner sees it in the
    outbox's error, the server's log does not."""
    receiver.answers.extend([503])
    outcomes = Outcomes()
    url = receiver.url("/hooks/T0KEN-in-the-path?key=s3cr3t")
    with caplog.at_level(logging.INFO, logger="jidoka.webhooks"):
        async with deliverer(store, clock, (receiver.origin,), outcomes) as hooks:
            run_id = await runs.ended(url)
            hooks.notify()
            await outcomes.wait("retried")
    record = await runs.run(run_id)
    assert record.webhook_error == f"POST {url}: answered 503"
    logged = [r.getMessage() for r in caplog.records if r.name == "jidoka.webhooks"]
    assert logged
    assert f"{receiver.origin}/..." in logged[0]
    assert "answered 503" in logged[0]
    assert not any("s3cr3t" in line or "T0KEN" in line for line in logged)


async def test_a_stored_run_that_cannot_be_sent_fails_at_once(
    store: SessionStore, clock: FakeClock, receiver: WebhookReceiver
) -> None:
    """A run whose stored result this version cannot read is not retried for ever."""
    sid, now = "Z" * 26, datetime.fromtimestamp(clock.time(), UTC)
    done = {
        "run_id": "r",
        "status": "completed",
        "message": {"bogus": 1},
        "usage": None,
        "error": None,
    }
    await store.append(
        sid,
        [
            Event(EventType.SESSION_CREATED, sid, 1, now, {"owner": None}),
            Event(
                EventType.RUN_QUEUED,
                sid,
                2,
                now,
                {"run_id": "r", "text": "t", "multitask": "reject", "webhook": receiver.url()},
            ),
            Event(EventType.RUN_COMPLETED, sid, 3, now, done),
        ],
    )
    outcomes = Outcomes()
    async with deliverer(store, clock, (receiver.origin,), outcomes) as hooks:
        hooks.notify()
        await outcomes.wait("failed")
    record = await store.get_run("r")
    assert record is not None
    assert record.webhook_state == "failed"
    assert record.webhook_error is not None
    assert "cannot be sent" in record.webhook_error
    assert receiver.requests == []
