"""How much larger holds are as upper bounds (section 10) than the earlier
estimate (one token per four bytes), for ordinary chat traffic.

    python -m bench.hold_growth

Prints one row per request shape: the hold before and after, and the ratio.
"""

from __future__ import annotations

import json
from decimal import Decimal

import orjson

from proxy.handlers import prompt_estimate
from proxy.hold_bound import request_bound
from proxy.providers import ADAPTERS
from shared.catalog import load_catalog
from shared.config import REPO_ROOT
from shared.pricing import hold_usd

CATALOG = load_catalog(REPO_ROOT / "model_catalog.json")
TURN = "Could you explain how a hash map resolves collisions, with a short example? " * 3


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for _ in range(turns):
        messages += [{"role": "user", "content": TURN}, {"role": "assistant", "content": TURN * 2}]
    return [*messages, {"role": "user", "content": "Thanks, one more question?"}]


SHAPES = [
    ("chat/completions", "gpt-4o", "1 turn, no max_tokens", {"messages": conversation(0)}),
    ("chat/completions", "gpt-4o", "1 turn, max_tokens 1000",
     {"messages": conversation(0), "max_tokens": 1000}),
    ("chat/completions", "gpt-4o-mini", "10 turns, max_tokens 1000",
     {"messages": conversation(10), "max_tokens": 1000}),
    ("chat/completions", "gpt-5", "10 turns, no cap", {"messages": conversation(10)}),
    ("messages", "claude-sonnet-4-5", "1 turn, max_tokens 1024",
     {"messages": conversation(0)[1:], "max_tokens": 1024}),
    ("messages", "claude-sonnet-4-5", "30 turns, max_tokens 4096",
     {"messages": conversation(30)[1:], "max_tokens": 4096}),
]  # fmt: skip


def main() -> None:
    one = Decimal(1)
    print("| endpoint | model | request | body bytes | hold before | hold now | ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for endpoint, model, label, extra in SHAPES:
        provider = CATALOG.models[model].provider
        adapter = ADAPTERS[(provider, endpoint)]
        price = CATALOG.models[model]
        body = {"model": model, **extra}
        raw = json.dumps(body).encode()
        parsed = orjson.loads(raw)
        cap = adapter.output_cap(parsed) or price.max_output_tokens
        before = hold_usd(prompt_estimate(raw), cap, price, one)
        bound = request_bound(adapter, parsed, raw, model, price)
        now = hold_usd(bound.input_tokens, bound.output_tokens, price, one)
        ratio = now / before
        print(f"| {endpoint} | {model} | {label} | {len(raw):,} | {before:.4f} | {now:.4f}"
              f" | {ratio:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
