"""What a request's hold covers, and the 402 when it does not fit.

The bound comes from the adapter (what the body itself allows: see
proxy.providers.bounds), plus the recorded tokens of an answer the request
continues, capped by the model's context window, or the whole window where the
body cannot bound its input (contract section 10).
"""

from __future__ import annotations

from redis.exceptions import RedisError

from proxy.errors import ProxyError
from proxy.providers import Adapter
from proxy.providers.bounds import RequestBound
from proxy.state import Gateway
from shared import redis_keys
from shared.balance_view import KeyBudget
from shared.catalog import ModelPrice
from shared.money import units_to_usd, usd_places, usd_str


def request_bound(
    adapter: Adapter, body: dict, raw: bytes, model: str, price: ModelPrice
) -> RequestBound:
    """The hold's bound of a request that continues nothing Meterway recorded."""
    return fit_window(adapter.bound(body, raw, price), model, price)


async def hold_bound(
    gw: Gateway, user_id: int, adapter: Adapter, body: dict, raw: bytes, model: str,
    price: ModelPrice,
) -> RequestBound:  # fmt: skip
    """What the hold covers: the body's own bound (plus the recorded tokens of
    the answer it continues), capped by the model's context window, or the
    whole window where the body cannot bound its input."""
    bound = adapter.bound(body, raw, price)
    earlier = None
    if bound.continues is not None:
        earlier = await remembered_tokens(gw, user_id, bound.continues)
    return fit_window(bound, model, price, earlier)


async def remembered_tokens(gw: Gateway, user_id: int, response_id: str) -> int | None:
    """Input + output tokens of an answer this user got through Meterway, as
    billed; None when unknown (another gateway's, expired, or Redis failing)."""
    try:
        value = await gw.redis.get(redis_keys.response_tokens(user_id, response_id))
    except RedisError:
        return None
    return int(value) if value is not None else None


def fit_window(
    bound: RequestBound, model: str, price: ModelPrice, earlier_tokens: int | None = None
) -> RequestBound:
    if bound.continues is not None:
        if earlier_tokens is None:
            bound.server_context = bound.server_context or "a previous response"
        else:
            bound.input_tokens += earlier_tokens
    window = price.context_window
    if window is not None and bound.inputs > 1:  # each input has its own window
        window *= bound.inputs
    if bound.server_context is not None:
        if window is None:
            raise ProxyError(
                400,
                f"A request with {bound.server_context} needs the model's context_window"
                f" in the model catalog, and {model} has none; ask the operator to add it",
                code="context_window_required",
            )
        bound.input_tokens = window
    elif window is not None and bound.input_tokens > window:
        bound.input_tokens = window
    return bound


def insufficient_balance(hold_units: int, available_units: int) -> ProxyError:
    """A 402 that says what the request needed and what there was."""
    needs = units_to_usd(hold_units)
    available = units_to_usd(max(available_units, 0))
    return ProxyError(
        402,
        f"Insufficient credit balance: this request needs up to {usd_places(needs, up=True)}"
        f" USD, {usd_places(available, up=False)} available; lower max_tokens"
        " (the hold assumes the most the request can cost) or add credit",
        code="insufficient_balance",
        headers={
            "x-meterway-hold-usd": usd_str(needs),
            "x-meterway-available-usd": usd_str(available),
        },
    )


def key_budget_exceeded(hold_units: int, left_units: int, budget: KeyBudget) -> ProxyError:
    """A 402 for the key's budget: what the request needed, what the budget has left."""
    needs = units_to_usd(hold_units)
    left = units_to_usd(max(left_units, 0))
    return ProxyError(
        402,
        f"API key budget exceeded: this request needs up to {usd_places(needs, up=True)}"
        f" USD, {usd_places(left, up=False)} left of this key's budget"
        f" of {usd_places(units_to_usd(budget.units), up=False)} USD for this period;"
        " lower max_tokens or raise the key's budget",
        code="key_budget_exceeded",
        headers={
            "x-meterway-hold-usd": usd_str(needs),
            "x-meterway-available-usd": usd_str(left),
        },
    )
