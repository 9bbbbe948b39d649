"""OpenAI legacy Completions: `POST /completions`, JSON and SSE.

Usage, the stream rule (usage asked for when the client did not, and its chunk
hidden) and the answer format are Chat Completions': this adapter is the chat
adapter with the legacy request (`prompt`, `max_tokens` defaulting to 16) and
the legacy chunks (`choices[].text` instead of `delta`).
"""

from __future__ import annotations

from proxy.providers.bounds import RequestBound, choices, positive_count, requested_tier
from proxy.providers.openai_chat import ChatScanner, OpenAIChat
from proxy.providers.openai_embeddings import batch_bound
from proxy.providers.sse import StreamScanner
from shared.catalog import ModelPrice

# the provider's default output cap when the request sets none
DEFAULT_MAX_TOKENS = 16


def _carries_text(event: bytes) -> bool:
    """A chunk with generated text (the final chunk's text is empty)."""
    at = event.find(b'"text":')
    if at == -1:
        return False
    value = event[at + 7 : at + 11].lstrip()
    return value[:1] == b'"' and value[:2] != b'""'


def _text_deltas(block: bytes) -> int:
    """Chunks carrying text, counted over a block of whole events."""
    count = block.count(b'"text":"') - block.count(b'"text":""')
    if b'"text": "' in block:
        count += block.count(b'"text": "') - block.count(b'"text": ""')
    return count


class CompletionsScanner(ChatScanner):
    """Chat's scanner (usage chunk, [DONE], error chunks), counting `text` chunks."""

    def count_deltas(self, events: bytes) -> int:
        return _text_deltas(events)

    def on_event(self, event: bytes) -> bool:
        if b'"text"' in event and _carries_text(event):
            self.deltas += 1
        return super().on_event(event)


class OpenAICompletions(OpenAIChat):
    endpoint = "completions"

    def output_cap(self, request: dict) -> int | None:
        return positive_count(request, "max_tokens")

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        cap = self.output_cap(request)
        if cap is None:  # absent: the provider's default; null or odd: the model's most
            cap = DEFAULT_MAX_TOKENS if "max_tokens" not in request else price.max_output_tokens
        tokens, prompts = batch_bound(request.get("prompt"), raw, request.get("suffix"))
        # every prompt gets max(n, best_of) completions, each up to the cap
        output = cap * choices(request) * prompts
        return RequestBound(tokens, output, service_tier=requested_tier(request), inputs=prompts)

    def scanner(self, prepared) -> StreamScanner:
        return CompletionsScanner(filtering=prepared.hide_usage_chunk)
