"""OpenAI-compatible chat completions servers, through the official openai SDK.

The SDK's own retries are off (``max_retries=0``): the fallback chain owns
retries, so that every call is recorded and Retry-After is honoured once.
The SDK's timeout covers connect and each read; the first-token, idle and
whole-call limits of a :class:`ModelSpec` are enforced here around each chunk.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import openai

from bulkhead.log import get_logger
from bulkhead.models import ModelCatalog, ModelSpec
from bulkhead.settings import MAX_OUTPUT_CHARS
from executor_service.providers.base import (
    ChatMessage,
    ErrorKind,
    ProviderError,
    StreamChunk,
    TokenUsage,
)
from executor_service.providers.event_size import event_size_hook, max_event_bytes

logger = get_logger(__name__)

MISSING_API_KEY = "not-set"
MAX_ERROR_MESSAGE_CHARS = 200
# HTTP statuses worth another try: request timeout, conflict, rate limit and
# every server error.
_RETRYABLE_STATUSES = {408, 409, 429}
_KEY_LIKE = re.compile(r"\b(sk|key|rk|pk)-[A-Za-z0-9_\-*]{4,}", re.IGNORECASE)
# Seconds to wait for [DONE] once the finish reason and the usage have come.
DONE_WAIT_S = 2.0
# Token counts are stored as int32.
_MAX_TOKEN_COUNT = 2**31 - 1
# Errors raised for a stream event that cannot be read: the SDK's
# JSONDecodeError (a ValueError) for data that is not JSON, and the errors of
# reading a chunk of the wrong shape, since the SDK builds chunks without
# validating them.
_MALFORMED_EVENT_ERRORS = (ValueError, TypeError, AttributeError, KeyError)


def unset_api_key_variables(
    catalog: ModelCatalog, environ: Mapping[str, str]
) -> dict[str, str]:
    """Return the routes whose ``api_key_env`` names an unset or empty variable,
    mapped to that variable's name; their calls send ``MISSING_API_KEY``."""
    return {
        route: spec.api_key_env
        for route, spec in catalog.models.items()
        if spec.provider == "openai"
        and spec.api_key_env
        and not environ.get(spec.api_key_env)
    }


class OpenAICompatibleProvider:
    """Calls ``chat.completions.create(stream=True)`` with one client per endpoint.

    ``max_output_chars`` is the executor's output limit; it bounds the size
    of one stream event (see :func:`max_event_bytes`).
    """

    def __init__(self, max_output_chars: int = MAX_OUTPUT_CHARS) -> None:
        self._clients: dict[tuple[object, ...], openai.AsyncOpenAI] = {}
        self._max_event_bytes = max_event_bytes(max_output_chars)

    async def stream(
        self, spec: ModelSpec, messages: Sequence[ChatMessage], max_tokens: int
    ) -> AsyncIterator[StreamChunk]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        call_deadline = started + spec.timeout_s
        first_deadline = min(started + spec.first_token_timeout_s, call_deadline)
        client = self._client_for(spec)

        response = await self._open(client, spec, messages, max_tokens, first_deadline)
        try:
            chunks = response.__aiter__()
            seen_text = False
            finished = False
            seen_usage = False
            while True:
                idle_deadline = loop.time() + spec.idle_timeout_s
                deadline = min(idle_deadline, call_deadline)
                if not seen_text:
                    deadline = min(deadline, first_deadline)
                if finished and seen_usage:
                    deadline = min(deadline, loop.time() + DONE_WAIT_S)
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await chunks.__anext__()
                    text, usage, finish_reason = _read_chunk(chunk, spec)
                except StopAsyncIteration:
                    break
                except TimeoutError as error:
                    if finished:
                        # The text is complete. Only the end of the stream
                        # ([DONE], or the usage before it) is missing.
                        logger.warning(
                            "model stream not closed after its finish reason",
                            model=spec.name,
                        )
                        break
                    raise _timeout_error(
                        deadline, first_deadline, call_deadline, seen_text
                    ) from error
                except _MALFORMED_EVENT_ERRORS as error:
                    raise _invalid_response(error) from error
                if finish_reason is not None:
                    finished = True
                if text:
                    seen_text = True
                    yield StreamChunk(text=text)
                if usage is not None:
                    seen_usage = True
                    yield StreamChunk(usage=usage)
            if not finished:
                raise _unfinished_stream_error(response)
        except openai.OpenAIError as error:
            raise map_openai_error(error, spec) from error
        finally:
            # Closing an unfinished response closes its TCP connection, which
            # is how a cancelled run stops the model server's generation.
            await response.close()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def _open(
        self,
        client: openai.AsyncOpenAI,
        spec: ModelSpec,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        deadline: float,
    ) -> Any:
        options: dict[str, Any] = {}
        if spec.temperature is not None:
            options["temperature"] = spec.temperature
        try:
            async with asyncio.timeout_at(deadline):
                return await client.chat.completions.create(
                    model=spec.name or "",
                    messages=list(messages),  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    **options,
                )
        except TimeoutError as error:
            raise ProviderError(
                "no response before the first-token timeout",
                error_class="first_token_timeout",
                kind=ErrorKind.TIMEOUT,
                retryable=True,
            ) from error
        except openai.OpenAIError as error:
            raise map_openai_error(error, spec) from error

    def _client_for(self, spec: ModelSpec) -> openai.AsyncOpenAI:
        key = (spec.base_url, spec.api_key_env, spec.timeout_s, spec.connect_timeout_s)
        client = self._clients.get(key)
        if client is None:
            api_key = os.environ.get(spec.api_key_env or "", "") or MISSING_API_KEY
            client = openai.AsyncOpenAI(
                base_url=spec.base_url,
                api_key=api_key,
                max_retries=0,
                # openai 3.x is built on httpx2, so its Timeout class
                # (re-exported as openai.Timeout) is httpx2.Timeout.
                timeout=openai.Timeout(spec.timeout_s, connect=spec.connect_timeout_s),
                http_client=openai.DefaultAsyncHttpx2Client(
                    # Event boundaries are only visible in an uncompressed body.
                    headers={"Accept-Encoding": "identity"},
                    event_hooks={"response": [event_size_hook(self._max_event_bytes)]},
                ),
            )
            self._clients[key] = client
        return client


def _read_chunk(
    chunk: Any, spec: ModelSpec
) -> tuple[str, TokenUsage | None, str | None]:
    text_parts: list[str] = []
    finish_reason = None
    for choice in chunk.choices or []:
        delta = choice.delta
        if delta is not None and delta.content:
            text_parts.append(delta.content)
        if choice.finish_reason is not None:
            finish_reason = choice.finish_reason
    usage = None
    if chunk.usage is not None:
        usage = TokenUsage(
            prompt_tokens=_token_count(chunk.usage, "prompt_tokens", spec),
            completion_tokens=_token_count(chunk.usage, "completion_tokens", spec),
        )
    return "".join(text_parts), usage, finish_reason


def _token_count(usage: Any, field: str, spec: ModelSpec) -> int:
    """Return a token count of the usage chunk, or 0 when it is missing or
    not a whole number in int32 range, so that the model's text is kept."""
    value = getattr(usage, field, None)
    if value is None:
        return 0
    if type(value) is int and 0 <= value <= _MAX_TOKEN_COUNT:
        return value
    logger.warning(
        "model sent a token count that is not a count; recorded as 0",
        model=spec.name,
        field=field,
        value=repr(value)[:40],
    )
    return 0


def _timeout_error(
    deadline: float, first_deadline: float, call_deadline: float, seen_text: bool
) -> ProviderError:
    if deadline == call_deadline:
        error_class, message = "call_timeout", "the call exceeded its time limit"
    elif not seen_text and deadline == first_deadline:
        error_class, message = (
            "first_token_timeout",
            "no text before the first-token timeout",
        )
    else:
        error_class, message = "idle_timeout", "no chunk within the idle timeout"
    return ProviderError(
        message, error_class=error_class, kind=ErrorKind.TIMEOUT, retryable=True
    )


def map_openai_error(error: openai.OpenAIError, spec: ModelSpec) -> ProviderError:
    """Translate an SDK exception into a ProviderError the chain can branch on."""
    if isinstance(error, openai.APITimeoutError):
        return ProviderError(
            "the request timed out",
            error_class="timeout",
            kind=ErrorKind.TIMEOUT,
            retryable=True,
        )
    if isinstance(error, openai.APIConnectionError):
        return ProviderError(
            _short_message(str(error.__cause__ or error), spec),
            error_class="connection_error",
            kind=ErrorKind.UNAVAILABLE,
            retryable=True,
        )
    if isinstance(error, openai.APIStatusError):
        return _status_error(error, spec)
    # Errors sent inside the event stream, and unexpected payloads.
    return ProviderError(
        _short_message(str(error), spec),
        error_class="stream_error",
        kind=ErrorKind.UNAVAILABLE,
        retryable=True,
    )


def _invalid_response(error: Exception) -> ProviderError:
    """Build the retryable error of a stream event that could not be read.

    The message goes to API users in the run's attempts, so it names the
    fault and not the Python exception, which only the log shows.
    """
    logger.warning(
        "model stream event could not be read",
        error=f"{type(error).__name__}: {error}"[:MAX_ERROR_MESSAGE_CHARS],
    )
    if isinstance(error, json.JSONDecodeError):
        message = "the model server sent an event whose data is not JSON"
    else:
        message = "the model server sent an event of an unexpected shape"
    return ProviderError(
        message,
        error_class="invalid_response",
        kind=ErrorKind.UNAVAILABLE,
        retryable=True,
    )


def _unfinished_stream_error(response: Any) -> ProviderError:
    """Build the error of a response that ended without a finish reason."""
    http_response = getattr(response, "response", None)
    headers = getattr(http_response, "headers", {})
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and media_type != "text/event-stream":
        return ProviderError(
            f"the model server responded with {media_type[:60]}, not an event stream",
            error_class="invalid_response",
            kind=ErrorKind.UNAVAILABLE,
            retryable=True,
        )
    return ProviderError(
        "stream ended without a finish reason",
        error_class="incomplete_stream",
        kind=ErrorKind.UNAVAILABLE,
        retryable=True,
    )


def _status_error(error: openai.APIStatusError, spec: ModelSpec) -> ProviderError:
    status = error.status_code
    # The SDK stores the body's "error" object; its message is the server's text.
    body = error.body
    text = body.get("message") if isinstance(body, dict) else None
    message = f"HTTP {status}: " + _short_message(str(text or error.message), spec)
    retryable = status in _RETRYABLE_STATUSES or status >= 500
    if status == 429:
        kind = ErrorKind.RATE_LIMITED
    elif status in (408, 504):
        kind = ErrorKind.TIMEOUT
    elif not retryable:
        kind = ErrorKind.REJECTED
    else:
        kind = ErrorKind.UNAVAILABLE
    error_class = f"http_{status}"
    if error.code == "context_length_exceeded":
        error_class = "context_length_exceeded"
    return ProviderError(
        message,
        error_class=error_class,
        kind=kind,
        retryable=retryable,
        retry_after_s=parse_retry_after(error.response.headers) if retryable else None,
    )


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Return the delay in seconds that ``retry-after-ms`` or ``Retry-After`` requests.

    ``Retry-After`` is delay-seconds or an HTTP date (RFC 9110, section 10.2.3);
    ``retry-after-ms`` is OpenAI's millisecond variant. Returns None when
    neither header is present or valid.
    """
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (now if now is not None else time.time()), 0.0)


def _short_message(text: str, spec: ModelSpec) -> str:
    """Shorten an error text and remove anything that looks like an API key."""
    key = os.environ.get(spec.api_key_env or "", "")
    if key:
        text = text.replace(key, "[redacted]")
    text = _KEY_LIKE.sub("[redacted]", text)
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_MESSAGE_CHARS:
        text = text[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    return text
