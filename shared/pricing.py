"""Usage -> cost, the contract's formula, Decimal only."""

from __future__ import annotations

from decimal import Decimal

from shared.catalog import ModelPrice
from shared.events import TokenUsage
from shared.money import exact

MILLION = Decimal(1_000_000)


def cost_usd(usage: TokenUsage, price: ModelPrice, rate_multiplier: Decimal) -> Decimal:
    """Exact cost of one request in USD.

    cost = (uncached_input*in + cache_read*cr + cache_write*cw + output*out) / 1e6
           * user.rate_multiplier * model.multiplier
    Anthropic's 1-hour cache writes are priced at `cache_write_1h_per_mtok`.
    """
    cache_write_5m = usage.cache_write_tokens - usage.cache_write_1h_tokens
    with exact():  # never a rounded digit (raises instead)
        token_cost = (
            usage.uncached_input_tokens * price.input_per_mtok
            + usage.cache_read_tokens * price.cache_read
            + cache_write_5m * price.cache_write
            + usage.cache_write_1h_tokens * price.cache_write_1h
            + usage.output_tokens * price.output_per_mtok
        )
        return token_cost / MILLION * rate_multiplier * price.multiplier


def hold_usd(
    input_tokens: int, output_tokens: int, price: ModelPrice, rate_multiplier: Decimal
) -> Decimal:
    """The most a request can cost: its input bound at the dearest input price
    plus its output bound."""
    with exact():
        token_cost = input_tokens * price.dearest_input + output_tokens * price.output_per_mtok
        return token_cost / MILLION * rate_multiplier * price.multiplier
