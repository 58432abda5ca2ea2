"""Any OpenAI-compatible Chat Completions endpoint, through the official async ``openai`` SDK.

OpenAI itself, vLLM, llama.cpp, Ollama, LM Studio, LiteLLM... all speak the same streaming
protocol; this module translates Jidoka's :mod:`~jidoka.llm.types` to it and back:

- messages and tools become Chat Completions dicts; the answer is streamed (``stream=True``, with
  ``stream_options={"include_usage": True}`` so the last chunk carries the token usage). A server
  that rejects ``stream_options`` (HTTP 400 naming it) is asked again without, once, and the
  provider remembers not to send it any more. A server that ignores it sends no usage: the
  :class:`Completion` then says ``usage=None`` and the turn loop estimates it (never a silent 0);
- an assistant message that only calls tools is sent with ``content: ""``: every server takes
  it, while an absent content breaks some chat templates and ``null`` is refused by others;
- streamed tool-call fragments are assembled by their ``index`` into complete ``ToolCall``
  (:mod:`.chat_completions` holds that translation, both ways);
- retries with exponential backoff (honouring ``Retry-After``) are the SDK's own: it retries 408,
  409, 429, 5xx, connection errors and timeouts *before the first byte of the answer*, streaming
  or not (``max_retries``); once the answer streams nothing is retried here -- a stream cut in the
  middle is an :class:`~jidoka.errors.LLMError`, never a partial answer. It is ``retryable`` only
  when there is a reason to think a retry may go better: the connection was lost mid-answer. A
  stream the server ended itself without finishing, or an HTTP 200 with no data at all (a server
  that failed after answering 200, e.g. a chat template error), is not: the same request fails
  the same way. The server's own error text goes into the message where it sent one (an error
  event, or a JSON error document instead of a stream);
- every SDK exception becomes an :class:`~jidoka.errors.LLMError` whose message never contains
  the API key.

The SDK is an optional dependency (``pip install 'jidoka-core[llm]'``), imported only when this
module is. Building the SDK client reads CA certificates and imports the HTTP stack, so it happens
on a worker thread at the first call, not on the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

import openai

from ...errors import InvalidConfig, LLMError, RuntimeClosed
from ..types import ChatRequest, Completion, TextDelta, Usage
from .chat_completions import (
    ToolCallFragments,
    absorb,
    message_param,
    tool_choice_param,
    tool_param,
)

if TYPE_CHECKING:
    from openai.types.chat import (
        ChatCompletionChunk,
        ChatCompletionMessageParam,
        ChatCompletionToolParam,
    )

    from . import ClientCache

__all__ = ["DEFAULT_BASE_URL", "NO_KEY", "OpenAIProvider"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
#: The key sent to local servers that need none (``api_key_env: null``).
NO_KEY: Final = "not-needed"
_CUT: Final = "stream ended before the answer was complete"
_REDACTED: Final = "[redacted]"
#: How much of a body that is not a stream is read to find the server's error text.
_MAX_ERROR_BODY: Final = 8192


class OpenAIProvider:
    """A :class:`~jidoka.llm.types.Provider` for one OpenAI-compatible endpoint.

    ``model``, ``temperature`` and ``max_tokens`` are defaults for requests that leave them
    unset. ``api_key`` is held in memory only (never logged, never in an error message).
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        session_id: str | None = None,
        name: str = "openai",
        clients: ClientCache | None = None,
    ) -> None:
        self.name = name
        #: Shared SDK clients (owned by the cache, never closed here); None: a client of our own.
        self._clients = clients
        self.base_url = base_url
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self._api_key = api_key
        self._session_id = session_id
        self._stream_options = True
        self._client: openai.AsyncOpenAI | None = None
        self._building: asyncio.Future[openai.AsyncOpenAI] | None = None
        self._closed = False

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        environ: Mapping[str, str],
        session_id: str | None = None,
        clients: ClientCache | None = None,
    ) -> OpenAIProvider:
        """Build from a validated ``llm_config``; the key is read from ``environ`` now."""
        variable = config.get("api_key_env", "OPENAI_API_KEY")
        if variable is None or variable == "":  # "": no key, as JIDOKA_LLM_API_KEY_ENV="" says
            api_key = NO_KEY
        else:
            api_key = environ.get(variable, "")
            if not api_key:
                raise InvalidConfig(
                    f"the environment variable {variable} (named by llm_config.api_key_env) is "
                    'not set or empty; set it to the API key, or use api_key_env: null (or "") '
                    "for a server that needs no key",
                    field="llm_config.api_key_env",
                    session_id=session_id,
                )
        options: dict[str, Any] = {
            key: config[key]
            for key in ("base_url", "model", "temperature", "max_tokens", "timeout", "max_retries")
            if config.get(key) is not None
        }
        return cls(api_key=api_key, session_id=session_id, clients=clients, **options)

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self.base_url!r}, model={self.model!r})"

    # --- the Provider protocol ------------------------------------------------------------------

    async def stream(self, request: ChatRequest) -> AsyncIterator[TextDelta | Completion]:
        """Stream one chat completion: :class:`TextDelta` items, then one :class:`Completion`.

        Closing or cancelling the iteration closes the HTTP response (the ``async with``).
        """
        client = await self._ensure_client()
        response = await self._open(client, request)
        text: list[str] = []
        calls = ToolCallFragments()
        finish_reason: str | None = None
        usage: Usage | None = None
        chunks = 0
        async with response:
            await self._refuse_non_stream(response)
            while (
                chunk := await self._next_chunk(response, finish_reason is not None, chunks)
            ) is not None:
                chunks += 1
                if chunk.usage is not None:
                    usage = Usage(
                        prompt_tokens=chunk.usage.prompt_tokens or 0,
                        completion_tokens=chunk.usage.completion_tokens or 0,
                        total_tokens=chunk.usage.total_tokens or 0,
                    )
                delta_text, reason = absorb(chunk, calls)
                finish_reason = reason or finish_reason
                if delta_text:
                    text.append(delta_text)
                    yield TextDelta(delta_text)
        if chunks == 0:
            raise self._llm_error(_empty(self.base_url, "the stream ended"), retryable=False)
        if finish_reason is None:
            raise self._llm_error(
                f"{_CUT}: {self.base_url} ended the stream without a finish_reason (after "
                f"{chunks} chunks); the server stopped answering, see its log",
                retryable=False,
            )
        yield Completion(
            text="".join(text),
            tool_calls=calls.assemble(),
            usage=usage,
            finish_reason=finish_reason,
        )

    async def aclose(self) -> None:
        """Close the SDK client (and its connection pool) unless it is shared. Safe to call
        twice."""
        self._closed = True
        if self._clients is not None:
            self._client = None
            return
        client, self._client = self._client, None
        if client is None and self._building is not None:
            try:
                client = await self._building
            except Exception:  # building failed: nothing to close
                client = None
            self._building = None
        if client is not None:
            await client.close()

    # --- internals -------------------------------------------------------------------------------

    async def _ensure_client(self) -> openai.AsyncOpenAI:
        if self._closed:
            raise RuntimeClosed(f"the {self.name} provider is closed", session_id=self._session_id)
        if self._client is not None:
            return self._client
        if self._clients is not None:
            key = (self.base_url, self._api_key, self.timeout, self.max_retries)
            try:
                shared: openai.AsyncOpenAI = await self._clients.get(key, self._build_client)
            except Exception as exc:
                failure = self._llm_error(
                    f"cannot set up the openai client: {exc}", retryable=False
                )
                raise failure from self._chain(exc)
            self._client = shared
            return shared
        if self._building is None:
            self._building = asyncio.ensure_future(asyncio.to_thread(self._build_client))
        # Shielded: a caller cancelled while the client is being built leaves it to the next
        # caller (or to aclose), instead of leaking a half-owned client.
        try:
            client = await asyncio.shield(self._building)
        except Exception as exc:  # e.g. the SDK refusing an option: an error, never an SDK type
            self._building = None
            failure = self._llm_error(f"cannot set up the openai client: {exc}", retryable=False)
            cause = self._chain(exc)
        else:
            if self._closed:
                raise RuntimeClosed(
                    f"the {self.name} provider is closed", session_id=self._session_id
                )
            self._client = client
            return client
        raise failure from cause

    def _build_client(self) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )
        # The SDK fills these from os.environ (OPENAI_ORG_ID, OPENAI_PROJECT_ID) and would send
        # them to whatever server base_url names; a session's endpoint gets only what it names.
        client.organization = None
        client.project = None
        # The SDK imports its resources on first use: the chat ones, read from disk, would
        # otherwise load on the event loop at the process's first turn, stalling every
        # session (and a cluster node's lease renewals) for up to a second on a busy host.
        client.chat.completions  # noqa: B018
        return client

    async def _open(
        self, client: openai.AsyncOpenAI, request: ChatRequest
    ) -> openai.AsyncStream[ChatCompletionChunk]:
        messages: list[ChatCompletionMessageParam] = [message_param(m) for m in request.messages]
        params: dict[str, Any] = {"model": request.model or self.model or "", "messages": messages}
        if request.tools:
            tools: list[ChatCompletionToolParam] = [tool_param(t) for t in request.tools]
            params["tools"] = tools
            if request.tool_choice is not None:
                params["tool_choice"] = tool_choice_param(request.tool_choice)
        temperature = request.temperature if request.temperature is not None else self.temperature
        if temperature is not None:
            params["temperature"] = temperature
        max_tokens = request.max_tokens if request.max_tokens is not None else self.max_tokens
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        try:
            if self._stream_options:
                try:
                    return await _create(
                        client, {**params, "stream_options": {"include_usage": True}}
                    )
                except openai.BadRequestError as exc:
                    if not _mentions_stream_options(exc):
                        raise
                    self._stream_options = False  # this server does not know the option
            return await _create(client, params)
        except openai.OpenAIError as exc:
            failure, cause = self._error(exc, streaming=False), self._chain(exc)
        raise failure from cause  # outside the except: no implicit __context__ either

    async def _refuse_non_stream(self, response: openai.AsyncStream[ChatCompletionChunk]) -> None:
        """A 200 whose body is a JSON document, not a stream: some servers and proxies answer
        an error that way. Its error text is the best explanation there is; without this check
        the SSE decoder would find no event in it and report an empty stream."""
        http = response.response
        if not http.headers.get("content-type", "").lower().startswith("application/json"):
            return
        body = bytearray()
        try:
            async for piece in http.aiter_bytes():
                body += piece
                if len(body) >= _MAX_ERROR_BODY:
                    break
        except Exception:  # whatever arrived is all the explanation there is
            pass
        said = _error_text(bytes(body[:_MAX_ERROR_BODY]))
        raise self._llm_error(
            f"{self.base_url} answered HTTP 200 with a JSON document instead of a stream"
            + (f": {said}" if said else ""),
            retryable=False,
            status=http.status_code,
        )

    async def _next_chunk(
        self, response: openai.AsyncStream[ChatCompletionChunk], finished: bool, chunks: int
    ) -> ChatCompletionChunk | None:
        """The next chunk, or None at the end of the stream (``finished``: a finish_reason was
        seen, so a connection lost now only loses the usage chunk; ``chunks``: how many came
        before)."""
        try:
            return await response.__anext__()
        except StopAsyncIteration:
            return None
        except openai.APIConnectionError as exc:  # the connection dropped, or timed out
            if finished:
                return None
            if chunks == 0 and not isinstance(exc, openai.APITimeoutError):
                failure = self._llm_error(
                    _empty(self.base_url, "the connection was closed"), retryable=False
                )
            else:
                failure = self._error(exc, streaming=True)
            cause = self._chain(exc)
        except openai.OpenAIError as exc:
            failure, cause = self._error(exc, streaming=True), self._chain(exc)
        except ValueError as exc:  # an SSE event that is not JSON
            message = f"the endpoint sent a malformed stream chunk: {exc}"
            failure, cause = self._llm_error(message, retryable=True), self._chain(exc)
        except Exception as exc:
            # SDKs before the 3.x "normalize errors raised while reading streams" change let the
            # HTTP library's own errors (httpx.RemoteProtocolError, ReadTimeout...) escape here.
            if finished:
                return None
            if chunks == 0:
                message = _empty(self.base_url, f"{type(exc).__name__}: {exc}")
            else:
                message = f"{_CUT}: {type(exc).__name__}: {exc}"
            failure, cause = self._llm_error(message, retryable=chunks > 0), self._chain(exc)
        raise failure from cause

    def _chain(self, exc: Exception) -> Exception | None:
        """The SDK exception to chain to our error -- unless its text carries the key (a server
        echoing it back), which would print it in every traceback."""
        key = self._api_key
        if key and (key in str(exc) or key in repr(getattr(exc, "body", None))):
            return None
        return exc

    def _error(self, exc: openai.OpenAIError, *, streaming: bool) -> LLMError:
        """The :class:`LLMError` for an SDK exception (``streaming``: raised mid-answer)."""
        if isinstance(exc, openai.APITimeoutError):
            where = "while streaming the answer" if streaming else "before answering"
            return self._llm_error(
                f"{self.base_url} timed out {where} (timeout {self.timeout:g}s)", retryable=True
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
            if streaming:
                return self._llm_error(f"{_CUT}: the connection was lost{cause}", retryable=True)
            return self._llm_error(f"cannot reach {self.base_url}: {exc.message}{cause}", True)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            return self._llm_error(
                f"{self.base_url} answered HTTP {status}: {exc.message}",
                retryable=status in (408, 429) or status >= 500,
                status=status,
            )
        if isinstance(exc, openai.APIError):  # an error event in the middle of the stream
            return self._llm_error(f"{self.base_url} reported an error: {exc.message}", False)
        return self._llm_error(f"{type(exc).__name__}: {exc}", retryable=False)

    def _llm_error(self, message: str, retryable: bool, *, status: int | None = None) -> LLMError:
        if self._api_key:
            message = message.replace(self._api_key, _REDACTED)
        return LLMError(
            message,
            provider=self.name,
            session_id=self._session_id,
            status=status,
            retryable=retryable,
        )


# --- the SDK call and its errors' text -----------------------------------------------------------


async def _create(
    client: openai.AsyncOpenAI, params: dict[str, Any]
) -> openai.AsyncStream[ChatCompletionChunk]:
    stream = await client.chat.completions.create(stream=True, **params)
    return cast("openai.AsyncStream[ChatCompletionChunk]", stream)


def _empty(base_url: str, how: str) -> str:
    return (
        f"{base_url} answered HTTP 200 but sent no data ({how} before the first chunk): the "
        "server failed while preparing the answer (a chat template error, for one) and did not "
        "say why in the stream; its own log has the reason. Not retried: the same request "
        "fails the same way"
    )


def _error_text(body: bytes) -> str:
    """The message of an error document (``{"error": {"message": ...}}``, ``{"error": "..."}``,
    ``{"detail": ...}``), else the start of the body as text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(document, dict):
        error = document.get("error", document.get("detail", document.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return (error if isinstance(error, str) else json.dumps(error))[:500]
    return text[:500]


def _mentions_stream_options(exc: openai.BadRequestError) -> bool:
    return "stream_options" in exc.message or "stream_options" in str(exc.body)
