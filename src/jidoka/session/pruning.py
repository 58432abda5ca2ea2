"""Stream-chunk pruning: a turn's ``llm_stream_chunk`` events leave the store once it has ended.

A streamed answer is stored twice over while its turn runs: in pieces, as the chunks that let
anyone watching read it as it comes, and whole, in the turn's ``llm_response`` (and its
assistant message). Once the turn has ended the pieces tell nothing the whole does not, so with
``Settings.keep_stream_chunks`` off the agent hands their seq range to :meth:`ChunkPruner.drop`
and they are deleted in the background: one statement of the store
(``SessionStore.drop_events``), never in the way of an append, and never the turn's other events
(the chunks of a model call that ended in tool calls are kept: no other event holds their text).

The log's end and the session's projection are unchanged (chunks change neither); what a
reader sees is a gap in the seqs, which a replaying subscription reports as one
``events_dropped`` marker per gap. A drop that fails (the store is unreachable, the session
moved to another node) is logged and changes nothing: the chunks stay, as with the setting on.
"""

from __future__ import annotations

import logging

from ..errors import RuntimeClosed, StoreError
from ..events import EventType
from ..store.base import SessionStore
from .background import BackgroundTasks

__all__ = ["ChunkPruner"]

logger = logging.getLogger("jidoka.session")


class ChunkPruner:
    """Drops ended turns' stream chunks from the store, each drop a background task."""

    __slots__ = ("_store", "_tasks", "dropped")

    def __init__(self, store: SessionStore, tasks: BackgroundTasks) -> None:
        self._store = store
        self._tasks = tasks
        #: Chunks this runtime has dropped (a counter for tests and benchmarks).
        self.dropped = 0

    def drop(self, session_id: str, first_seq: int, last_seq: int) -> None:
        """Drop the session's chunks from ``first_seq`` to ``last_seq``, in the background: the
        turn that made them has ended (called from its agent, which must not wait on it)."""
        self._tasks.spawn(
            self._drop(session_id, first_seq, last_seq), f"jidoka:{session_id}:drop-chunks"
        )

    async def _drop(self, session_id: str, first_seq: int, last_seq: int) -> None:
        try:
            self.dropped += await self._store.drop_events(
                session_id, EventType.LLM_STREAM_CHUNK, first_seq=first_seq, last_seq=last_seq
            )
        except (StoreError, RuntimeClosed) as exc:  # OwnershipLost among them: harmless
            logger.warning(
                "session %s: stream chunks %d..%d not dropped (they stay in the log): %s",
                session_id,
                first_seq,
                last_seq,
                exc,
                extra={"session_id": session_id},
            )
