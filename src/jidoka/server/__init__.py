"""The network API (``jidoka serve``): an ASGI app over a :class:`~jidoka.Runtime`.

Needs the ``server`` extra (Starlette, uvicorn, the OpenTelemetry SDK, prometheus-client); the
core package never imports this one. See ``docs/http-api.md`` for the contract.
"""

from .app import create_app
from .config import ServerConfig
from .serve import run_server

__all__ = ["ServerConfig", "create_app", "run_server"]
