"""The runtime: wires settings, store, bus, cache, telemetry and the session manager together.

``async with Runtime() as rt:`` starts it and ``rt.client`` drives it; leaving the block stops
every session's workers, ends every subscription and closes the store. A runtime is used once:
it cannot be re-entered after it closed.

With ``node_id`` set, the runtime is one node of a cluster (:mod:`jidoka.cluster`): it joins
(a lease in the PostgreSQL store), owns the sessions it creates or takes, publishes events on
the Redis bus, and on the way out hands its sessions over (:meth:`Runtime.begin_leaving`) before
it leaves.
"""

from __future__ import annotations

import asyncio
import enum
import os
import secrets
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from .bus.base import EventBus
from .bus.memory import MemoryBus
from .cache import FileCache
from .client import Client
from .clock import Clock, SystemClock
from .config import POSTGRES_PREFIXES, REDIS_PREFIXES, Settings, describe_store, llm_defaults
from .errors import InvalidArgument, InvalidConfig, RuntimeClosed
from .events import Event
from .llm.agents import AgentPool
from .runs.policy import WebhookPolicy
from .runs.service import Runs
from .runs.sweep import RunSweep
from .session.context import TokenCounter, estimate_tokens
from .session.manager import SessionManager
from .session.session import SessionServices
from .session.supervisor import WorkerFactory
from .store.base import SessionStore
from .store.runs import RunIndex

if TYPE_CHECKING:
    from .cluster.node import ClusterNode
    from .datadir import DataDirLock
    from .runs.webhooks import WebhookDeliverer
from .telemetry import RuntimeCounts, Telemetry

__all__ = ["Runtime"]

_P = TypeVar("_P")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class Runtime:
    """Many isolated coding-assistant sessions in one process.

    ``data_dir`` and ``store`` are shortcuts for the settings of the same names; any other
    setting can be passed as a keyword (``max_sessions=...``). Without ``settings``, the
    ``JIDOKA_*`` environment variables fill in what the arguments leave out; with ``settings``,
    the environment is not read. ``store`` may also be a ready, opened
    :class:`~jidoka.store.base.SessionStore` instance (the caller then closes it). ``clock`` (a
    :class:`~jidoka.clock.FakeClock` in tests), ``token_counter`` and the OpenTelemetry
    providers are injected here rather than read from globals.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        store: str | SessionStore | None = None,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        token_counter: TokenCounter | None = None,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        environ: Mapping[str, str] | None = None,
        webhook_options: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        explicit: dict[str, Any] = {}
        if data_dir is not None:
            explicit["data_dir"] = os.fspath(data_dir)
        store_instance: SessionStore | None = None
        if isinstance(store, str):
            explicit["store"] = store
        elif store is not None:
            store_instance = store
            explicit["store"] = "sqlite" if store.durable else "memory"
        explicit.update(overrides)
        if settings is None:
            self.settings = Settings.from_env(**explicit)
        elif not isinstance(settings, Settings):
            raise InvalidConfig("settings must be a jidoka.Settings", field="settings")
        else:
            values = {name: getattr(settings, name) for name in Settings.__struct_fields__}
            self.settings = Settings.build({**values, **explicit})
        #: The webhook allow-list and signing key, checked now (``InvalidConfig`` if bad).
        self.webhook_policy = WebhookPolicy.from_settings(self.settings)
        #: Keyword arguments of the :class:`~jidoka.runs.webhooks.WebhookDeliverer` (back-off,
        #: attempts, time-outs), for tests and embedders; the defaults suit a server.
        self._webhook_options = dict(webhook_options or {})
        self._webhooks: WebhookDeliverer | None = None
        self._run_sweep: RunSweep | None = None
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._token_counter = token_counter or estimate_tokens
        self._meter_provider = meter_provider
        self._tracer_provider = tracer_provider
        #: Where the agents' providers read API keys (``llm_config.api_key_env``).
        self._environ = os.environ if environ is None else environ
        self._agents: AgentPool | None = None
        self._store_instance = store_instance
        self._state = _State.NEW
        self._store: SessionStore | None = None
        self._bus: EventBus | None = None
        self._cache: FileCache | None = None
        self._manager: SessionManager | None = None
        self._client: Client | None = None
        self._lock: DataDirLock | None = None
        self._node: ClusterNode | None = None
        self._leaving: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the store and start the manager (``async with`` calls this)."""
        if self._state is not _State.NEW:
            raise RuntimeClosed("a Runtime can be started once")
        store = self._store_instance or await self._open_store()
        try:
            node = self._cluster_node(store)
            bus = await self._open_bus(store)
        except BaseException:
            await self._close_store(store)
            raise
        cache = FileCache(
            max_bytes=self.settings.cache_max_bytes,
            max_session_bytes=self.settings.cache_session_max_bytes,
        )
        services = SessionServices(
            store=store,
            bus=bus,
            cache=cache,
            clock=self.clock,
            token_counter=self._token_counter,
            ownership=node,
        )
        telemetry = Telemetry(
            self.counts,
            meter_provider=self._meter_provider,
            tracer_provider=self._tracer_provider,
        )
        self._store, self._bus, self._cache = store, bus, cache
        self._manager = SessionManager(self.settings, services, telemetry)
        self._agents = AgentPool(
            self._manager,
            llm_defaults=llm_defaults(self.settings),
            token_counter=self._token_counter,
            telemetry=telemetry,
            environ=self._environ,
            max_queued_turns=self.settings.max_queued_turns_total,
        )
        self._runs = Runs(
            self._manager,
            self._agents,
            store,
            check_webhook=self._check_webhook,
            on_end=self._run_ended,
        )
        self._client = Client(self._manager, bus, self._agents, self._runs, node)
        self._node = node
        try:
            if node is not None:
                node.drop = self._manager.drop
                node.drop_all = self._manager.drop_all
                await node.start()
            await self._manager.start()
            # Runs a restart left queued or running: their sessions are loaded (and the runs
            # resumed or ended) in the background, at once and then now and then, so start-up
            # does not wait on them; expired idempotency keys go in the same pass.
            self._run_sweep = RunSweep(
                self._runs,
                store,
                self.clock,
                self._manager.background,
                interval=self.settings.run_sweep_seconds,
            )
            self._run_sweep.start(self.clock.monotonic())
            await self._start_webhooks(store, telemetry)
        except BaseException:
            try:
                if self._webhooks is not None:
                    await self._webhooks.aclose()
                if node is not None:
                    await node.aclose()
            finally:
                try:
                    await bus.aclose()
                finally:
                    await self._close_store(store)
            raise
        self._state = _State.RUNNING

    def _check_webhook(self, url: str, session_id: str | None) -> str:
        try:
            return self.webhook_policy.check(url)
        except InvalidArgument as exc:
            exc.session_id = session_id
            raise

    def _run_ended(self, run_id: str) -> None:
        """A run ended here: if it has a webhook, the deliverer sends it now (not at its next
        look at the outbox)."""
        if self._webhooks is not None:
            self._webhooks.notify()

    async def _start_webhooks(self, store: SessionStore, telemetry: Telemetry) -> None:
        """One deliverer drains the store's webhook outbox, if the store keeps one (a
        ``RunIndex``) and a secret is configured (without one no run can ask for a webhook,
        and what an earlier configuration left pending waits for a node that has one)."""

        if not isinstance(store, RunIndex) or self.webhook_policy.key is None:
            return
        from .runs.webhooks import WebhookDeliverer

        deliverer = WebhookDeliverer(
            store,
            self.webhook_policy,
            clock=self.clock,
            on_outcome=telemetry.record_webhook,
            **self._webhook_options,
        )
        self._webhooks = await deliverer.__aenter__()

    def _cluster_node(self, store: SessionStore) -> ClusterNode | None:
        """This runtime's node of a cluster, if ``node_id`` is set (its store must be the
        PostgreSQL store opened for that node)."""
        settings = self.settings
        if settings.node_id is None:
            return None
        from .cluster.node import ClusterNode
        from .store.postgres import PostgresStore

        if not isinstance(store, PostgresStore) or store.node_id != settings.node_id:
            raise InvalidConfig(
                f"node {settings.node_id!r} needs a PostgreSQL store opened for it", field="store"
            )
        return ClusterNode(
            store,
            node_id=settings.node_id,
            advertise_url=settings.advertise_url or "",
            ttl=settings.lease_ttl,
            clock=self.clock,
        )

    async def _open_bus(self, store: SessionStore) -> EventBus:
        """The configured bus: in memory, or on Redis (imported only when used)."""
        settings = self.settings
        reader = _reader(store, settings.subscriber_page_bytes)
        if not settings.bus.startswith(REDIS_PREFIXES):
            return MemoryBus(
                reader=reader,
                keeps_logs=store.durable,  # a durable store keeps an ended session's log
                queue_size=settings.subscriber_queue_size,
                now=self.clock.time,
            )
        try:
            from .bus.redis import RedisBus
        except ImportError as exc:
            raise InvalidConfig(
                f"the Redis bus needs the redis extra (pip install 'jidoka-core[redis]'): {exc}",
                field="bus",
            ) from None
        bus = RedisBus(
            settings.bus,
            # A bus outside a cluster still needs a name for its messages (its own are skipped).
            node_id=settings.node_id or f"solo-{secrets.token_hex(6)}",
            prefix=settings.bus_prefix,
            reader=reader,
            keeps_logs=store.durable,
            queue_size=settings.subscriber_queue_size,
            now=self.clock.time,
        )
        await bus.start()
        return bus

    async def _open_store(self) -> SessionStore:
        """Open the configured backend (imported only when used)."""
        settings = self.settings
        if settings.store == "memory":
            from .store.memory import MemoryStore

            return MemoryStore(max_events_per_session=settings.memory_max_events_per_session)
        if settings.store.startswith(POSTGRES_PREFIXES):
            return await _open_postgres(settings)
        from .datadir import DataDirLock
        from .store.sqlite import DATABASE_NAME, SqliteStore

        lock = DataDirLock(settings.data_dir)
        await asyncio.to_thread(lock.acquire)
        try:
            store = SqliteStore(
                os.path.join(settings.data_dir, DATABASE_NAME),
                durability=settings.durability,
                max_database_bytes=settings.max_database_bytes,
            )
            await store.open()
        except BaseException:
            await asyncio.to_thread(lock.release)
            raise
        self._lock = lock
        return store

    async def _close_store(self, store: SessionStore | None = None) -> None:
        store = store or self._store
        try:
            if store is not None and self._store_instance is None:
                await store.aclose()
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                await asyncio.to_thread(lock.release)

    async def aclose(self) -> None:
        """Stop every session's workers, end subscriptions, close the store. Idempotent."""
        if self._state is not _State.RUNNING:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        assert self._manager is not None
        assert self._bus is not None
        assert self._store is not None
        try:
            if self._run_sweep is not None:
                await self._run_sweep.aclose()
            if self._webhooks is not None:
                await self._webhooks.aclose()
            if self._node is not None:
                self.begin_leaving()
                assert self._leaving is not None
                await self._leaving
            await self._manager.aclose()
            if self._agents is not None:
                await self._agents.aclose()
        finally:
            try:
                if self._node is not None:
                    await self._node.aclose()
            finally:
                try:
                    await self._bus.aclose()
                finally:
                    await self._close_store()

    def begin_leaving(self) -> None:
        """A node of a cluster is told to stop (SIGTERM): hand its sessions over now -- those
        with no turn running at once, the others as their turns end, within
        ``shutdown_grace_seconds`` -- and take no more. Called by the server at the signal,
        before it waits for its connections; :meth:`aclose` calls it too. Idempotent; nothing
        on a runtime that is no node."""
        node, manager = self._node, self._manager
        if node is None or manager is None or self._leaving is not None:
            return
        node.leaving = True
        deadline = self.clock.monotonic() + self.settings.shutdown_grace_seconds
        self._leaving = asyncio.get_running_loop().create_task(
            manager.hand_over(self._turn_running, deadline), name="jidoka:hand-over"
        )

    def _turn_running(self, session_id: str) -> bool:
        agent = self._agents.get(session_id) if self._agents is not None else None
        return agent is not None and agent.busy

    # --- accessors ------------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The in-process client."""
        return self._running(self._client)

    @property
    def manager(self) -> SessionManager:
        """The session manager (for extensions; applications use :attr:`client`)."""
        return self._running(self._manager)

    @property
    def store(self) -> SessionStore:
        return self._running(self._store)

    @property
    def bus(self) -> EventBus:
        return self._running(self._bus)

    @property
    def node(self) -> ClusterNode | None:
        """This runtime's node of a cluster (``None``: a single node)."""
        self._running(self._manager)
        return self._node

    @property
    def webhooks(self) -> WebhookDeliverer | None:
        """The webhook deliverer (``None``: the store keeps no outbox, or no secret is set);
        the run machinery calls its ``notify()`` when a run with a webhook ends."""
        self._running(self._manager)
        return self._webhooks

    @property
    def cache(self) -> FileCache:
        return self._running(self._cache)

    def _running(self, part: _P | None) -> _P:
        if self._state is not _State.RUNNING or part is None:
            raise RuntimeClosed(f"the runtime is {self._state.value}; use `async with Runtime()`")
        return part

    def start_worker(self, session_id: str, name: str, factory: WorkerFactory) -> Any:
        """Run ``factory()`` as a supervised worker of the session (see ``Supervisor``)."""
        return self.manager.start_worker(session_id, name, factory)

    async def read_events(
        self, session_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """The session's stored events after ``after_seq`` (the log, not the projection)."""
        info = await self.manager.info(session_id)
        return await self.store.read_events(info.session_id, after_seq=after_seq, limit=limit)

    def counts(self) -> RuntimeCounts:
        """The integer counters behind the observable metrics."""
        manager, bus, cache, node = self._manager, self._bus, self._cache, self._node
        published = bus.published if bus is not None else 0
        lost = bus.lost if bus is not None else 0
        stats = cache.statistics() if cache is not None else None
        return RuntimeCounts(
            active_sessions=manager.live_count() if manager is not None else 0,
            messages_appended=manager.services.messages_appended if manager is not None else 0,
            events_published=published,
            events_dropped=lost,
            cache_hits=stats.hits if stats else 0,
            cache_misses=stats.misses if stats else 0,
            takeovers=node.takeovers if node is not None else 0,
            forwards=node.forwards if node is not None else 0,
            fence_refusals=node.fence_refusals if node is not None else 0,
            lease_lapses=node.membership.lapses if node is not None else 0,
        )

    def __repr__(self) -> str:
        return f"<Runtime {self._state.value} store={describe_store(self.settings)!r}>"


async def _open_postgres(settings: Settings) -> SessionStore:
    """The PostgreSQL store named by ``settings.store`` (imported only when used: it needs the
    ``postgres`` extra)."""
    try:
        from .store.postgres import PostgresStore
    except ImportError as exc:
        raise InvalidConfig(
            f"the PostgreSQL store needs the postgres extra (pip install 'jidoka-core[postgres]'):"
            f" {exc}",
            field="store",
        ) from None
    store = PostgresStore(
        settings.store,
        schema=settings.postgres_schema,
        pool_size=settings.postgres_pool_size,
        connect_timeout=settings.postgres_connect_timeout,
        node_id=settings.node_id,
    )
    await store.open()
    return store


def _reader(store: SessionStore, page_bytes: int) -> Any:
    """The bus's catch-up reads: at most ``limit`` events and about ``page_bytes`` of them, so a
    subscriber replaying a long log of large events holds one bounded page at a time."""

    async def read(session_id: str, after_seq: int, limit: int) -> list[Event]:
        return await store.read_events(
            session_id, after_seq=after_seq, limit=limit, max_bytes=page_bytes
        )

    return read
