"""Long-context tiers, service tiers and web-search calls (contract section 5's
catalog additions), in the charge and in the hold, to the exact decimal."""

from __future__ import annotations

from decimal import Decimal

from shared.catalog import ModelPrice
from shared.events import TokenUsage
from shared.pricing import cost_usd, hold_usd

ONE = Decimal(1)

PRICE = ModelPrice.model_validate(
    {
        "provider": "anthropic",
        "input_per_mtok": "3", "output_per_mtok": "15", "cache_read_per_mtok": "0.3",
        "cache_write_per_mtok": "3.75",
        "tiers": [
            {"above_input_tokens": 200000, "input_per_mtok": "6", "output_per_mtok": "22.5"},
            {"above_input_tokens": 100000, "input_per_mtok": "4"},
        ],
        "service_tiers": {
            "priority": {"input_per_mtok": "5", "output_per_mtok": "25",
                         "tiers": [{"above_input_tokens": 200000, "input_per_mtok": "10"}]},
            "flex": {"input_per_mtok": "1.5", "output_per_mtok": "7.5"},
        },
        "web_search_per_call": "0.01",
    }
)  # fmt: skip


def usage(**fields) -> TokenUsage:
    return TokenUsage(**fields)


def test_below_every_tier_the_base_prices_apply():
    cost = cost_usd(usage(uncached_input_tokens=1000, output_tokens=100), PRICE, ONE)
    assert cost == Decimal("0.0045")  # (1000 x 3 + 100 x 15) / 1e6


def test_above_a_threshold_every_token_is_priced_at_the_highest_tier_reached():
    at = usage(uncached_input_tokens=100_000, output_tokens=10)  # not above: base
    assert cost_usd(at, PRICE, ONE) == Decimal("0.30015")
    above = usage(uncached_input_tokens=100_001, output_tokens=10)  # tier 100k: input 4
    assert cost_usd(above, PRICE, ONE) == Decimal("0.400154")  # output keeps the base 15
    # the whole input decides: cache reads count toward the threshold; a missing
    # cache price is the input price of the tier that applies
    mixed = usage(uncached_input_tokens=150_000, cache_read_tokens=60_000, output_tokens=1000)
    # tier 200k: input 6, output 22.5; cache read keeps the base 0.3 (set in the model)
    assert cost_usd(mixed, PRICE, ONE) == Decimal("0.9405")  # 0.9 + 0.018 + 0.0225


def test_a_reported_service_tier_prices_the_request_and_carries_its_own_tiers():
    flex = usage(uncached_input_tokens=1000, output_tokens=100, service_tier="flex")
    assert cost_usd(flex, PRICE, ONE) == Decimal("0.00225")
    priority = usage(uncached_input_tokens=250_000, output_tokens=100, service_tier="priority")
    assert cost_usd(priority, PRICE, ONE) == Decimal("2.5025")  # 250k x 10 + 100 x 25
    standard = usage(uncached_input_tokens=1000, output_tokens=100, service_tier="standard")
    assert cost_usd(standard, PRICE, ONE) == Decimal("0.0045")  # not listed: the model's


def test_web_search_calls_are_billed_per_call_times_the_multipliers():
    searched = usage(uncached_input_tokens=1000, output_tokens=100, web_search_calls=3)
    assert cost_usd(searched, PRICE, Decimal("1.5")) == Decimal("0.05175")  # (0.0045+0.03)x1.5


def test_the_hold_is_the_dearest_set_at_the_tier_its_input_bound_reaches():
    # no tier requested: every listed one; priority is dearest (5 in, 25 out)
    assert hold_usd(1000, 100, PRICE, ONE) == Decimal("0.0075")  # 1000 x 5 + 100 x 25
    # flex asked for: the model's base (3.75 dearest input) or flex, whichever is more
    assert hold_usd(1000, 100, PRICE, ONE, "flex") == Decimal("0.00525")
    # above 200k: priority's own tier (10) against the model's (6, 22.5)
    assert hold_usd(250_000, 100, PRICE, ONE) == Decimal("2.5025")
    # the most web-search calls the request allows
    assert hold_usd(1000, 100, PRICE, ONE, "flex", tool_calls=5) == Decimal("0.05525")


# --- what the adapters read and bound --------------------------------------------------


def test_adapters_read_the_reported_tier_and_web_searches():
    import orjson

    from proxy.providers import ADAPTERS

    chat = ADAPTERS[("openai", "chat/completions")]
    body = {"service_tier": "flex", "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
    assert chat.usage_from_body(body).service_tier == "flex"
    responses = ADAPTERS[("openai", "responses")]
    answer = {
        "service_tier": "priority",
        "output": [{"type": "web_search_call", "status": "completed"},
                   {"type": "web_search_call", "status": "failed"}, {"type": "message"}],
        "usage": {"input_tokens": 10, "output_tokens": 2},
    }  # fmt: skip
    usage = responses.usage_from_body(answer)
    assert (usage.service_tier, usage.web_search_calls) == ("priority", 2)
    scanner = responses.scanner(responses.prepare({"stream": True}, b"{}"))
    event = {"type": "response.completed", "response": answer}
    scanner.feed(b"event: response.completed\ndata: " + orjson.dumps(event) + b"\n\n")
    assert scanner.usage == usage
    messages = ADAPTERS[("anthropic", "messages")]
    anthropic = {"usage": {"input_tokens": 5, "output_tokens": 1, "service_tier": "priority",
                           "server_tool_use": {"web_search_requests": 4}}}  # fmt: skip
    usage = messages.usage_from_body(anthropic)
    assert (usage.service_tier, usage.web_search_calls) == ("priority", 4)


def test_the_hold_covers_the_most_web_searches_a_request_allows():
    import orjson
    import pytest

    from proxy.errors import ProxyError
    from proxy.providers import ADAPTERS

    messages = ADAPTERS[("anthropic", "messages")]
    body = {"model": "m", "max_tokens": 10, "messages": [],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}  # fmt: skip
    bound = messages.bound(body, orjson.dumps(body), PRICE)
    assert bound.tool_calls == 3 and bound.server_context == "server tools"
    del body["tools"][0]["max_uses"]
    with pytest.raises(ProxyError) as caught:  # nothing bounds the calls
        messages.bound(body, orjson.dumps(body), PRICE)
    assert caught.value.status == 400 and caught.value.code == "tool_calls_unbounded"
    capped = PRICE.model_copy(update={"max_tool_calls": 7})
    assert messages.bound(body, orjson.dumps(body), capped).tool_calls == 7
    responses = ADAPTERS[("openai", "responses")]
    body = {"model": "m", "input": "x", "max_tool_calls": 2, "service_tier": "flex",
            "tools": [{"type": "web_search"}]}  # fmt: skip
    bound = responses.bound(body, orjson.dumps(body), PRICE)
    assert (bound.tool_calls, bound.service_tier) == (2, "flex")


# --- through the proxy and the worker ----------------------------------------------------


async def test_the_usage_record_names_the_service_tier(proxy_url, accounts, pg, worker):
    import aiohttp

    from tests.clients import anthropic_client
    from tests.conftest import wait_settled

    acct = await accounts.create("1")
    client = anthropic_client(proxy_url, acct.key)
    raw = await client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    await wait_settled(pg, [raw.headers["x-request-id"]])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {acct.key}"}) as http:
        async with http.get(f"{proxy_url}/v1/account/usage?limit=1") as r:
            record = (await r.json())["data"][0]
    assert record["service_tier"] == "standard" and record["web_search_calls"] == 0


def test_the_proxys_integer_units_equal_the_exact_decimal_rounded_up():
    import random

    from shared.catalog import load_catalog
    from shared.config import REPO_ROOT
    from shared.money import units_ceil
    from shared.pricing import cost_units, hold_units

    odd = ModelPrice(provider="openai", input_per_mtok=Decimal("0.0375"),
                     output_per_mtok=Decimal("1.3333"), multiplier=Decimal("1.37"),
                     web_search_per_call=Decimal("0.0125"))  # fmt: skip
    models = [*load_catalog(REPO_ROOT / "model_catalog.json").models.values(), PRICE, odd]
    rnd = random.Random(7)
    for _ in range(3000):
        price = rnd.choice(models)
        rate = Decimal(rnd.choice(["1", "1.5", "0.000001", "999.999999", "1.234567"]))
        tier = rnd.choice([None, "flex", "priority", "auto", "standard"])
        writes = rnd.randrange(0, 300_000)
        used = TokenUsage(
            uncached_input_tokens=rnd.randrange(0, 400_000),
            cache_read_tokens=rnd.randrange(0, 50_000), cache_write_tokens=writes,
            cache_write_1h_tokens=rnd.randrange(0, writes + 1),
            output_tokens=rnd.randrange(0, 100_000), web_search_calls=rnd.randrange(0, 5),
            service_tier=tier,
        )  # fmt: skip
        assert cost_units(used, price, rate) == units_ceil(cost_usd(used, price, rate))
        held = (rnd.randrange(0, 2_000_000), rnd.randrange(0, 200_000), price, rate, tier, 3)
        assert hold_units(*held) == units_ceil(hold_usd(*held))
