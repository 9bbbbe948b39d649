"""Deterministic token accounting for simulated requests and completions.

Input tokens = 4 + ceil(characters of all text content / 4).
Output tokens = number of content deltas generated (one word "tokN " per delta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

BASE_INPUT_TOKENS = 4
CHARS_PER_TOKEN = 4


def count_from_chars(chars: int) -> int:
    return BASE_INPUT_TOKENS + math.ceil(chars / CHARS_PER_TOKEN)


def _content_chars(content: Any) -> int:
    """Characters in a `content` value: a string, or a list of parts carrying `text`."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
        return total
    return 0


def _messages_chars(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))


def chat_input_tokens(body: dict[str, Any]) -> int:
    """OpenAI chat completions: text of `messages[*].content`."""
    return count_from_chars(_messages_chars(body.get("messages")))


def responses_input_tokens(body: dict[str, Any]) -> int:
    """OpenAI Responses: `instructions` plus `input` (string or list of items)."""
    chars = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        chars += len(instructions)
    items = body.get("input")
    if isinstance(items, str):
        chars += len(items)
    elif isinstance(items, list):
        chars += _messages_chars(items)
    return count_from_chars(chars)


def anthropic_input_tokens(body: dict[str, Any]) -> int:
    """Anthropic messages: `system` (string or blocks) plus `messages[*].content`."""
    chars = _content_chars(body.get("system")) + _messages_chars(body.get("messages"))
    return count_from_chars(chars)


def delta_text(index: int) -> str:
    return f"tok{index} "


@dataclass(frozen=True, slots=True)
class Generation:
    """What the simulated model "produces" for one request."""

    deltas: tuple[str, ...]
    truncated: bool  # True when capped by the request's max tokens
    input_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def output_tokens(self) -> int:
        return len(self.deltas)


def make_generation(chunks: int, max_tokens: int | None, input_tokens: int) -> Generation:
    count = chunks
    truncated = False
    if max_tokens is not None and max_tokens < chunks:
        count = max_tokens
        truncated = True
    return Generation(
        deltas=tuple(delta_text(i) for i in range(count)),
        truncated=truncated,
        input_tokens=input_tokens,
    )
