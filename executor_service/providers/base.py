"""The provider interface and the errors the fallback chain branches on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypedDict

from bulkhead.models import ModelSpec


class ChatMessage(TypedDict):
    role: str
    content: str


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class StreamChunk:
    """One item of a model stream: a text delta, or the final usage."""

    text: str = ""
    usage: TokenUsage | None = None


class ErrorKind(StrEnum):
    """What a failed call means for the run, and its error code if it is the last."""

    TIMEOUT = "model_timeout"
    RATE_LIMITED = "rate_limited"
    REJECTED = "model_rejected"
    UNAVAILABLE = "model_unavailable"


class ProviderError(Exception):
    """A failed model call.

    Attributes:
        error_class: Short machine-readable class, such as ``http_503``,
            ``idle_timeout`` or ``connect_error``, stored with the model call.
        kind: What the failure means for the run.
        retryable: Whether the same model may be called again.
        retry_after_s: Delay the server asked for, in seconds, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        error_class: str,
        kind: ErrorKind,
        retryable: bool,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_class = error_class
        self.kind = kind
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    def detached(self) -> ProviderError:
        """Return a copy without traceback or cause.

        A stored error keeps the frames of its traceback alive, and with them
        what the failed call had read, such as an oversized event.
        """
        return ProviderError(
            self.message,
            error_class=self.error_class,
            kind=self.kind,
            retryable=self.retryable,
            retry_after_s=self.retry_after_s,
        )


class ChatProvider(Protocol):
    """A way to call one family of models with streaming."""

    def stream(
        self, spec: ModelSpec, messages: Sequence[ChatMessage], max_tokens: int
    ) -> AsyncIterator[StreamChunk]:
        """Stream a reply: text deltas, then at most one chunk with usage.

        ``spec.name`` is the provider's model name. Raises ProviderError for
        every failure of the call; cancelling the consumer closes the call.
        """
        ...

    async def aclose(self) -> None:
        """Release connections held by the provider."""
        ...
