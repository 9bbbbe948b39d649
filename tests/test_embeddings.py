"""OpenAI embeddings through the proxy with the official SDK: billed as input
only, exactly; embedding models only there and nowhere else; the hold an upper
bound for every input shape (a string, strings, token ids, lists of them)."""

from __future__ import annotations

import json
from decimal import Decimal

import openai
import orjson
import pytest

from proxy.hold_bound import request_bound
from proxy.providers import ADAPTERS
from proxy.providers.bounds import TEXT_MARGIN_TOKENS
from shared.catalog import load_catalog
from shared.config import REPO_ROOT
from shared.money import units_ceil, units_to_usd, usd_str
from shared.pricing import hold_usd
from tests.clients import openai_client
from tests.conftest import wait_holds_released, wait_settled
from tests.expected import price_table

pytestmark = pytest.mark.usefixtures("worker")

EMBEDDINGS = ADAPTERS[("openai", "embeddings")]
MODEL = "text-embedding-3-small"
SHIPPED = load_catalog(REPO_ROOT / "model_catalog.json")


def input_cost(catalog_path, model: str, tokens: int) -> Decimal:
    m = price_table(catalog_path)[model]
    return tokens * Decimal(m["input_per_mtok"]) / Decimal(1_000_000) * Decimal(m["multiplier"])


async def record_of(pg, request_id: str):
    return await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)


@pytest.mark.parametrize(
    "value",
    ["The meter reads embeddings.", ["first text", "second text", "third"], [1, 2, 3, 4, 5]],
    ids=["string", "strings", "token-ids"],
)
async def test_embeddings_are_billed_as_input_only_exactly(
    proxy_url, accounts, pg, redis, catalog_path, value
):
    acct = await accounts.create("1")
    raw = await openai_client(proxy_url, acct.key).embeddings.with_raw_response.create(
        model=MODEL, input=value
    )
    answer = raw.parse()  # the SDK asks for base64 and decodes it
    inputs = 1 if isinstance(value, str) or isinstance(value[0], int) else len(value)
    assert len(answer.data) == inputs
    assert all(isinstance(x, float) for x in answer.data[0].embedding)
    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    record = await record_of(pg, request_id)
    cost = input_cost(catalog_path, MODEL, answer.usage.prompt_tokens)
    assert cost > 0
    assert record["endpoint"] == "embeddings" and record["stream"] is False
    assert record["input_tokens"] == answer.usage.prompt_tokens
    assert record["output_tokens"] == 0 and record["estimated"] is False
    assert record["cost_usd"] == cost
    assert await accounts.balance(acct.user_id) == Decimal(1) - cost
    await wait_holds_released(redis, acct.user_id)


async def test_embeddings_with_a_markup_and_a_rate(proxy_url, accounts, pg, catalog_path):
    acct = await accounts.create("1", rate_multiplier="1.25")
    client = openai_client(proxy_url, acct.key, **{"x-sim-input-tokens": "12345"})
    raw = await client.embeddings.with_raw_response.create(
        model="text-embedding-3-large", input=[[1, 2], [3]], encoding_format="float"
    )
    assert raw.parse().usage.prompt_tokens == 12345
    await wait_settled(pg, [raw.headers["x-request-id"]])
    cost = input_cost(catalog_path, "text-embedding-3-large", 12345) * Decimal("1.25")
    assert (await record_of(pg, raw.headers["x-request-id"]))["cost_usd"] == cost
    assert await accounts.balance(acct.user_id) == Decimal(1) - cost


async def test_embedding_models_only_on_embeddings(proxy_url, accounts, upstream):
    acct = await accounts.create("1")
    client = openai_client(proxy_url, acct.key)
    seen = len(upstream.recorded())
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert "embedding model" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model=MODEL, prompt="hi")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model="gpt-4o", input="hi")
    assert "not an embedding model" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model="no-such-embedder", input="hi")
    assert "Unknown model pricing" in refused.value.message
    assert len(upstream.recorded()) == seen  # nothing went upstream


def bound_of(body: dict) -> tuple[int, int]:
    raw = orjson.dumps(body)
    price = SHIPPED.models[body["model"]]
    bound = request_bound(EMBEDDINGS, body, raw, body["model"], price)
    return bound.input_tokens, bound.output_tokens


def test_embedding_bounds_for_every_input_shape():
    text = {"model": MODEL, "input": "naïve café " * 50}
    assert bound_of(text) == (len(orjson.dumps(text)) + TEXT_MARGIN_TOKENS, 0)
    ids = {"model": MODEL, "input": list(range(100_000, 100_300))}
    assert bound_of(ids) == (300 + TEXT_MARGIN_TOKENS, 0)  # counted, not their digits
    lists = {"model": MODEL, "input": [list(range(1000, 1200)), [7] * 50]}
    assert bound_of(lists) == (250 + TEXT_MARGIN_TOKENS, 0)
    # one input is limited by the context window; a batch by the window per input
    window = SHIPPED.models[MODEL].context_window
    assert window == 8191
    huge = {"model": MODEL, "input": "x" * 100_000}
    assert bound_of(huge) == (window, 0)
    batch = {"model": MODEL, "input": ["x" * 9000] * 20}
    assert bound_of(batch) == (20 * window, 0)
    assert bound_of({"model": MODEL, "input": [[5] * 9000] * 3}) == (3 * window, 0)
    # anything else is bounded by the body's bytes (upstream refuses it anyway)
    odd = {"model": MODEL, "input": [1, "two", [3]]}
    assert bound_of(odd) == (len(orjson.dumps(odd)) + TEXT_MARGIN_TOKENS, 0)


async def test_an_embedding_that_does_not_fit_is_refused_with_its_exact_hold(
    proxy_url, accounts, upstream, catalog_path
):
    acct = await accounts.create("0.0001")
    body = {"model": "text-embedding-3-large", "input": ["y" * 9000] * 50}
    raw = json.dumps(body).encode()
    price = load_catalog(catalog_path).models[body["model"]]
    bound = request_bound(EMBEDDINGS, body, raw, body["model"], price)
    assert bound.input_tokens == 50 * 8191  # the window per input, below the bytes
    hold = units_to_usd(units_ceil(hold_usd(bound.input_tokens, 0, price, Decimal(1))))
    seen = len(upstream.recorded())
    client = openai_client(proxy_url, acct.key)
    with pytest.raises(openai.APIStatusError) as refused:
        await client.embeddings.create(**body)
    assert refused.value.status_code == 402
    assert refused.value.response.headers["x-meterway-hold-usd"] == usd_str(hold)
    assert len(upstream.recorded()) == seen


async def test_an_embedding_answer_without_usage_is_estimated_as_input_only(
    proxy_url, accounts, pg, catalog_path
):
    acct = await accounts.create("1")
    client = openai_client(proxy_url, acct.key, **{"x-sim-no-usage": "1"})
    ids = list(range(100_000, 101_000))  # 7 bytes a token id: the bound is their count
    raw = await client.embeddings.with_raw_response.create(model=MODEL, input=ids)
    assert raw.parse().data
    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    record = await record_of(pg, request_id)
    assert record["estimated"] is True and record["output_tokens"] == 0
    assert record["input_tokens"] == 1000 + TEXT_MARGIN_TOKENS  # the estimate, at most the bound
    assert record["cost_usd"] == input_cost(catalog_path, MODEL, 1000 + TEXT_MARGIN_TOKENS)
