"""Upper bounds of what one request can consume, read from its body alone.

A hold must be the most a request can cost (contract section 10), so these are
bounds, not estimates:

- text: at most one token per byte. Every tokenizer in use is byte-level BPE,
  so a token covers at least one byte; the raw JSON body is at least as long as
  the text it carries (escapes only lengthen it), so `len(raw)` bounds all the
  text, keys and structure included, plus a margin for the few special tokens a
  provider adds per message.
- images: the provider's published most-tokens-per-image for the model (the
  catalog's `max_tokens_per_image`, else the provider's worst case), and the
  bytes of an inline image are not counted as text.
- documents, file ids, server-side context (previous responses, conversations,
  stored prompts, background runs, hosted tools that inject content): the body
  cannot bound them, so the input part is the model's `context_window`.
- output: the request's cap (or the model's) times the choices it asks for.

Nothing here parses the body again: the adapters walk the already parsed body,
and only when a cheap byte search says it may hold media or server-side
references; an ordinary chat request costs one `in` scan per marker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from proxy.errors import ProxyError
from shared.catalog import ModelPrice

# Special tokens a provider adds per request (role markers, separators, a tool
# preamble): far fewer than the JSON bytes of any message, but never negative.
TEXT_MARGIN_TOKENS = 64
# Token counts and caps beyond this are not numbers any provider accepts.
MAX_COUNT = 2**63 - 1


@dataclass(slots=True)
class RequestBound:
    """The most input and output tokens one request can be billed for."""

    input_tokens: int
    output_tokens: int
    # why the body cannot bound its input (the hold takes the context window)
    server_context: str | None = None
    # the id of an earlier answer this request continues: its input joins this
    # one's (the tokens Meterway recorded for it, else the context window)
    continues: str | None = None
    # the service tier the request asks for (None: none, so any listed one)
    service_tier: str | None = None
    # the most paid tool calls (web searches) the request allows
    tool_calls: int = 0
    # separate inputs, each limited by the context window on its own (an
    # embeddings batch, a list of completion prompts): the window cap is this many
    inputs: int = 1


@dataclass(slots=True)
class MediaCount:
    """What a walk over the content of a request found."""

    images: int = 0
    inline_bytes: int = 0  # bytes of inline media, not counted as text
    extra_tokens: int = 0  # fixed overheads (e.g. a tool's system prompt)
    server_context: str | None = None
    continues: str | None = None

    def image(self, inline: str | None = None) -> None:
        self.images += 1
        if inline:
            self.inline_bytes += len(inline)

    def unbounded(self, reason: str) -> None:
        if self.server_context is None:
            self.server_context = reason


# Given a dict of the body and the running count: True when it was a media part
# fully accounted for (its children are not walked).
PartRule = Callable[[dict, MediaCount], bool]


def walk(node: object, rule: PartRule, count: MediaCount) -> None:
    """Visit every dict below `node` (iteratively: bodies may nest deeply)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not rule(item, count):
                stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def may_hold(raw: bytes, markers: Iterable[bytes]) -> bool:
    """Whether the body may hold what a marker names. A `\\u` escape can spell any
    name without its bytes, so a body with one is always looked at."""
    if b"\\u" in raw:
        return True
    for marker in markers:
        if marker in raw:
            return True
    return False


def text_bound(raw: bytes, count: MediaCount, tokens_per_image: int) -> int:
    return (
        max(len(raw) - count.inline_bytes, 0)
        + TEXT_MARGIN_TOKENS
        + count.images * tokens_per_image
        + count.extra_tokens
    )


def positive_count(body: dict, name: str, *, default: int | None = None) -> int | None:
    """A token cap or a number of choices: a positive whole number, or None when
    absent or not one (the provider refuses those). Beyond int64: a 400 here,
    since no hold could be placed for it."""
    value = body.get(name)
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or value <= 0:
        return default
    if value > MAX_COUNT:
        raise ProxyError(400, f"'{name}' is out of range", code="invalid_value")
    return value


def requested_tier(body: dict) -> str | None:
    value = body.get("service_tier")
    return value if isinstance(value, str) else None


def most_tool_calls(own_limit: int | None, price: ModelPrice, tool: str) -> int:
    """The most paid calls of `tool` a request allows: its own limit, else the
    model's `max_tool_calls`; a model that prices the calls needs one of them."""
    if price.web_search_per_call is None:
        return 0
    limit = own_limit or price.max_tool_calls
    if limit is None:
        raise ProxyError(
            400,
            f"Set a limit on {tool} calls: this model bills each call, and the hold must"
            " cover the most the request can make",
            code="tool_calls_unbounded",
        )
    return limit


def choices(body: dict) -> int:
    """`n` / `best_of`: the output part of the hold is multiplied by the larger."""
    if "n" not in body and "best_of" not in body:
        return 1
    return max(positive_count(body, "n") or 1, positive_count(body, "best_of") or 1)
