"""Model providers: the built-in offline model and OpenAI-compatible servers."""

from executor_service.providers.base import (
    ChatMessage,
    ChatProvider,
    ErrorKind,
    ProviderError,
    StreamChunk,
    TokenUsage,
)
from executor_service.providers.builtin import BuiltinProvider
from executor_service.providers.openai_compatible import OpenAICompatibleProvider


def default_providers(max_output_chars: int) -> dict[str, ChatProvider]:
    """Return one provider per ``ModelSpec.provider`` value."""
    return {
        "builtin": BuiltinProvider(),
        "openai": OpenAICompatibleProvider(max_output_chars),
    }


__all__ = [
    "BuiltinProvider",
    "ChatMessage",
    "ChatProvider",
    "ErrorKind",
    "OpenAICompatibleProvider",
    "ProviderError",
    "StreamChunk",
    "TokenUsage",
    "default_providers",
]
