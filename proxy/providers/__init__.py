"""One adapter per provider endpoint; each wire format is known only here."""

from __future__ import annotations

from proxy.providers.anthropic_count_tokens import AnthropicCountTokens
from proxy.providers.anthropic_messages import AnthropicMessages
from proxy.providers.base import Adapter, PreparedBody
from proxy.providers.openai_chat import OpenAIChat
from proxy.providers.openai_completions import OpenAICompletions
from proxy.providers.openai_embeddings import OpenAIEmbeddings
from proxy.providers.openai_responses import OpenAIResponses

ADAPTERS: dict[tuple[str, str], Adapter] = {
    ("openai", "chat/completions"): OpenAIChat(),
    ("openai", "responses"): OpenAIResponses(),
    ("anthropic", "messages"): AnthropicMessages(),
    # metered too; an embeddings adapter serves `kind: embedding` models only
    ("openai", "embeddings"): OpenAIEmbeddings(),
    ("openai", "completions"): OpenAICompletions(),
    # forwarded free (`billed = False`: proxy.free_endpoints)
    ("anthropic", "messages/count_tokens"): AnthropicCountTokens(),
}

__all__ = ["ADAPTERS", "Adapter", "PreparedBody"]
