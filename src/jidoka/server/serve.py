"""``jidoka serve``: a runtime and the app on uvicorn, with a graceful shutdown.

uvicorn serves the app (a plain ``uvicorn.Server``); the app's ASGI lifespan opens the runtime
before the first connection and closes it after the last (:mod:`jidoka.server.lifespan`). On
SIGTERM or Ctrl-C the server stops accepting connections, ends every event stream with a final
``shutdown`` event and every WebSocket with close code 1001 (the lifespan's signal hook), lets
in-flight requests finish (at most ``shutdown_timeout`` seconds), closes the runtime -- which
flushes the store -- and returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import TextIO

import msgspec
import uvicorn

from .._version import __version__
from ..config import Settings, describe_bus, describe_store
from ..errors import JidokaError
from ..runtime import Runtime
from .app import create_app
from .config import ServerConfig
from .lifespan import ServerLifespan, lifespan_of
from .metrics import PrometheusMetrics
from .middleware import RequestIdFilter
from .protocol import protocol_class

__all__ = ["TOKEN_FILE", "exit_zero_after_signals", "run_server", "serve"]

logger = logging.getLogger("jidoka.server")
#: Where a generated token is kept (in the data directory), so a restart keeps it.
TOKEN_FILE = "server-token"
LOCAL_PRINCIPAL = "local"
#: File descriptors wanted besides one per connection (store, logs, listening socket, spare).
SPARE_FDS = 128


@contextlib.contextmanager
def exit_zero_after_signals() -> Generator[None, None, None]:
    """uvicorn re-raises the signal that stopped it, into the handlers it found, once its
    shutdown is done (so that a supervisor sees "killed by SIGTERM"). A server that shut down
    cleanly should say so with exit code 0: the handlers it finds here take the re-raised
    signal and do nothing. uvicorn installs its own while it serves, and the app's lifespan
    chains those (see :mod:`jidoka.server.lifespan`)."""
    if sys.platform == "win32":  # pragma: no cover
        yield
        return
    found = {sig: signal.signal(sig, _after_shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler)


def _after_shutdown(signum: int, frame: FrameType | None) -> None:
    """The signal uvicorn re-raises after its shutdown: already handled."""


class _QuietStartupFailure(logging.Filter):
    """Drops uvicorn's report of a failed startup (a traceback) when the app's lifespan says
    why: ``jidoka serve`` prints that reason as its one error line instead."""

    def __init__(self, lifespan: ServerLifespan) -> None:
        super().__init__()
        self.lifespan = lifespan

    def filter(self, record: logging.LogRecord) -> bool:
        return self.lifespan.startup_error is None or record.levelno < logging.ERROR


def _token(config: ServerConfig, data_dir: str) -> tuple[ServerConfig, str | None]:
    """Tokens as configured; with none (and auth on), one kept in the data directory."""
    if config.tokens or not config.auth_enabled:
        return config, None
    path = Path(data_dir, TOKEN_FILE)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if len(token) < 16:
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
    values = {name: getattr(config, name) for name in ServerConfig.__struct_fields__}
    values["tokens"] = {token: LOCAL_PRINCIPAL}
    return ServerConfig(**values), token


def _raise_fd_limit(max_connections: int) -> None:
    """Each connection is a file descriptor: lift the soft ``RLIMIT_NOFILE`` towards the hard
    one so that ``max_connections`` can be reached (a common soft default is 1024, which would
    make ``accept`` fail before the cap answers 503); warn if even the hard one is too low."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    needed = max_connections + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "max_connections=%d needs about %d file descriptors, but at most %d may be open "
            "(ulimit -n); connections may fail before the cap refuses them",
            max_connections,
            needed,
            target,
        )


def _bind(config: ServerConfig) -> socket.socket:
    """The listening socket; a port already taken is a :class:`JidokaError` that names it."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns on TCP_NODELAY only for sockets that say they are TCP
    # (without it, each answer waits ~40 ms for a delayed ACK on the plain asyncio loop).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        where = f"{config.host}:{config.port}"
        if exc.errno == errno.EADDRINUSE:
            raise JidokaError(
                f"port {config.port} on {config.host} is already in use (another jidoka serve?):"
                f" stop that server, or pick another port (--port 0 picks a free one)"
            ) from None
        raise JidokaError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve(
    config: ServerConfig,
    settings: Settings,
    *,
    metrics: PrometheusMetrics | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. ``metrics`` is best made before the
    loop starts (the OpenTelemetry SDK takes locks while it sets up)."""
    metrics = metrics or PrometheusMetrics()
    sock: socket.socket | None = None
    try:
        # The port first: a port in use is said at once, before sessions are recovered.
        sock = _bind(config)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        settings = _advertised(settings, url, host)
        runtime = Runtime(settings=settings, meter_provider=metrics.meter_provider)
        data_dir = runtime.settings.data_dir
        config, generated = await asyncio.to_thread(_token, config, data_dir)

        def ready() -> None:
            print(f"Jidoka {__version__} serving on {url}", file=out)
            print(f"  data: {data_dir} (store: {describe_store(runtime.settings)})", file=out)
            if settings.node_id is not None:
                print(f"  cluster: node {settings.node_id} at {settings.advertise_url}"
                      f" (bus: {describe_bus(settings)})", file=out)  # fmt: skip
                if generated is not None:
                    logger.warning(
                        "node %s made a token of its own: the other nodes will not accept it; "
                        "give every node the same JIDOKA_TOKENS (or --tokens-file)",
                        settings.node_id,
                    )
            print(f"export JIDOKA_URL={url}", file=out)
            if generated is not None:
                print(f"export JIDOKA_TOKEN={generated}", file=out)
            elif not config.auth_enabled:
                print("  auth: OFF (--insecure-no-auth): anyone who can connect sees everything",
                      file=out)  # fmt: skip
            out.flush()

        # The lifespan opens the runtime (recovering the stored sessions) before the first
        # connection is accepted, and closes it (flushing the store) after the last one.
        app = create_app(runtime, config, metrics=metrics, owns_runtime=True, on_ready=ready)
        lifespan = lifespan_of(app)
        _raise_fd_limit(config.max_connections)
        # Connection limits live in the protocol (see .protocol): uvicorn's
        # limit_concurrency is left off, it neither bounds open sockets nor counts right.
        uv_config = uvicorn.Config(
            app,
            http=protocol_class(config),
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=max(1, round(config.shutdown_timeout)),
            server_header=False,
            # A WebSocket message is bounded like an HTTP body (uvicorn's default is
            # 16 MiB), and few may wait unread: the two multiply into a socket's memory.
            ws_max_size=config.max_body_bytes,
            ws_max_queue=4,
        )
        quiet = _QuietStartupFailure(lifespan)
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(quiet)
        try:
            with exit_zero_after_signals():
                await uvicorn.Server(uv_config).serve(sockets=[sock])
        except SystemExit:
            # uvicorn exits (code 3) when the lifespan's startup failed: said below instead.
            if lifespan.startup_error is None:
                raise
        finally:
            uvicorn_log.removeFilter(quiet)
            sock.close()
        if lifespan.startup_error is not None:
            error = lifespan.startup_error
            if isinstance(error, JidokaError | OSError):
                raise error
            raise JidokaError(f"the server did not start: {error!r}")
    except (JidokaError, OSError) as exc:
        print(f"jidoka: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if sock is not None:
            sock.close()
        metrics.shutdown()
    return 0


def _advertised(settings: Settings, url: str, host: str) -> Settings:
    """A node of a cluster without ``advertise_url`` advertises the address it listens on,
    unless that is a wildcard (``0.0.0.0``), which other nodes cannot reach."""
    if settings.node_id is None or settings.advertise_url is not None:
        return settings
    if host in ("0.0.0.0", "::"):
        raise JidokaError(
            f"node {settings.node_id!r} listens on every address ({host}); say where other "
            "nodes reach it with --advertise-url (JIDOKA_ADVERTISE_URL)"
        )
    return msgspec.structs.replace(settings, advertise_url=url)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The MCP SDK logs each stateless /v1/mcp request's transport at INFO ("Terminating
    # session: None"): the access log already has one line per request.
    if logging.getLevelName(level.upper()) == logging.INFO:
        logging.getLogger("mcp.server").setLevel(logging.WARNING)


def run_server(config: ServerConfig, settings: Settings, *, log_level: str = "info") -> int:
    """The blocking entry point of ``jidoka serve``."""
    configure_logging(log_level)
    main = serve(config, settings, metrics=PrometheusMetrics())
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(main)
    return uvloop.run(main)
