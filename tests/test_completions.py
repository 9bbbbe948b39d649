"""OpenAI legacy completions through the proxy with the official SDK: JSON and
SSE billed exactly, the usage chunk the proxy asked for hidden, and holds sized
for every prompt times max(n, best_of) completions."""

from __future__ import annotations

from decimal import Decimal

import openai
import orjson
import pytest

from proxy.hold_bound import request_bound
from proxy.providers import ADAPTERS
from proxy.providers.bounds import TEXT_MARGIN_TOKENS
from proxy.providers.openai_completions import CompletionsScanner
from shared.catalog import load_catalog
from shared.config import REPO_ROOT
from shared.money import units_ceil, units_to_usd, usd_str
from tests.clients import openai_client
from tests.conftest import wait_holds_released, wait_settled
from tests.expected import expected_cost, price_table

pytestmark = pytest.mark.usefixtures("worker")

COMPLETIONS = ADAPTERS[("openai", "completions")]
MODEL = "gpt-3.5-turbo-instruct"
SHIPPED = load_catalog(REPO_ROOT / "model_catalog.json")
TEXT = "tok0 tok1 tok2 tok3 tok4 "


async def record_of(pg, request_id: str):
    return await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)


async def check_billed(pg, accounts, acct, catalog_path, request_id, *, stream: bool, start="1"):
    await wait_settled(pg, [request_id])
    record = await record_of(pg, request_id)
    assert record["endpoint"] == "completions" and record["stream"] is stream
    assert record["estimated"] is False
    cost = expected_cost(
        catalog_path, MODEL, uncached=record["input_tokens"], output=record["output_tokens"]
    )
    assert cost > 0 and record["cost_usd"] == cost
    assert await accounts.balance(acct.user_id) == Decimal(start) - cost
    return record


async def test_completion_json_is_billed_exactly(proxy_url, accounts, pg, redis, catalog_path):
    acct = await accounts.create("1")
    raw = await openai_client(proxy_url, acct.key).completions.with_raw_response.create(
        model=MODEL, prompt="Say hello to the meter.", max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].text == TEXT
    record = await check_billed(
        pg, accounts, acct, catalog_path, raw.headers["x-request-id"], stream=False
    )
    assert record["input_tokens"] == completion.usage.prompt_tokens
    assert record["output_tokens"] == completion.usage.completion_tokens == 5
    await wait_holds_released(redis, acct.user_id)


async def test_completion_stream_hides_the_usage_chunk_it_asked_for(
    proxy_url, accounts, pg, catalog_path, upstream
):
    acct = await accounts.create("1")
    raw = await openai_client(proxy_url, acct.key).completions.with_raw_response.create(
        model=MODEL, prompt=["first prompt", "second one"], n=2, stream=True
    )
    chunks = [chunk async for chunk in raw.parse()]
    assert all(c.choices for c in chunks), "the usage-only chunk must not reach the client"
    assert all(c.usage is None for c in chunks)
    for index in range(4):  # 2 prompts x n = 2
        text = "".join(c.choices[0].text for c in chunks if c.choices[0].index == index)
        assert text == TEXT
    assert upstream.recorded()[-1]["body"]["stream_options"] == {"include_usage": True}
    record = await check_billed(
        pg, accounts, acct, catalog_path, raw.headers["x-request-id"], stream=True
    )
    assert record["output_tokens"] == 5 * 4


async def test_completion_stream_with_include_usage_passes_it_through(
    proxy_url, accounts, pg, catalog_path
):
    acct = await accounts.create("1")
    raw = await openai_client(proxy_url, acct.key).completions.with_raw_response.create(
        model=MODEL, prompt="hi", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in raw.parse()]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].choices == []
    record = await check_billed(
        pg, accounts, acct, catalog_path, raw.headers["x-request-id"], stream=True
    )
    assert record["input_tokens"] == usage[0].prompt_tokens
    assert record["output_tokens"] == usage[0].completion_tokens == 5


def bound_of(body: dict):
    raw = orjson.dumps(body)
    price = SHIPPED.models[body["model"]]
    return request_bound(COMPLETIONS, body, raw, body["model"], price), raw


def test_completion_output_caps_choices_and_prompts():
    bound, raw = bound_of({"model": MODEL, "prompt": "hi"})
    assert (bound.input_tokens, bound.output_tokens) == (len(raw) + TEXT_MARGIN_TOKENS, 16)
    bound, _ = bound_of({"model": MODEL, "prompt": "hi", "max_tokens": None})
    assert bound.output_tokens == SHIPPED.models[MODEL].max_output_tokens  # null: the most
    bound, _ = bound_of({"model": MODEL, "prompt": "hi", "max_tokens": 100, "n": 3})
    assert bound.output_tokens == 300
    bound, _ = bound_of({"model": MODEL, "prompt": "hi", "max_tokens": 100, "n": 2, "best_of": 5})
    assert bound.output_tokens == 500
    body = {"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 10, "best_of": 2}
    assert bound_of(body)[0].output_tokens == 60  # every prompt gets best_of completions
    # token ids count one each; a suffix adds its bytes
    body = {"model": MODEL, "prompt": [[1] * 700, [2] * 300], "suffix": "ünd"}
    bound, _ = bound_of(body)
    assert bound.input_tokens == 1000 + 4 + TEXT_MARGIN_TOKENS
    assert (bound.output_tokens, bound.inputs) == (32, 2)
    # each prompt is limited by the context window; the batch by the window per prompt
    body = {"model": MODEL, "prompt": ["z" * 5000] * 3, "max_tokens": 1}
    assert bound_of(body)[0].input_tokens == 3 * 4096
    assert bound_of({"model": MODEL, "prompt": "z" * 5000})[0].input_tokens == 4096


def test_completions_scanner_counts_text_chunks_and_hides_the_usage_chunk():
    def chunk(data: dict) -> bytes:
        return b"data: " + orjson.dumps(data) + b"\n\n"

    base = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL}
    events = [
        chunk({**base, "choices": [{"text": "he", "index": 0, "finish_reason": None}]}),
        chunk({**base, "choices": [{"text": "llo", "index": 0, "finish_reason": None}]}),
        chunk({**base, "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]}),
    ]
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    hidden = chunk({**base, "choices": [], "usage": usage})
    scanner = CompletionsScanner(filtering=True)
    out = scanner.feed(b"".join(events) + hidden[:10]) + scanner.feed(
        hidden[10:] + b"data: [DONE]\n\n"
    )
    assert out == b"".join(events) + b"data: [DONE]\n\n"
    assert scanner.deltas == 2 and scanner.complete
    assert scanner.usage.uncached_input_tokens == 3 and scanner.usage.output_tokens == 2


async def test_n_and_best_of_holds_refuse_what_does_not_fit(
    proxy_url, accounts, pg, upstream, catalog_path
):
    acct = await accounts.create("0.005")
    client = openai_client(proxy_url, acct.key)
    prompt = [[11, 12, 13], [14, 15]]  # token ids: the input bound does not depend on the bytes
    m = price_table(catalog_path)[MODEL]
    # 2 prompts x max(n, best_of) = 4 completions x 500 tokens; 5 ids + the margin in
    inp, out = 5 + TEXT_MARGIN_TOKENS, 2 * 4 * 500
    exact = (inp * Decimal(m["input_per_mtok"]) + out * Decimal(m["output_per_mtok"])) / Decimal(
        1_000_000
    )
    assert exact == Decimal("0.0081035")  # above the 0.005 there is
    seen = len(upstream.recorded())
    with pytest.raises(openai.APIStatusError) as refused:
        await client.completions.create(model=MODEL, prompt=prompt, max_tokens=500, n=2, best_of=4)
    assert refused.value.status_code == 402
    headers = refused.value.response.headers
    assert headers["x-meterway-hold-usd"] == usd_str(units_to_usd(units_ceil(exact)))
    assert headers["x-meterway-available-usd"] == "0.005"
    with pytest.raises(openai.APIStatusError) as refused:  # streamed: the same hold
        await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=500, best_of=4, stream=True
        )
    assert refused.value.status_code == 402
    assert len(upstream.recorded()) == seen  # nothing went upstream
    # one completion per prompt fits (2 x 500 tokens: 0.0021035)
    raw = await client.completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=500
    )
    assert len(raw.parse().choices) == 2
    await check_billed(
        pg, accounts, acct, catalog_path, raw.headers["x-request-id"], stream=False, start="0.005"
    )


async def test_a_broken_completion_stream_bills_the_text_delivered(
    proxy_url, accounts, pg, catalog_path
):
    acct = await accounts.create("1")
    client = openai_client(proxy_url, acct.key, **{"x-sim-break-after": "3"})
    raw = await client.completions.with_raw_response.create(model=MODEL, prompt="hi", stream=True)
    texts = []
    with pytest.raises(openai.APIError):  # the proxy ends it with an error chunk
        async for chunk in raw.parse():
            texts.append(chunk.choices[0].text)
    assert "".join(texts) == "tok0 tok1 tok2 "
    await wait_settled(pg, [raw.headers["x-request-id"]])
    record = await record_of(pg, raw.headers["x-request-id"])
    assert record["estimated"] is True and record["outcome"] == "upstream_broken"
    assert record["output_tokens"] == 3
    cost = expected_cost(
        catalog_path, MODEL, uncached=record["input_tokens"], output=record["output_tokens"]
    )
    assert record["cost_usd"] == cost
