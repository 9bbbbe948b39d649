"""One adapter per provider kind and endpoint; each wire format is known only here."""

from __future__ import annotations

from proxy.providers.anthropic_count_tokens import AnthropicCountTokens
from proxy.providers.anthropic_messages import AnthropicMessages
from proxy.providers.base import Adapter, PreparedBody
from proxy.providers.gemini_generate import GeminiCountTokens, GeminiGenerate
from proxy.providers.openai_chat import OpenAIChat
from proxy.providers.openai_completions import OpenAICompletions
from proxy.providers.openai_embeddings import OpenAIEmbeddings
from proxy.providers.openai_responses import OpenAIResponses

# (kind, endpoint) -> adapter; every provider of a kind is served by its kind's
ADAPTERS: dict[tuple[str, str], Adapter] = {
    ("openai", "chat/completions"): OpenAIChat(),
    ("openai", "responses"): OpenAIResponses(),
    ("anthropic", "messages"): AnthropicMessages(),
    # metered too; an embeddings adapter serves `kind: embedding` models only
    ("openai", "embeddings"): OpenAIEmbeddings(),
    ("openai", "completions"): OpenAICompletions(),
    ("gemini", "generateContent"): GeminiGenerate("generateContent"),
    ("gemini", "streamGenerateContent"): GeminiGenerate(
        "streamGenerateContent", stream=True, sse=True
    ),
    # forwarded free (`billed = False`: proxy.free_endpoints)
    ("anthropic", "messages/count_tokens"): AnthropicCountTokens(),
    ("gemini", "countTokens"): GeminiCountTokens(),
}
# `streamGenerateContent` without `?alt=sse`: one JSON array, streamed
GEMINI_JSON_STREAM: Adapter = GeminiGenerate("streamGenerateContent", stream=True)

__all__ = ["ADAPTERS", "GEMINI_JSON_STREAM", "Adapter", "PreparedBody"]
