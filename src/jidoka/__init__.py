"""Jidoka: a runtime for many isolated AI coding-assistant sessions.

import jidoka

async with jidoka.Runtime() as rt:
    sid = await rt.client.create_session(project_root=".")
    await rt.client.send_message(sid, "user", "hello")
"""

from typing import TYPE_CHECKING

from ._version import __version__
from .bus.base import Subscription
from .cache import FileCache
from .client import Client
from .clock import Clock, FakeClock, SystemClock
from .config import LLMConfig, SessionConfig, Settings
from .errors import (
    DataDirLocked,
    HostNotAllowed,
    InvalidArgument,
    InvalidConfig,
    InvalidRole,
    InvalidTransition,
    JidokaError,
    LimitExceeded,
    LLMError,
    NotOwner,
    OriginNotAllowed,
    PathNotAllowed,
    ProjectRootUnavailable,
    RunNotFound,
    RuntimeClosed,
    SessionBusy,
    SessionExists,
    SessionNotFound,
    SessionTerminated,
    StoreError,
    Unauthorized,
    UnsupportedMediaType,
)
from .events import Event, EventType, decode_event, encode_event
from .runs.info import RunInfo, RunPage
from .runtime import Runtime
from .scoped import ScopedClient
from .session.branching import Rewound
from .session.context import ContextBundle, FileExcerpt, estimate_tokens
from .session.info import SessionInfo, TokenUsage
from .session.state import ActiveFile, FileIndexEntry, Message, Status
from .store.base import SavedSession
from .wire import Compacted

if TYPE_CHECKING:  # what __getattr__ below returns, for type checkers (no httpx at import time)
    from .remote import RemoteClient, ServerUnavailable

__all__ = [
    "ActiveFile",
    "Client",
    "Clock",
    "Compacted",
    "ContextBundle",
    "DataDirLocked",
    "Event",
    "EventType",
    "FakeClock",
    "FileCache",
    "FileExcerpt",
    "FileIndexEntry",
    "HostNotAllowed",
    "InvalidArgument",
    "InvalidConfig",
    "InvalidRole",
    "InvalidTransition",
    "JidokaError",
    "LLMConfig",
    "LLMError",
    "LimitExceeded",
    "Message",
    "NotOwner",
    "OriginNotAllowed",
    "PathNotAllowed",
    "ProjectRootUnavailable",
    "RemoteClient",
    "Rewound",
    "RunInfo",
    "RunNotFound",
    "RunPage",
    "Runtime",
    "RuntimeClosed",
    "SavedSession",
    "ScopedClient",
    "ServerUnavailable",
    "SessionBusy",
    "SessionConfig",
    "SessionExists",
    "SessionInfo",
    "SessionNotFound",
    "SessionTerminated",
    "Settings",
    "Status",
    "StoreError",
    "Subscription",
    "SystemClock",
    "TokenUsage",
    "Unauthorized",
    "UnsupportedMediaType",
    "__version__",
    "decode_event",
    "encode_event",
    "estimate_tokens",
]


def __getattr__(name: str) -> object:
    """``RemoteClient`` and ``ServerUnavailable`` load httpx; import them only when used."""
    if name in ("RemoteClient", "ServerUnavailable"):
        from . import remote

        return getattr(remote, name)
    raise AttributeError(f"module 'jidoka' has no attribute {name!r}")
