"""Delivering run webhooks from the store's outbox (:class:`WebhookDeliverer`).

A run's end (``run_completed``) puts it in the outbox in the same transaction (see
:mod:`jidoka.store.runs`), so a crash cannot lose a webhook; this loop drains the outbox. It
*claims* what is due (``claim_webhooks`` moves the entries' due time to a lease, so another node
draining the same store skips them, and an entry whose deliverer died is due again when the
lease runs out), POSTs each one signed per Standard Webhooks, and records the outcome
(``record_webhook``): ``delivered`` on a 2xx; on anything else (another status, a redirect -- never
followed --, a network error, a time-out) ``pending`` again after an exponential back-off with
full jitter, until ``max_attempts`` have failed (``failed``). The ``webhook-id`` is the same on
every attempt, so a receiver can drop the duplicates that at-least-once delivery allows.

The URL is checked against the allow-list again when it is sent (the operator may have narrowed
it since the run was started): a refused URL fails at once, with the reason as its error.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import httpx
import msgspec

from .._version import __version__
from ..clock import Clock, SystemClock
from ..errors import InvalidArgument, RuntimeClosed
from ..llm.run_events import webhook_id as webhook_id_of
from ..store.runs import RunIndex, RunRecord, WebhookState
from .info import RunInfo, run_info
from .policy import WebhookPolicy
from .signing import webhook_headers

__all__ = ["WebhookDeliverer", "WebhookEvent", "WebhookStatistics"]

log = logging.getLogger("jidoka.webhooks")

#: Bytes of a receiver's answer read at most (to keep the connection reusable); the rest is
#: left unread and the connection closed.
MAX_RESPONSE_BYTES: Final = 65_536
#: Characters of a URL an outbox error quotes at most.
_URL_SHOWN: Final = 120


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a run's webhook: ``type`` ``run.completed``, when it was sent, and the run
    as ``get_run`` shows it."""

    type: str
    timestamp: datetime
    data: RunInfo


class WebhookStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Attempts since the deliverer started, by outcome (``retried``: failed, to be tried
    again), and deliveries in flight now."""

    delivered: int
    retried: int
    failed: int
    in_flight: int


class WebhookDeliverer:
    """The loop that sends the outbox's webhooks; ``async with`` starts and stops it.

    ``notify()`` wakes it at once (the runtime calls it when a run ends); otherwise it looks
    again at the earliest retry it scheduled, or after ``poll_interval`` seconds for entries
    other nodes wrote. At most ``concurrency`` deliveries are in flight; each attempt gets
    ``timeout`` seconds in all. Back-off before attempt ``n + 1``: a random time up to
    ``min(backoff_cap, backoff_base * 2 ** (n - 1))``. ``lease`` (seconds) must outlast an
    attempt: a claim older than that is another deliverer's to take.
    """

    def __init__(
        self,
        store: RunIndex,
        policy: WebhookPolicy,
        *,
        clock: Clock | None = None,
        on_outcome: Callable[[str], None] | None = None,
        max_attempts: int = 10,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        timeout: float = 10.0,
        lease: float = 60.0,
        concurrency: int = 8,
        poll_interval: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1 or concurrency < 1:
            raise ValueError("max_attempts and concurrency must be at least 1")
        if not 0 < backoff_base <= backoff_cap or not 0 < timeout < lease or poll_interval <= 0:
            raise ValueError(
                "webhook delivery needs 0 < backoff_base <= backoff_cap, 0 < timeout < lease "
                "and a positive poll_interval"
            )
        self._store = store
        self._policy = policy
        self._clock = clock or SystemClock()
        self._on_outcome = on_outcome
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.timeout = timeout
        self.lease = lease
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self._transport = transport
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._next_retry: float | None = None  # monotonic, the earliest retry scheduled here
        self._counts = {"delivered": 0, "retried": 0, "failed": 0}
        self._recorded = asyncio.Condition()
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> WebhookDeliverer:
        if self._closed or self._loop_task is not None:
            raise RuntimeClosed("a WebhookDeliverer can be started once")
        # Making the TLS context reads the CA bundle: not on the event loop.
        verify = await asyncio.to_thread(httpx.create_ssl_context)
        self._client = httpx.AsyncClient(
            verify=verify,
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=self.concurrency),
            headers={"user-agent": f"Jidoka/{__version__}"},
            transport=self._transport,
            trust_env=False,  # no proxy from the environment: the allow-list names the peer
        )
        self._loop_task = asyncio.get_running_loop().create_task(
            self._run(), name="jidoka:webhooks"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the loop and the deliveries in flight (their claims lapse after the lease, so
        they are sent again, by this node after a restart or by another), close the HTTP
        client. Idempotent; bounded by the attempt ``timeout``."""
        self._closed = True
        tasks = [t for t in (self._loop_task, *self._inflight) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout)
        finally:
            client, self._client = self._client, None
            if client is not None:
                await client.aclose()

    def notify(self) -> None:
        """Look at the outbox now (a run with a webhook just ended). Never waits."""
        self._wake.set()

    def statistics(self) -> WebhookStatistics:
        return WebhookStatistics(**self._counts, in_flight=len(self._inflight))

    async def wait_statistics(
        self, predicate: Callable[[WebhookStatistics], bool]
    ) -> WebhookStatistics:
        """Wait until ``predicate(statistics())`` holds (checked as each outcome is recorded;
        for tests and benchmarks: bound it with ``asyncio.timeout``)."""
        async with self._recorded:
            await self._recorded.wait_for(lambda: predicate(self.statistics()))
        return self.statistics()

    # --- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            free = self.concurrency - len(self._inflight)
            if free > 0:
                for record in await self._claim(free):
                    task = asyncio.get_running_loop().create_task(
                        self._deliver(record), name=f"jidoka:webhook:{record.run_id}"
                    )
                    self._inflight.add(task)
                    task.add_done_callback(self._delivered)
            if self._wake.is_set():
                continue
            if self._next_retry is not None and self._next_retry <= self._clock.monotonic():
                continue  # a retry fell due while the claim was being read: look again now
            delay = self.poll_interval
            if self._next_retry is not None and len(self._inflight) < self.concurrency:
                # A hair late, so the entry's due time (wall clock) has surely passed.
                delay = min(delay, max(0.0, self._next_retry - self._clock.monotonic()) + 0.002)
            await self._sleep(self._clock.monotonic() + delay)

    async def _sleep(self, deadline: float) -> None:
        """Until ``deadline`` on the clock (a fake clock's ``advance`` ends it too), or until
        :meth:`notify` or a finished delivery wakes the loop."""
        loop = asyncio.get_running_loop()
        sleeper = loop.create_task(self._clock.sleep_until(deadline))
        waker = loop.create_task(self._wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery failed unexpectedly", exc_info=task.exception())
        self._wake.set()  # a slot is free

    async def _claim(self, limit: int) -> list[RunRecord]:
        now = self._now()
        if self._next_retry is not None and self._next_retry <= self._clock.monotonic():
            self._next_retry = None
        try:
            return await self._store.claim_webhooks(
                now, now + timedelta(seconds=self.lease), limit=limit
            )
        except Exception as exc:  # the store is down: look again after the poll interval
            log.warning("webhook outbox: cannot claim entries: %s", exc)
            return []

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.time(), UTC)

    # --- one attempt ----------------------------------------------------------------------------

    async def _deliver(self, record: RunRecord) -> None:
        url = record.queued.get("webhook")
        attempts = record.webhook_attempts + 1
        try:
            self._policy.check(url)
        except InvalidArgument as exc:
            await self._record(record, "failed", attempts, None, _short(str(exc)))
            return
        assert isinstance(url, str)
        assert self._policy.key is not None
        done = record.completed or {}
        webhook_id = str(done.get("webhook_id") or webhook_id_of(record.run_id))
        timestamp = int(self._clock.time())
        try:
            body = msgspec.json.encode(
                WebhookEvent(
                    type="run.completed",
                    timestamp=datetime.fromtimestamp(timestamp, UTC),
                    data=run_info(record),
                )
            )
        except (msgspec.ValidationError, msgspec.EncodeError, TypeError, ValueError) as exc:
            # A stored run this version cannot read: retrying would not change it.
            unreadable = f"the run's stored data cannot be sent: {_short(str(exc), 200)}"
            await self._record(record, "failed", attempts, None, unreadable)
            return
        headers = webhook_headers(self._policy.key, webhook_id, timestamp, body)
        headers["content-type"] = "application/json"
        error = await self._post(url, body, headers)
        if error is None:
            await self._record(record, "delivered", attempts, None, None)
        elif attempts >= self.max_attempts:
            await self._record(record, "failed", attempts, None, error)
        else:
            delay = self._rng.uniform(
                0, min(self.backoff_cap, self.backoff_base * 2 ** (attempts - 1))
            )
            due = self._clock.monotonic() + delay
            self._next_retry = due if self._next_retry is None else min(self._next_retry, due)
            next_at = self._now() + timedelta(seconds=delay)
            await self._record(record, "pending", attempts, next_at, error)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """``None`` on a 2xx, else a short error naming the URL and what went wrong."""
        client = self._client
        if client is None:
            raise RuntimeClosed("the webhook deliverer is closed")
        shown = url if len(url) <= _URL_SHOWN else url[:_URL_SHOWN] + "..."
        try:
            async with asyncio.timeout(self.timeout):
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    status = response.status_code
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
        except TimeoutError:
            return f"POST {shown}: no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            return f"POST {shown}: {type(exc).__name__}: {_short(str(exc) or 'failed', 120)}"
        except OSError as exc:
            return f"POST {shown}: {_short(str(exc), 120)}"
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            return f"POST {shown}: answered {status}, a redirect (webhooks do not follow them)"
        return f"POST {shown}: answered {status}"

    async def _record(
        self,
        record: RunRecord,
        state: WebhookState,
        attempts: int,
        next_at: datetime | None,
        error: str | None,
    ) -> None:
        outcome = "retried" if state == "pending" else state
        self._counts[outcome] += 1
        if error is not None:
            # The log names the destination's origin only: a webhook URL's path or query may
            # carry the receiver's own secret, which the run's owner may see but a log reader not.
            url = str(record.queued.get("webhook"))
            text = _redact(error, url)
            log.info(
                "webhook of run %s: %s (attempt %d): %s", record.run_id, outcome, attempts, text
            )
        try:
            await self._store.record_webhook(
                record.run_id, state=state, attempts=attempts, next_at=next_at, error=error
            )
        except Exception as exc:  # the claim lapses and the entry is tried again
            log.warning("webhook of run %s: cannot record %s: %s", record.run_id, state, exc)
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        async with self._recorded:
            self._recorded.notify_all()


def _redact(error: str, url: str) -> str:
    """``error`` with ``url`` (whole or as shown) replaced by its origin."""
    try:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        origin = "<url>"
    for shown in (url, url[:_URL_SHOWN] + "...", repr(url)[:200]):
        error = error.replace(shown, origin + "/...")
    return error


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
