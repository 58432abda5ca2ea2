"""The window of one turn: every request it makes fits ``context_window - max_tokens``.

A turn grows its prompt as it goes (the model's tool calls, their results), and a request larger
than the model's window is answered with HTTP 400 and loses the turn. :class:`TurnWindow` holds
that prompt and makes each request fit before it is sent: a tool result is cut to the room left
when it comes in (with a note on how to read the rest), older results are cut further and then
the oldest conversation messages are left out when a later request would not fit, and what
still cannot fit ends the turn with ``LimitExceeded``. It is apart from the turn loop in
:mod:`.orchestrator` because it is pure bookkeeping over token counts, with no I/O; how the
limit and the context's share of it are computed is :mod:`.prompt`.
"""

from __future__ import annotations

from ..errors import LimitExceeded
from ..session.context import TokenCounter
from .prompt import cut_to_fit, message_tokens
from .types import ChatMessage

__all__ = ["TurnWindow"]


class TurnWindow:
    """A turn's prompt kept within the request limit (``context_window - max_tokens``).

    ``head`` is the session's context (system message, conversation, the user's message last);
    the turn's own messages come after it. :meth:`fit` makes the next request fit, cutting the
    turn's tool results (oldest first; their whole text is kept here to cut again from), then
    leaving out the oldest conversation messages; what still does not fit raises
    ``LimitExceeded`` rather than being sent.
    """

    def __init__(
        self,
        head: list[ChatMessage],
        *,
        limit: int,
        fixed: int,
        counter: TokenCounter,
        session_id: str,
    ) -> None:
        self._head = head
        self._turn: list[ChatMessage] = []
        self._whole: dict[int, str] = {}  # turn index of a tool result -> its whole text
        self._limit = limit
        self._fixed = fixed
        self._counter = counter
        self._session_id = session_id

    def _cost(self, messages: list[ChatMessage]) -> int:
        return sum(message_tokens(m, self._counter) for m in messages)

    def used(self) -> int:
        return self._fixed + self._cost(self._head) + self._cost(self._turn)

    def room(self) -> int:
        """Tokens left for the text of one more tool result."""
        overhead = message_tokens(ChatMessage(role="tool", content=""), self._counter)
        return self._limit - self.used() - overhead

    def add(self, message: ChatMessage) -> None:
        self._turn.append(message)

    def add_result(self, call_id: str, whole: str, for_model: str) -> None:
        self._whole[len(self._turn)] = whole
        self._turn.append(ChatMessage(role="tool", content=for_model, tool_call_id=call_id))

    def fit(self) -> list[ChatMessage]:
        """The messages of the next request, made to fit the limit."""
        excess = self.used() - self._limit
        for index, whole in self._whole.items():
            if excess <= 0:
                break
            message = self._turn[index]
            cost = self._counter(message.content or "")
            cut = cut_to_fit(whole, max(0, cost - excess), self._counter)
            if cut is not None:
                self._turn[index] = ChatMessage(
                    role="tool", content=cut, tool_call_id=message.tool_call_id
                )
                excess -= cost - self._counter(cut)
        # The oldest conversation messages go next: never the system message (instructions),
        # never the user's message that started the turn (the last of the head).
        while excess > 0 and len(self._head) > 2:
            dropped = self._head.pop(1)
            excess -= message_tokens(dropped, self._counter)
        if excess > 0:
            raise LimitExceeded(
                "context_window - max_tokens",
                self._limit,
                session_id=self._session_id,
                actual=self._limit + excess,
            )
        return [*self._head, *self._turn]
