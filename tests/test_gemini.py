"""Gemini through the proxy (contract section 5) with the official google-genai SDK:
generateContent and streamGenerateContent billed exactly from usageMetadata,
countTokens free, the models list from the catalog, the proxy key in any of
Google's places and never upstream, Google's error format, and broken or
usage-less streams billed once."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal

import aiohttp
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from shared import redis_keys
from tests.conftest import PROVIDER_SECRETS, wait_holds_released, wait_settled
from tests.expected import expected_cost

pytestmark = pytest.mark.usefixtures("worker")

MODEL = "gemini-2.5-flash"
PROMPT = "hello world"
P = 4 + math.ceil(len(PROMPT) / 4)  # the simulator's prompt count
TEXT5 = "tok0 tok1 tok2 tok3 tok4 "


def client(proxy_url: str, key: str, version: str | None = None) -> genai.Client:
    options = types.HttpOptions(base_url=f"{proxy_url}/v1/gemini", api_version=version)
    return genai.Client(api_key=key, http_options=options)


def config(**headers: str) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(http_options=types.HttpOptions(headers=headers))


async def record_of(pg, request_id: str):
    await wait_settled(pg, [request_id])
    return await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)


async def only_record(pg, user_id: int):
    for _ in range(150):
        rows = await pg.fetch("SELECT * FROM usage_records WHERE user_id = $1", user_id)
        if rows:
            assert len(rows) == 1, rows
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError("not settled")


async def test_generate_content_is_billed_exactly(
    proxy_url, accounts, pg, redis, upstream, catalog_path
):
    acct = await accounts.create("2")
    upstream.clear()
    resp = await client(proxy_url, acct.key).aio.models.generate_content(
        model=MODEL, contents=PROMPT
    )
    assert resp.text == TEXT5
    usage = resp.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count) == (P, 5)
    sent = upstream.recorded()[-1]
    assert sent["path"] == f"/gemini/v1/models/{MODEL}:generateContent"
    assert sent["headers"]["x-goog-api-key"] == PROVIDER_SECRETS["gemini"]
    assert acct.key not in str(sent["headers"]) and acct.key not in str(sent.get("query"))
    headers = {k.lower(): v for k, v in resp.sdk_http_response.headers.items()}
    request_id = headers["x-request-id"]
    assert headers["x-upstream-request-id"] == resp.response_id  # from the body: no header
    record = await record_of(pg, request_id)
    cost = expected_cost(catalog_path, MODEL, uncached=P, output=5)
    assert record["cost_usd"] == cost > 0
    assert record["provider"] == "gemini" and record["endpoint"] == "generateContent"
    assert (record["input_tokens"], record["output_tokens"]) == (P, 5)
    assert record["upstream_request_id"] == resp.response_id
    assert record["stream"] is False and record["estimated"] is False
    assert await accounts.balance(acct.user_id) == Decimal("2") - cost
    await wait_holds_released(redis, acct.user_id)


async def test_thoughts_cache_and_tool_use_follow_the_formula(
    proxy_url, accounts, pg, catalog_path
):
    acct = await accounts.create("2")
    knobs = {"x-sim-thoughts-tokens": "3", "x-sim-cached-tokens": "2", "x-sim-tool-use-tokens": "4"}
    resp = await client(proxy_url, acct.key, "v1beta").aio.models.generate_content(
        model=MODEL, contents=PROMPT, config=config(**knobs)
    )
    headers = {k.lower(): v for k, v in resp.sdk_http_response.headers.items()}
    record = await record_of(pg, headers["x-request-id"])
    # uncached = prompt - cached + tool use; cache read = cached; output = candidates + thoughts
    cost = expected_cost(catalog_path, MODEL, uncached=P - 2 + 4, cache_read=2, output=5 + 3)
    assert record["cost_usd"] == cost
    assert record["input_tokens"] == P + 4  # promptTokenCount + toolUsePromptTokenCount
    assert record["cache_read_tokens"] == 2
    assert record["output_tokens"] == 8


async def test_sse_stream_is_billed_from_the_last_chunk(
    proxy_url, accounts, pg, upstream, catalog_path
):
    acct = await accounts.create("2")
    upstream.clear()
    stream = await client(proxy_url, acct.key).aio.models.generate_content_stream(
        model=MODEL, contents=PROMPT, config=config(**{"x-sim-thoughts-tokens": "2"})
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.text or "" for c in chunks) == TEXT5
    sent = upstream.recorded()[-1]
    assert sent["path"] == f"/gemini/v1/models/{MODEL}:streamGenerateContent"
    assert sent["query"] == {"alt": "sse"}
    record = await only_record(pg, acct.user_id)
    assert record["endpoint"] == "streamGenerateContent" and record["stream"] is True
    assert record["cost_usd"] == expected_cost(catalog_path, MODEL, uncached=P, output=7)
    assert record["estimated"] is False and record["outcome"] == "completed"
    assert record["upstream_request_id"] == chunks[0].response_id


async def test_json_array_stream_without_alt_sse(proxy_url, accounts, pg, upstream, catalog_path):
    acct = await accounts.create("2")
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy_url}/v1/gemini/v1beta/models/{MODEL}:streamGenerateContent",
            json=body,
            headers={"x-goog-api-key": acct.key},
        ) as resp:
            assert resp.status == 200
            items = await resp.json(content_type=None)
    assert isinstance(items, list) and items[-1]["usageMetadata"]["candidatesTokenCount"] == 5
    record = await only_record(pg, acct.user_id)
    assert record["cost_usd"] == expected_cost(catalog_path, MODEL, uncached=P, output=5)
    assert record["estimated"] is False


async def test_key_as_query_parameter_or_bearer_never_goes_upstream(proxy_url, accounts, upstream):
    acct = await accounts.create("1")
    body = {"contents": [{"parts": [{"text": PROMPT}]}]}
    path = f"{proxy_url}/v1/gemini/v1beta/models/{MODEL}:generateContent"
    async with aiohttp.ClientSession() as http:
        upstream.clear()
        async with http.post(f"{path}?key={acct.key}", json=body) as resp:
            assert resp.status == 200, await resp.text()
        sent = upstream.recorded()[-1]
        assert "key" not in (sent.get("query") or {})
        assert sent["headers"]["x-goog-api-key"] == PROVIDER_SECRETS["gemini"]
        async with http.post(
            path, json=body, headers={"Authorization": f"Bearer {acct.key}"}
        ) as resp:
            assert resp.status == 200
        assert "authorization" not in upstream.recorded()[-1]["headers"]


async def test_count_tokens_is_free(proxy_url, accounts, pg, redis, upstream):
    acct = await accounts.create("0")
    counted = await client(proxy_url, acct.key).aio.models.count_tokens(
        model=MODEL, contents=PROMPT
    )
    assert counted.total_tokens == P
    assert upstream.recorded()[-1]["path"] == f"/gemini/v1/models/{MODEL}:countTokens"
    assert await redis.hgetall(redis_keys.user_keys(acct.user_id)[1]) == {}
    # no credit: the metered call is refused in Google's format
    with pytest.raises(genai_errors.ClientError) as refused:
        await client(proxy_url, acct.key).aio.models.generate_content(model=MODEL, contents=PROMPT)
    assert refused.value.code == 402 and refused.value.status == "FAILED_PRECONDITION"
    assert (
        await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", acct.user_id)
        == 0
    )


async def test_errors_are_in_googles_format(proxy_url, accounts):
    acct = await accounts.create("1")
    body = {"contents": [{"parts": [{"text": PROMPT}]}]}
    async with aiohttp.ClientSession() as http:
        cases = [
            (
                "v1beta/models/not-a-model:generateContent",
                {"x-goog-api-key": acct.key},
                400,
                "INVALID_ARGUMENT",
            ),
            (
                f"v1beta/models/{MODEL}:generateContent",
                {"x-goog-api-key": "mw-wrong"},
                401,
                "UNAUTHENTICATED",
            ),
            (f"v1beta/models/{MODEL}:embedContent", {"x-goog-api-key": acct.key}, 404, "NOT_FOUND"),
            (f"v2/models/{MODEL}:generateContent", {"x-goog-api-key": acct.key}, 404, "NOT_FOUND"),
        ]
        for path, headers, status, name in cases:
            async with http.post(
                f"{proxy_url}/v1/gemini/{path}", json=body, headers=headers
            ) as resp:
                assert resp.status == status, path
                error = (await resp.json())["error"]
                assert (error["code"], error["status"]) == (status, name), path
                assert error["message"]


async def test_candidate_count_multiplies_the_hold(proxy_url, accounts, pg):
    acct = await accounts.create("0.01")
    gemini = client(proxy_url, acct.key).aio.models
    one = types.GenerateContentConfig(max_output_tokens=1000, candidate_count=1)
    await gemini.generate_content(model=MODEL, contents=PROMPT, config=one)
    eight = types.GenerateContentConfig(max_output_tokens=1000, candidate_count=8)
    with pytest.raises(genai_errors.ClientError) as refused:  # 8 x 1000 x 2.5 / 1e6 > 0.01
        await gemini.generate_content(model=MODEL, contents=PROMPT, config=eight)
    assert refused.value.code == 402


async def test_models_list_and_get_come_from_the_catalog(proxy_url, accounts, catalog_path):
    acct = await accounts.create("1")
    gemini = client(proxy_url, acct.key)
    names = [m.name async for m in await gemini.aio.models.list()]
    assert f"models/{MODEL}" in names and "models/gemini-2.5-pro" in names
    assert all(not n.startswith("models/gpt") for n in names)
    one = await gemini.aio.models.get(model=MODEL)
    assert one.name == f"models/{MODEL}" and one.output_token_limit == 65536
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{proxy_url}/v1/gemini/v1beta/models/gpt-4o", headers={"x-goog-api-key": acct.key}
        ) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["status"] == "NOT_FOUND"


async def test_broken_stream_is_billed_once_from_the_usage_seen(
    proxy_url, accounts, pg, catalog_path
):
    acct = await accounts.create("2")
    seen = []
    try:  # the proxy ends the stream with Google's error event: the SDK raises
        stream = await client(proxy_url, acct.key).aio.models.generate_content_stream(
            model=MODEL, contents=PROMPT, config=config(**{"x-sim-break-after": "2"})
        )
        async for chunk in stream:
            seen.append(chunk.text)
    except genai_errors.APIError as exc:
        assert exc.code == 502 and exc.status == "UNAVAILABLE"
    else:
        raise AssertionError("the broken stream ended as if complete")
    assert len(seen) == 2
    record = await only_record(pg, acct.user_id)
    assert record["outcome"] == "upstream_broken" and record["estimated"] is True
    # the input is known exactly (every chunk carries it); the output is at least what came
    assert record["input_tokens"] == P and record["output_tokens"] >= 2


async def test_stream_without_usage_is_billed_as_an_estimate_within_the_hold(
    proxy_url, accounts, pg
):
    acct = await accounts.create("2")
    stream = await client(proxy_url, acct.key).aio.models.generate_content_stream(
        model=MODEL, contents=PROMPT, config=config(**{"x-sim-no-usage": "1"})
    )
    assert "".join([c.text or "" async for c in stream]) == TEXT5
    record = await only_record(pg, acct.user_id)
    assert record["estimated"] is True and record["cost_usd"] > 0


async def test_google_system_parameters_are_refused_and_shaping_headers_dropped(
    proxy_url, accounts, upstream
):
    acct = await accounts.create("1")
    body = {"contents": [{"parts": [{"text": PROMPT}]}]}
    path = f"{proxy_url}/v1/gemini/v1beta/models/{MODEL}"
    async with aiohttp.ClientSession() as http:
        for query in (
            "fields=candidates",
            f"$key={acct.key}",
            "alt=json",
            "callback=f",
            "$alt=sse",
        ):
            async with http.post(
                f"{path}:generateContent?{query}", json=body, headers={"x-goog-api-key": acct.key}
            ) as resp:
                assert resp.status == 400, query
                assert (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"
        async with http.post(
            f"{path}:streamGenerateContent?alt=sse&alt=sse",
            json=body,
            headers={"x-goog-api-key": acct.key},
        ) as resp:
            assert resp.status == 400
        upstream.clear()
        shaping = {
            "x-goog-api-key": acct.key,
            "X-Goog-FieldMask": "candidates",
            "X-HTTP-Method-Override": "GET",
            "x-goog-api-client": "genai-py/3",
        }
        async with http.post(f"{path}:generateContent", json=body, headers=shaping) as resp:
            assert resp.status == 200
    sent = {k.lower(): v for k, v in upstream.recorded()[-1]["headers"].items()}
    assert "x-goog-fieldmask" not in sent and "x-http-method-override" not in sent
    assert sent["x-goog-api-client"] == "genai-py/3"
    assert upstream.recorded()[-1].get("query") in ({}, None)


async def test_json_array_stream_cut_short_is_billed_for_what_came(proxy_url, accounts, pg):
    acct = await accounts.create("2")
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy_url}/v1/gemini/v1beta/models/{MODEL}:streamGenerateContent",
            json=body,
            headers={
                "x-goog-api-key": acct.key,
                "x-sim-break-after": "2",
                "x-sim-tool-use-tokens": "900",
            },
        ) as resp:
            raw = await resp.read()
    assert raw.rstrip().endswith(b"]")  # the array is closed with Google's error element
    record = await only_record(pg, acct.user_id)
    assert record["outcome"] == "upstream_broken"
    assert record["input_tokens"] == P + 900  # from the elements that came whole


async def test_candidate_count_as_a_string_still_multiplies_the_hold(proxy_url, accounts):
    acct = await accounts.create("0.01")
    body = {
        "contents": [{"parts": [{"text": PROMPT}]}],
        "generationConfig": {"maxOutputTokens": 1000, "candidateCount": "8"},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy_url}/v1/gemini/v1beta/models/{MODEL}:generateContent",
            json=body,
            headers={"x-goog-api-key": acct.key},
        ) as resp:
            assert resp.status == 402
            assert (await resp.json())["error"]["status"] == "FAILED_PRECONDITION"


async def test_encoded_slashes_do_not_route_and_head_lists_models(proxy_url, accounts):
    acct = await accounts.create("1")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy_url}/v1/openai/chat%2Fcompletions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {acct.key}"},
        ) as resp:
            assert resp.status == 404
        async with http.head(
            f"{proxy_url}/v1/openai/models", headers={"Authorization": f"Bearer {acct.key}"}
        ) as resp:
            assert resp.status == 200
