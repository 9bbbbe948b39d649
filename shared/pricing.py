"""Usage -> cost, the contract's formula, Decimal only.

The proxy's hold and the worker's charge use this one module: the charge is
what the usage costs at the prices that apply to it (service tier, long-context
tier); the hold is the most a request could cost at any of them.
"""

from __future__ import annotations

from decimal import Decimal

from shared.catalog import ModelPrice
from shared.events import TokenUsage
from shared.money import exact

MILLION = Decimal(1_000_000)


def cost_usd(usage: TokenUsage, price: ModelPrice, rate_multiplier: Decimal) -> Decimal:
    """Exact cost of one request in USD.

    cost = ( sum of tokens * the prices that apply / 1e6
             + web-search calls * web_search_per_call )
           * user.rate_multiplier * model.multiplier
    The prices that apply: the reported service tier's (when the model lists
    it), at the long-context tier the whole input reaches. Anthropic's 1-hour
    cache writes have their own price.
    """
    prices = price.prices(usage.service_tier, usage.input_tokens)
    cache_write_5m = usage.cache_write_tokens - usage.cache_write_1h_tokens
    with exact():  # never a rounded digit (raises instead)
        token_cost = (
            usage.uncached_input_tokens * prices.input
            + usage.cache_read_tokens * prices.cache_read
            + cache_write_5m * prices.cache_write
            + usage.cache_write_1h_tokens * prices.cache_write_1h
            + usage.output_tokens * prices.output
        )
        total = token_cost / MILLION
        if usage.web_search_calls and price.web_search_per_call is not None:
            total += usage.web_search_calls * price.web_search_per_call
        return total * rate_multiplier * price.multiplier


def hold_usd(
    input_tokens: int,
    output_tokens: int,
    price: ModelPrice,
    rate_multiplier: Decimal,
    requested_tier: str | None = None,
    tool_calls: int = 0,
) -> Decimal:
    """The most a request can cost: its input bound at the dearest input price
    and its output bound at the output price, of the dearest price set it could
    be served at (the model's, and the requested service tier's or, none or
    `auto` asked, every listed one; at the long-context tier the input bound
    reaches), plus its most web-search calls."""
    with exact():
        token_cost = max(
            input_tokens * prices.dearest_input + output_tokens * prices.output
            for prices in price.hold_prices(requested_tier, input_tokens)
        )
        total = token_cost / MILLION
        if tool_calls and price.web_search_per_call is not None:
            total += tool_calls * price.web_search_per_call
        return total * rate_multiplier * price.multiplier


# --- the same in whole nano-USD units, by integer arithmetic (the proxy's hot path) -----

_UNITS_PER_USD = 1_000_000_000


def _units_ceil(token_cost: int, scale: int, calls: int, price: ModelPrice, rate: Decimal) -> int:
    """ceil((token_cost / scale / 1e6 + calls x web_search_per_call) x rate x
    multiplier x 1e9), exactly: every price is an integer over `scale`."""
    numerator, denominator = token_cost * 1000, scale
    search = price.web_search_ratio
    if calls and search is not None:
        numerator = numerator * search[1] + calls * search[0] * _UNITS_PER_USD * scale
        denominator *= search[1]
    rate_num, rate_den = rate.as_integer_ratio()
    mult_num, mult_den = price.multiplier_ratio
    return -(-numerator * rate_num * mult_num // (denominator * rate_den * mult_den))


def cost_units(usage: TokenUsage, price: ModelPrice, rate_multiplier: Decimal) -> int:
    """`cost_usd` in whole nano-USD, rounded up: equal to
    `units_ceil(cost_usd(...))`, without Decimal arithmetic."""
    if price.single_price_set:
        p = price.base.whole
    else:
        p = price.prices(usage.service_tier, usage.input_tokens).whole
    cache_write_5m = usage.cache_write_tokens - usage.cache_write_1h_tokens
    token_cost = (
        usage.uncached_input_tokens * p.input
        + usage.cache_read_tokens * p.cache_read
        + cache_write_5m * p.cache_write
        + usage.cache_write_1h_tokens * p.cache_write_1h
        + usage.output_tokens * p.output
    )
    return _units_ceil(token_cost, p.scale, usage.web_search_calls, price, rate_multiplier)


def hold_units(
    input_tokens: int,
    output_tokens: int,
    price: ModelPrice,
    rate_multiplier: Decimal,
    requested_tier: str | None = None,
    tool_calls: int = 0,
) -> int:
    """`hold_usd` in whole nano-USD, rounded up: equal to
    `units_ceil(hold_usd(...))`, without Decimal arithmetic."""
    if price.single_price_set:
        p = price.base.whole
        token_cost = input_tokens * p.dearest_input + output_tokens * p.output
        return _units_ceil(token_cost, p.scale, tool_calls, price, rate_multiplier)
    sets = [s.whole for s in price.hold_prices(requested_tier, input_tokens)]
    return max(
        _units_ceil(
            input_tokens * p.dearest_input + output_tokens * p.output,
            p.scale,
            tool_calls,
            price,
            rate_multiplier,
        )
        for p in sets
    )
