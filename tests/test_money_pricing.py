"""Pure money logic: exact Decimal conversions, the model catalog, the pricing
formula, the usage event and proxy-key helpers. No servers, no fixtures from
conftest."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from shared.catalog import Catalog, ModelPrice, load_catalog
from shared.events import TokenUsage, UsageEvent
from shared.keys import (
    PROXY_KEY_PREFIX,
    SecretBox,
    hash_proxy_key,
    new_proxy_key,
    visible_prefix,
)
from shared.money import (
    UNITS_PER_USD,
    to_decimal,
    units_ceil,
    units_floor,
    units_to_usd,
    usd_str,
)
from shared.pricing import cost_usd, hold_usd
from shared.provider_config import BUILTINS as PROVIDERS

SHIPPED_CATALOG = Path(__file__).resolve().parents[1] / "model_catalog.json"


def same_decimal(actual: object, expected: str) -> None:
    """Exact Decimal equality, and the value really is a Decimal (not a float)."""
    assert isinstance(actual, Decimal), f"{actual!r} is a {type(actual).__name__}"
    assert actual == Decimal(expected), f"{actual!r} != Decimal({expected!r})"


# ---------------------------------------------------------------- money


def test_units_per_usd_is_nano_dollars():
    assert UNITS_PER_USD == 1_000_000_000


@pytest.mark.parametrize(
    ("amount", "floor", "ceil"),
    [
        ("0", 0, 0),
        ("1", 1_000_000_000, 1_000_000_000),
        ("0.000000001", 1, 1),  # exactly one unit: no rounding either way
        ("0.0000000001", 0, 1),  # a tenth of a unit
        ("0.0000000019", 1, 2),
        ("1.0000000015", 1_000_000_001, 1_000_000_002),
        ("12.345678901234", 12_345_678_901, 12_345_678_902),
        # negatives: floor goes toward -inf, ceil toward +inf (not toward zero)
        ("-0.0000000001", -1, 0),
        ("-0.0000000019", -2, -1),
        ("-1.0000000015", -1_000_000_002, -1_000_000_001),
        ("-5", -5_000_000_000, -5_000_000_000),
        # a big balance stays exact
        ("5000000.123456789", 5_000_000_123_456_789, 5_000_000_123_456_789),
        ("5000000.1234567891", 5_000_000_123_456_789, 5_000_000_123_456_790),
    ],
)
def test_units_floor_and_ceil_round_in_their_direction(amount, floor, ceil):
    value = Decimal(amount)
    assert units_floor(value) == floor
    assert units_ceil(value) == ceil
    assert type(units_floor(value)) is int
    assert type(units_ceil(value)) is int


def test_units_floor_never_above_and_ceil_never_below_the_amount():
    for text in ("0.3333333333333", "-0.3333333333333", "7.0000000000001", "-7.0000000000001"):
        amount = Decimal(text)
        assert units_to_usd(units_floor(amount)) <= amount
        assert units_to_usd(units_ceil(amount)) >= amount
        assert units_ceil(amount) - units_floor(amount) == 1


def test_units_rounding_is_exact_for_long_amounts():
    # 1,000,000.000000000 999999999999999 USD = 1,000,000,000,000,000.999... units
    balance = Decimal("1000000.000000000999999999999999")
    assert units_floor(balance) == 1_000_000_000_000_000
    # 0.000000001 000...0001 USD = 1.000...0001 units: the hold must be 2 units
    hold = Decimal("0.000000001" + "0" * 30 + "1")
    assert units_ceil(hold) == 2


@pytest.mark.parametrize(
    ("units", "usd"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (42_500, "0.0000425"),
        (1_000_000_000, "1"),
        (-1_234_567_891, "-1.234567891"),
        (5_000_000 * UNITS_PER_USD, "5000000"),
        (9_007_199_254_740_993, "9007199.254740993"),  # above 2**53: still exact
    ],
)
def test_units_to_usd_is_exact(units, usd):
    same_decimal(units_to_usd(units), usd)


def test_units_round_trip():
    for units in (0, 1, 999_999_999, 123_456_789_012_345, -77):
        assert units_floor(units_to_usd(units)) == units
        assert units_ceil(units_to_usd(units)) == units


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("4.25E-5"), "0.0000425"),  # no exponent
        (Decimal("1E-9"), "0.000000001"),
        (Decimal("1.5E-7"), "0.00000015"),
        (Decimal("1.500"), "1.5"),  # trailing zeros trimmed
        (Decimal("100.000"), "100"),  # ... and the dot with them
        (Decimal("100"), "100"),  # integer zeros are kept
        (Decimal("1E+3"), "1000"),
        (Decimal("-1.250"), "-1.25"),
        (Decimal("0"), "0"),
        (Decimal("0.000"), "0"),
        (Decimal("0E-9"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("-0.00"), "0"),
        (Decimal("5000000.123456789"), "5000000.123456789"),
    ],
)
def test_usd_str(amount, text):
    assert usd_str(amount) == text


def test_usd_str_of_units():
    assert usd_str(units_to_usd(42_500)) == "0.0000425"
    assert usd_str(units_to_usd(0)) == "0"
    assert usd_str(units_to_usd(2_500_000_000)) == "2.5"


def test_to_decimal_rejects_booleans():
    with pytest.raises(TypeError):
        to_decimal(True)
    with pytest.raises(TypeError):
        to_decimal(False)


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, b"1", object()])
def test_to_decimal_rejects_non_amounts(value):
    with pytest.raises(TypeError):
        to_decimal(value)


def test_to_decimal_float_goes_through_repr():
    # Decimal(0.1) would be 0.1000000000000000055511151231257827...
    assert Decimal.from_float(0.1) != Decimal("0.1")
    same_decimal(to_decimal(0.1), "0.1")
    assert to_decimal(0.1).as_tuple() == Decimal("0.1").as_tuple()
    same_decimal(to_decimal(2.675), "2.675")
    same_decimal(to_decimal(1e-7), "0.0000001")
    same_decimal(to_decimal(-3.0), "-3")


def test_to_decimal_ints_strings_and_decimals_are_exact():
    same_decimal(to_decimal(5), "5")
    same_decimal(to_decimal(10**20 + 1), "100000000000000000001")
    exact = to_decimal("2.50")
    assert exact.as_tuple() == Decimal("2.50").as_tuple()  # digits kept as written
    same_decimal(to_decimal("0.12345678901234567890123"), "0.12345678901234567890123")
    value = Decimal("1.1")
    assert to_decimal(value) is value


# ---------------------------------------------------------------- catalog


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog(SHIPPED_CATALOG)


def test_shipped_catalog_loads(shipped):
    assert shipped.currency == "USD"
    assert len(shipped.models) > 10
    assert {m.provider for m in shipped.models.values()} == {"openai", "anthropic", "gemini"}
    for name, model in shipped.models.items():
        assert model.provider in PROVIDERS, name
        for field in ("input_per_mtok", "output_per_mtok", "multiplier"):
            assert isinstance(getattr(model, field), Decimal), (name, field)


def test_shipped_gpt_4o(shipped):
    m = shipped.get("gpt-4o")
    assert m is not None
    assert m.provider == "openai"
    same_decimal(m.input_per_mtok, "2.5")
    same_decimal(m.output_per_mtok, "10")
    same_decimal(m.cache_read_per_mtok, "1.25")
    same_decimal(m.cache_read, "1.25")
    same_decimal(m.multiplier, "1")
    assert m.max_output_tokens == 16384
    # no cache-write price for OpenAI: falls back to the input price
    assert m.cache_write_per_mtok is None
    same_decimal(m.cache_write, "2.5")
    same_decimal(m.cache_write_1h, "2.5")


def test_shipped_claude_sonnet_4_5(shipped):
    m = shipped.get("claude-sonnet-4-5")
    assert m is not None
    assert m.provider == "anthropic"
    same_decimal(m.input_per_mtok, "3")
    same_decimal(m.output_per_mtok, "15")
    same_decimal(m.cache_read, "0.3")
    same_decimal(m.cache_write, "3.75")
    same_decimal(m.cache_write_1h, "6")
    same_decimal(m.multiplier, "1")
    assert m.max_output_tokens == 64000


def test_shipped_catalog_decimals_are_not_floats(shipped):
    # 0.075 and 0.15 are not representable as binary floats
    m = shipped.get("gpt-4o-mini")
    assert m is not None
    assert m.cache_read_per_mtok.as_tuple() == Decimal("0.075").as_tuple()
    assert m.input_per_mtok.as_tuple() == Decimal("0.15").as_tuple()


def test_catalog_lookups(shipped):
    assert shipped.get("no-such-model") is None
    openai = shipped.for_provider("openai")
    anthropic = shipped.for_provider("anthropic")
    assert "gpt-4o" in openai and "gpt-4o" not in anthropic
    assert "claude-sonnet-4-5" in anthropic and "claude-sonnet-4-5" not in openai
    gemini = shipped.for_provider("gemini")
    assert "gemini-2.5-flash" in gemini
    assert len(openai) + len(anthropic) + len(gemini) == len(shipped.models)
    assert shipped.for_provider("google") == {}


def write_catalog(tmp_path: Path, models: dict | str) -> Path:
    path = tmp_path / "catalog.json"
    text = models if isinstance(models, str) else json.dumps({"currency": "USD", "models": models})
    path.write_text(text, encoding="utf-8")
    return path


def test_catalog_defaults_and_cache_fallbacks(tmp_path):
    path = write_catalog(
        tmp_path,
        '{"models": {"plain": {"provider": "anthropic", "input_per_mtok": 0.8,'
        ' "output_per_mtok": 4}}}',
    )
    catalog = load_catalog(path)
    assert catalog.currency == "USD"
    m = catalog.models["plain"]
    same_decimal(m.multiplier, "1")
    assert m.max_output_tokens == 4096
    assert m.cache_read_per_mtok is None
    assert m.cache_write_per_mtok is None
    assert m.cache_write_1h_per_mtok is None
    same_decimal(m.cache_read, "0.8")
    same_decimal(m.cache_write, "0.8")
    same_decimal(m.cache_write_1h, "0.8")


def test_catalog_zero_cache_price_is_not_a_missing_one():
    m = ModelPrice(
        provider="openai",
        input_per_mtok=Decimal(2),
        output_per_mtok=Decimal(8),
        cache_read_per_mtok=Decimal(0),
    )
    same_decimal(m.cache_read, "0")


def test_catalog_reads_long_decimals_exactly(tmp_path):
    # more digits than a float holds: only parse_float=Decimal keeps them all
    path = write_catalog(
        tmp_path,
        '{"models": {"m": {"provider": "openai", "input_per_mtok": 0.12345678901234567890123,'
        ' "output_per_mtok": 1, "multiplier": 1.10000000000000000001}}}',
    )
    m = load_catalog(path).models["m"]
    same_decimal(m.input_per_mtok, "0.12345678901234567890123")
    same_decimal(m.multiplier, "1.10000000000000000001")


def test_model_price_float_input_goes_through_repr():
    m = ModelPrice.model_validate(
        {"provider": "openai", "input_per_mtok": 0.1, "output_per_mtok": 0.3, "multiplier": 1.1}
    )
    assert m.input_per_mtok.as_tuple() == Decimal("0.1").as_tuple()
    assert m.output_per_mtok.as_tuple() == Decimal("0.3").as_tuple()
    assert m.multiplier.as_tuple() == Decimal("1.1").as_tuple()


@pytest.mark.parametrize(
    "models",
    [
        {"m": {"provider": "openai", "input_per_mtok": -1, "output_per_mtok": 1}},
        {"m": {"provider": "openai", "input_per_mtok": 1, "output_per_mtok": -0.5}},
        {
            "m": {
                "provider": "anthropic",
                "input_per_mtok": 1,
                "output_per_mtok": 1,
                "cache_write_1h_per_mtok": -2,
            }
        },
        {"m": {"provider": "openai", "input_per_mtok": 1, "output_per_mtok": 1, "multiplier": -1}},
        # any provider's name (section 5), but a name: 2-32 of a-z 0-9 -
        {"m": {"provider": "Google AI", "input_per_mtok": 1, "output_per_mtok": 1}},
        {"m": {"input_per_mtok": 1, "output_per_mtok": 1}},
        {"m": {"provider": "openai", "input_per_mtok": 1}},
        {"m": {"provider": "openai", "input_per_mtok": "abc", "output_per_mtok": 1}},
        {
            "m": {
                "provider": "openai",
                "input_per_mtok": 1,
                "output_per_mtok": 1,
                "max_output_tokens": 0,
            }
        },
    ],
    ids=[
        "negative-input",
        "negative-output",
        "negative-cache-write-1h",
        "negative-multiplier",
        "not-a-provider-name",
        "no-provider",
        "no-output-price",
        "text-price",
        "zero-max-output",
    ],
)
def test_invalid_catalog_raises_value_error_naming_the_file(tmp_path, models):
    path = write_catalog(tmp_path, models)
    with pytest.raises(ValueError, match="model catalog") as info:
        load_catalog(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        '{"models": {',  # truncated JSON
        "not json at all",
        '{"currency": "EUR", "models": {}}',  # only USD
        '{"currency": "USD"}',  # no models
        "[]",
        '{"models": {"m": {"provider": "openai", "input_per_mtok": NaN, "output_per_mtok": 1}}}',
    ],
    ids=["truncated", "garbage", "eur", "no-models", "list", "nan-price"],
)
def test_bad_catalog_file_raises_value_error_naming_the_file(tmp_path, text):
    path = write_catalog(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_missing_catalog_file_raises_value_error(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(ValueError) as info:
        load_catalog(str(path))
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- pricing


def test_token_usage_input_total_and_defaults():
    usage = TokenUsage(
        uncached_input_tokens=7, cache_read_tokens=11, cache_write_tokens=13, output_tokens=5
    )
    assert usage.input_tokens == 7 + 11 + 13
    empty = TokenUsage()
    assert (empty.input_tokens, empty.output_tokens, empty.cache_write_1h_tokens) == (0, 0, 0)
    with pytest.raises(ValueError):
        TokenUsage(output_tokens=-1)


def test_cost_gpt_4o_with_cache_reads(shipped):
    usage = TokenUsage(uncached_input_tokens=1000, cache_read_tokens=2000, output_tokens=500)
    # 1000*2.5 + 2000*1.25 + 500*10 = 2500 + 2500 + 5000 = 10000 -> /1e6 = 0.01
    same_decimal(cost_usd(usage, shipped.models["gpt-4o"], Decimal(1)), "0.01")
    # user rate 1.2: 0.01 * 1.2 = 0.012
    same_decimal(cost_usd(usage, shipped.models["gpt-4o"], Decimal("1.2")), "0.012")


def test_cost_claude_sonnet_with_5m_and_1h_cache_writes(shipped):
    usage = TokenUsage(
        uncached_input_tokens=1200,
        cache_read_tokens=30000,
        cache_write_tokens=5000,  # of which 2000 1-hour writes, 3000 5-minute writes
        cache_write_1h_tokens=2000,
        output_tokens=800,
    )
    # 1200*3      =  3600
    # 30000*0.3   =  9000
    # 3000*3.75   = 11250   (5-minute writes)
    # 2000*6      = 12000   (1-hour writes)
    # 800*15      = 12000
    # sum 47850 -> /1e6 = 0.04785 -> * rate 1.5 = 0.071775 -> * multiplier 1
    same_decimal(cost_usd(usage, shipped.models["claude-sonnet-4-5"], Decimal("1.5")), "0.071775")


def test_cost_1h_writes_are_not_priced_as_5m_writes(shipped):
    price = shipped.models["claude-sonnet-4-5"]
    all_5m = TokenUsage(cache_write_tokens=100_000)
    all_1h = TokenUsage(cache_write_tokens=100_000, cache_write_1h_tokens=100_000)
    # 100,000 tokens (below the long-context tier) at 3.75 and at 6 per million
    same_decimal(cost_usd(all_5m, price, Decimal(1)), "0.375")
    same_decimal(cost_usd(all_1h, price, Decimal(1)), "0.6")
    # above 200,000 input tokens every token is priced at the long-context tier
    long_1h = TokenUsage(cache_write_tokens=1_000_000, cache_write_1h_tokens=1_000_000)
    same_decimal(cost_usd(long_1h, price, Decimal(1)), "12")


def test_cost_model_multiplier_and_user_rate():
    price = ModelPrice(
        provider="openai",
        input_per_mtok=Decimal("2.5"),
        output_per_mtok=Decimal("10"),
        cache_read_per_mtok=Decimal("1.25"),
        multiplier=Decimal("1.5"),
    )
    usage = TokenUsage(uncached_input_tokens=100, output_tokens=7)
    # 100*2.5 + 7*10 = 250 + 70 = 320 -> /1e6 = 0.00032 -> *0.8 = 0.000256 -> *1.5 = 0.000384
    same_decimal(cost_usd(usage, price, Decimal("0.8")), "0.000384")


def test_cost_without_cache_prices_uses_the_input_price():
    price = ModelPrice(
        provider="anthropic", input_per_mtok=Decimal("0.8"), output_per_mtok=Decimal("4")
    )
    usage = TokenUsage(
        uncached_input_tokens=10,
        cache_read_tokens=20,
        cache_write_tokens=30,
        cache_write_1h_tokens=5,
        output_tokens=40,
    )
    # (10 + 20 + 25 + 5) * 0.8 = 48; 40*4 = 160; 208 -> /1e6 = 0.000208
    same_decimal(cost_usd(usage, price, Decimal(1)), "0.000208")


def test_cost_of_one_cheap_token_is_exact(shipped):
    usage = TokenUsage(uncached_input_tokens=1)
    cost = cost_usd(usage, shipped.models["gpt-4o-mini"], Decimal(1))
    # 1 * 0.15 / 1e6 = 0.00000015
    same_decimal(cost, "0.00000015")
    assert usd_str(cost) == "0.00000015"
    assert units_ceil(cost) == 150
    assert units_floor(cost) == 150


def test_cost_of_nothing_and_free_users(shipped):
    price = shipped.models["claude-opus-4-5"]
    same_decimal(cost_usd(TokenUsage(), price, Decimal(1)), "0")
    usage = TokenUsage(uncached_input_tokens=1000, output_tokens=1000)
    same_decimal(cost_usd(usage, price, Decimal(0)), "0")


def test_hold_uses_dearest_input_price_and_output_cap(shipped):
    # sonnet: max(3, 3.75, 6) = 6; 36200*6 = 217200; 800*15 = 12000;
    # 229200 -> /1e6 = 0.2292 -> *1.5 = 0.3438
    same_decimal(
        hold_usd(36200, 800, shipped.models["claude-sonnet-4-5"], Decimal("1.5")), "0.3438"
    )
    # gpt-4o: max(2.5, 2.5, 2.5) = 2.5; 1000*2.5 = 2500; 16384*10 = 163840;
    # 166340 -> /1e6 = 0.16634
    same_decimal(hold_usd(1000, 16384, shipped.models["gpt-4o"], Decimal(1)), "0.16634")


def test_hold_applies_the_model_multiplier():
    price = ModelPrice(
        provider="openai",
        input_per_mtok=Decimal("2"),
        output_per_mtok=Decimal("8"),
        multiplier=Decimal("1.25"),
    )
    # 100*2 + 50*8 = 600 -> /1e6 = 0.0006 -> *2 = 0.0012 -> *1.25 = 0.0015
    same_decimal(hold_usd(100, 50, price, Decimal(2)), "0.0015")


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "claude-opus-4-1"])
def test_hold_is_never_below_cost(shipped, model):
    price = shipped.models[model]
    rate = Decimal("1.37")
    prompt, output = 36_200, 800
    splits = [
        TokenUsage(uncached_input_tokens=prompt, output_tokens=output),
        TokenUsage(cache_read_tokens=prompt, output_tokens=output),
        TokenUsage(cache_write_tokens=prompt, output_tokens=output),
        TokenUsage(cache_write_tokens=prompt, cache_write_1h_tokens=prompt, output_tokens=output),
        TokenUsage(
            uncached_input_tokens=200,
            cache_read_tokens=30_000,
            cache_write_tokens=6_000,
            cache_write_1h_tokens=2_500,
            output_tokens=output,
        ),
    ]
    hold = hold_usd(prompt, output, price, rate)
    for usage in splits:
        assert usage.input_tokens == prompt
        assert hold >= cost_usd(usage, price, rate)
        assert units_ceil(hold) >= units_ceil(cost_usd(usage, price, rate))
    # the worst case (every input token at the dearest price) is exactly the hold
    assert hold == max(cost_usd(u, price, rate) for u in splits)


# ---------------------------------------------------------------- usage event


def test_usage_event_json_round_trip():
    event = UsageEvent(
        request_id="req_1",
        user_id=7,
        api_key_id=3,
        provider="anthropic",
        model="claude-sonnet-4-5",
        endpoint="messages",
        stream=True,
        usage=TokenUsage(
            uncached_input_tokens=1, cache_write_tokens=5, cache_write_1h_tokens=2, output_tokens=9
        ),
        hold_units=123_456_789_012,
    )
    back = UsageEvent.from_json(event.to_json())
    assert back == event
    assert back.usage.cache_write_1h_tokens == 2
    assert back.estimated is False and back.outcome == "completed"
    assert back.created_at.tzinfo is not None
    assert "cost" not in json.loads(event.to_json())
    with pytest.raises(ValueError):
        UsageEvent.from_json(event.to_json().replace('"anthropic"', '"Google AI"'))


# ---------------------------------------------------------------- keys


def test_proxy_keys():
    key = new_proxy_key()
    assert key.startswith(PROXY_KEY_PREFIX)
    assert len(key) == len(PROXY_KEY_PREFIX) + 40
    assert new_proxy_key() != key
    digest = hash_proxy_key(key)
    assert len(digest) == 32 and digest == hash_proxy_key(key)
    assert hash_proxy_key(key + "x") != digest
    assert visible_prefix(key) == key[:10]


def test_secret_box_round_trip_and_wrong_key():
    box = SecretBox("secret-one-that-is-long-enough")
    token = box.encrypt("sk-provider-123")
    assert b"sk-provider-123" not in token
    assert box.encrypt("sk-provider-123") != token  # fresh IV each time
    assert box.decrypt(token) == "sk-provider-123"
    assert SecretBox("secret-one-that-is-long-enough").decrypt(memoryview(token)) == (
        "sk-provider-123"
    )
    with pytest.raises(ValueError, match="METERWAY_SECRET_KEY"):
        SecretBox("another-secret-key-entirely").decrypt(token)
