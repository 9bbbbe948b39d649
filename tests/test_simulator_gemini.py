"""Upstream simulator, Gemini wire format: the google-genai SDK must parse its answers
(JSON, SSE, countTokens, models, errors); directives and faults work as for the other
providers. Also: the OpenAI routes take the secret in `api-key` (Azure OpenAI v1 style)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from simulator import RECORDER_KEY, start
from simulator.control import Directives, parse_directives
from simulator.gemini_tokens import gemini_input_tokens, make_answer

TEXT5 = "tok0 tok1 tok2 tok3 tok4 "
MODEL = "gemini-2.5-flash"
# "hello world": 11 characters -> 4 + ceil(11 / 4) = 7 prompt tokens
HELLO: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hello world"}]}]}
KEY = {"x-goog-api-key": "AIza-sim-test"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture(scope="module")
async def sim() -> AsyncIterator[tuple[str, web.AppRunner]]:
    port = _free_port()
    runner = await start("127.0.0.1", port)
    yield f"http://127.0.0.1:{port}", runner
    await runner.cleanup()


@pytest.fixture
def base(sim: tuple[str, web.AppRunner]) -> str:
    return sim[0]


@pytest.fixture
def recorder(sim: tuple[str, web.AppRunner]) -> Any:
    rec = sim[1].app[RECORDER_KEY]
    rec.clear()
    return rec


def _client(base: str, key: str = "AIza-sim-test", version: str | None = None) -> genai.Client:
    options = types.HttpOptions(base_url=f"{base}/gemini", api_version=version)
    return genai.Client(api_key=key, http_options=options)


def _headers(**extra: str) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(http_options=types.HttpOptions(headers=extra))


async def _post(
    base: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/gemini/{path}", json=body, headers=headers) as resp,
    ):
        return resp, await resp.read()


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    frames = raw.split(b"\r\n\r\n")
    assert frames[-1] == b""
    assert all(frame.startswith(b"data: ") for frame in frames[:-1])
    return [orjson.loads(frame[len(b"data: ") :]) for frame in frames[:-1]]


# --- token accounting (pure) ----------------------------------------------------------


def test_prompt_tokens_count_system_instruction_and_every_text_part() -> None:
    body: dict[str, Any] = {
        "systemInstruction": {"parts": [{"text": "be brief"}]},  # 8 chars
        "contents": [
            {"role": "user", "parts": [{"text": "hello world"}, {"inlineData": {}}]},  # 11
            {"role": "model", "parts": [{"text": "abc"}]},  # 3
        ],
    }
    assert gemini_input_tokens(body) == 4 + 6  # ceil(22 / 4)
    assert gemini_input_tokens({"generateContentRequest": body}) == 10
    assert gemini_input_tokens(HELLO) == 7


def test_thoughts_are_spent_within_max_output_tokens() -> None:
    directives = Directives(chunks=5, thoughts_tokens=3)
    capped = make_answer({**HELLO, "generationConfig": {"maxOutputTokens": 4}}, directives)
    assert (capped.thoughts, capped.gen.output_tokens, capped.finish_reason) == (3, 1, "MAX_TOKENS")
    budget = {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 2}}
    assert make_answer({**HELLO, "generationConfig": budget}, directives).thoughts == 2
    off = {"thinkingConfig": {"thinkingBudget": 0}}
    assert make_answer({**HELLO, "generationConfig": off}, directives).thoughts == 0
    dynamic = {"thinkingConfig": {"thinkingBudget": -1}}
    free = make_answer({**HELLO, "generationConfig": dynamic}, directives)
    assert (free.thoughts, free.gen.output_tokens, free.finish_reason) == (3, 5, "STOP")


def test_usage_leaves_zero_counts_out() -> None:
    usage = make_answer(HELLO, Directives(chunks=2)).usage()
    assert usage == {
        "promptTokenCount": 7,
        "candidatesTokenCount": 2,
        "totalTokenCount": 9,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}],
    }
    directives = parse_directives(
        {
            "x-sim-cached-tokens": "100",
            "x-sim-thoughts-tokens": "4",
            "x-sim-tool-use-tokens": "6",
            "x-sim-chunks": "3",
        }
    )
    config = {"generationConfig": {"candidateCount": 2}}
    full = make_answer({**HELLO, **config}, directives).usage()
    assert full["cachedContentTokenCount"] == 7  # clamped to the prompt
    assert (full["candidatesTokenCount"], full["thoughtsTokenCount"]) == (6, 4)
    assert full["toolUsePromptTokenCount"] == 6
    assert full["totalTokenCount"] == 7 + 6 + 6 + 4


# --- generateContent with the SDK -------------------------------------------------------


async def test_generate_content_with_the_sdk(base: str, recorder: Any) -> None:
    client = _client(base)
    resp = await client.aio.models.generate_content(model=MODEL, contents="hello world")
    assert resp.text == TEXT5
    assert resp.candidates is not None and len(resp.candidates) == 1
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP
    assert resp.candidates[0].content is not None and resp.candidates[0].content.role == "model"
    usage = resp.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count) == (7, 5)
    assert usage.total_token_count == 12
    assert usage.cached_content_token_count is None and usage.thoughts_token_count is None
    assert resp.model_version == MODEL
    assert resp.response_id is not None and len(resp.response_id) == 23
    [entry] = recorder.items
    # google-genai 3.x with base_url set calls v1, the key in x-goog-api-key
    assert entry["path"] == f"/gemini/v1/models/{MODEL}:generateContent"
    assert entry["headers"]["x-goog-api-key"] == "AIza-sim-test"
    assert entry["body"]["contents"] == HELLO["contents"]


async def test_generate_content_knobs_and_config(base: str) -> None:
    client = _client(base)
    config = types.GenerateContentConfig(
        system_instruction="be brief",  # 8 chars: prompt 4 + ceil(19 / 4) = 9
        max_output_tokens=4,
        candidate_count=2,
        http_options=types.HttpOptions(
            headers={
                "x-sim-cached-tokens": "3",
                "x-sim-thoughts-tokens": "1",
                "x-sim-tool-use-tokens": "5",
                "x-sim-chunks": "9",
            }
        ),
    )
    resp = await client.aio.models.generate_content(
        model=MODEL, contents="hello world", config=config
    )
    assert resp.candidates is not None and [c.index for c in resp.candidates] == [0, 1]
    for candidate in resp.candidates:
        assert candidate.finish_reason == types.FinishReason.MAX_TOKENS
        assert candidate.content is not None and candidate.content.parts is not None
        assert candidate.content.parts[0].text == "tok0 tok1 tok2 "  # 4 - 1 thought
    usage = resp.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == 9
    assert usage.cached_content_token_count == 3
    assert usage.candidates_token_count == 6  # 3 per candidate
    assert usage.thoughts_token_count == 1
    assert usage.tool_use_prompt_token_count == 5
    assert usage.total_token_count == 9 + 5 + 6 + 1


async def test_v1beta_and_the_input_tokens_knob(base: str, recorder: Any) -> None:
    client = _client(base, version="v1beta")
    resp = await client.aio.models.generate_content(
        model="gemini-2.5-pro", contents="x", config=_headers(**{"x-sim-input-tokens": "4242"})
    )
    assert resp.usage_metadata is not None and resp.usage_metadata.prompt_token_count == 4242
    assert recorder.items[0]["path"] == "/gemini/v1beta/models/gemini-2.5-pro:generateContent"


async def test_no_usage_directive_json(base: str) -> None:
    resp, raw = await _post(
        base, f"v1beta/models/{MODEL}:generateContent", HELLO, {**KEY, "x-sim-no-usage": "1"}
    )
    body = orjson.loads(raw)
    assert resp.status == 200 and "usageMetadata" not in body
    assert body["candidates"][0]["content"]["parts"][0]["text"] == TEXT5
    assert "x-request-id" not in resp.headers and "request-id" not in resp.headers


# --- streamGenerateContent --------------------------------------------------------------


async def test_stream_with_the_sdk(base: str, recorder: Any) -> None:
    client = _client(base)
    stream = await client.aio.models.generate_content_stream(
        model=MODEL, contents="hello world", config=_headers(**{"x-sim-thoughts-tokens": "2"})
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(chunk.text or "" for chunk in chunks) == TEXT5
    running = [c.usage_metadata.candidates_token_count for c in chunks if c.usage_metadata]
    assert running == [1, 2, 3, 4, 5]
    last = chunks[-1]
    assert last.candidates is not None
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in chunks[:-1])
    assert last.usage_metadata is not None
    assert last.usage_metadata.prompt_token_count == 7
    assert last.usage_metadata.thoughts_token_count == 2
    assert last.usage_metadata.total_token_count == 7 + 5 + 2
    assert len({c.response_id for c in chunks}) == 1
    [entry] = recorder.items
    assert entry["path"] == f"/gemini/v1/models/{MODEL}:streamGenerateContent"
    assert entry["query"] == {"alt": "sse"}


async def test_sse_bytes_are_crlf_framed(base: str) -> None:
    body = {**HELLO, "generationConfig": {"maxOutputTokens": 2, "candidateCount": 2}}
    resp, raw = await _post(base, f"v1beta/models/{MODEL}:streamGenerateContent?alt=sse", body, KEY)
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/event-stream"
    events = _sse_events(raw)
    assert len(events) == 2
    assert [len(e["candidates"]) for e in events] == [2, 2]
    assert events[-1]["candidates"][1] == {
        "content": {"parts": [{"text": "tok1 "}], "role": "model"},
        "finishReason": "MAX_TOKENS",
        "index": 1,
    }
    assert [e["usageMetadata"]["candidatesTokenCount"] for e in events] == [2, 4]
    assert events[-1]["usageMetadata"]["totalTokenCount"] == 7 + 4
    assert events[0]["modelVersion"] == MODEL


async def test_stream_without_alt_sse_is_a_json_array(base: str) -> None:
    resp, raw = await _post(
        base, f"v1/models/{MODEL}:streamGenerateContent", HELLO, {**KEY, "x-sim-chunks": "3"}
    )
    assert resp.status == 200 and resp.headers["content-type"].startswith("application/json")
    chunks = orjson.loads(raw)
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks] == [
        "tok0 ",
        "tok1 ",
        "tok2 ",
    ]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 3


async def test_stream_with_no_output_sends_one_final_chunk(base: str) -> None:
    _, raw = await _post(
        base,
        f"v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        HELLO,
        {**KEY, "x-sim-chunks": "0"},
    )
    [event] = _sse_events(raw)
    assert event["candidates"][0]["finishReason"] == "STOP"
    assert event["usageMetadata"] == {
        "promptTokenCount": 7,
        "totalTokenCount": 7,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}],
    }


async def test_stream_no_usage_directive(base: str) -> None:
    _, raw = await _post(
        base,
        f"v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        HELLO,
        {**KEY, "x-sim-no-usage": "1"},
    )
    events = _sse_events(raw)
    assert len(events) == 5 and all("usageMetadata" not in e for e in events)
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_stream_error_event(base: str) -> None:
    client = _client(base)
    stream = await client.aio.models.generate_content_stream(
        model=MODEL, contents="hello world", config=_headers(**{"x-sim-error-event-after": "2"})
    )
    seen: list[str] = []
    with pytest.raises(genai_errors.ServerError) as info:
        async for chunk in stream:
            seen.append(chunk.text or "")
    assert "".join(seen) == "tok0 tok1 "
    assert (info.value.code, info.value.status) == (500, "INTERNAL")


async def test_stream_break_after(base: str) -> None:
    headers = {**KEY, "x-sim-break-after": "2"}
    url = f"{base}/gemini/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    received = b""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=HELLO, headers=headers) as resp,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in resp.content.iter_any():
                received += piece
    events = _sse_events(received)
    assert len(events) == 2
    assert all("finishReason" not in e["candidates"][0] for e in events)
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 2


# --- countTokens ----------------------------------------------------------------------


async def test_count_tokens_with_the_sdk(base: str, recorder: Any) -> None:
    client = _client(base)
    counted = await client.aio.models.count_tokens(model=MODEL, contents="hello world")
    assert counted.total_tokens == 7
    assert counted.cached_content_token_count is None
    [entry] = recorder.items
    assert entry["path"] == f"/gemini/v1/models/{MODEL}:countTokens"
    cached = await client.aio.models.count_tokens(
        model=MODEL,
        contents="hello world",
        config=types.CountTokensConfig(
            http_options=types.HttpOptions(headers={"x-sim-cached-tokens": "5"})
        ),
    )
    assert (cached.total_tokens, cached.cached_content_token_count) == (7, 5)


async def test_count_tokens_wrapped_request_and_knob(base: str) -> None:
    wrapped = {"generateContentRequest": {"model": f"models/{MODEL}", **HELLO}}
    _, raw = await _post(base, f"v1beta/models/{MODEL}:countTokens", wrapped, KEY)
    assert orjson.loads(raw)["totalTokens"] == 7
    headers = {**KEY, "x-sim-input-tokens": "99"}
    _, raw = await _post(base, f"v1beta/models/{MODEL}:countTokens", HELLO, headers)
    assert orjson.loads(raw)["totalTokens"] == 99
    resp, raw = await _post(base, f"v1beta/models/{MODEL}:countTokens", {"x": 1}, KEY)
    assert resp.status == 400 and orjson.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"


# --- models -----------------------------------------------------------------------------


async def test_models_list_and_get_with_the_sdk(base: str) -> None:
    client = _client(base)
    names = [model.name async for model in await client.aio.models.list()]
    assert "models/gemini-2.5-flash" in names and "models/gemini-2.5-pro" in names
    model = await client.aio.models.get(model="gemini-2.5-flash")
    assert model.name == "models/gemini-2.5-flash"
    assert model.supported_actions is not None and "generateContent" in model.supported_actions
    with pytest.raises(genai_errors.ClientError) as info:
        await client.aio.models.get(model="gemini-0-nope")
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")


async def test_models_list_is_a_key_probe(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for version in ("v1", "v1beta"):
            async with session.get(f"{base}/gemini/{version}/models", headers=KEY) as resp:
                body = await resp.json()
            assert resp.status == 200 and body["models"][0]["name"].startswith("models/")
        bad = {"x-goog-api-key": "AIza-invalid"}
        async with session.get(f"{base}/gemini/v1beta/models", headers=bad) as resp:
            body = await resp.json()
        assert resp.status == 400
        assert body["error"]["details"][0]["reason"] == "API_KEY_INVALID"


# --- auth and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "path_suffix", "status", "google_status"),
    [
        ({}, "", 403, "PERMISSION_DENIED"),
        ({"x-goog-api-key": "AIza-invalid"}, "", 400, "INVALID_ARGUMENT"),
        ({"x-goog-api-key": "AIza-revoked"}, "", 400, "INVALID_ARGUMENT"),
        ({"x-goog-api-key": "AIza-expired"}, "", 400, "INVALID_ARGUMENT"),
        ({"x-goog-api-key": "AIza-forbidden"}, "", 403, "PERMISSION_DENIED"),
        ({"x-goog-api-key": "AIza-ratelimited"}, "", 429, "RESOURCE_EXHAUSTED"),
        ({"x-goog-api-key": "AIza-broken"}, "", 500, "INTERNAL"),
        ({}, "?key=AIza-ok", 200, None),
        ({}, "?key=AIza-invalid", 400, "INVALID_ARGUMENT"),
        ({"authorization": "Bearer AIza-ok"}, "", 200, None),
    ],
)
async def test_key_checks_in_googles_format(
    base: str,
    headers: dict[str, str],
    path_suffix: str,
    status: int,
    google_status: str | None,
) -> None:
    path = f"v1beta/models/{MODEL}:generateContent{path_suffix}"
    resp, raw = await _post(base, path, HELLO, headers)
    assert resp.status == status
    if google_status is None:
        return
    error = orjson.loads(raw)["error"]
    assert (error["code"], error["status"]) == (status, google_status)
    assert isinstance(error["message"], str) and error["message"]
    if status == 400:
        assert error["details"][0]["reason"] == "API_KEY_INVALID"
        assert error["details"][0]["domain"] == "googleapis.com"
    assert "retry-after" not in resp.headers


async def test_the_sdk_raises_on_a_bad_key(base: str) -> None:
    client = _client(base, key="AIza-invalid")
    with pytest.raises(genai_errors.ClientError) as info:
        await client.aio.models.generate_content(model=MODEL, contents="x")
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert info.value.message == "API key not valid. Please pass a valid API key."


@pytest.mark.parametrize(
    ("name", "status", "google_status"),
    [
        ("invalid_api_key", 400, "INVALID_ARGUMENT"),
        ("permission", 403, "PERMISSION_DENIED"),
        ("region", 400, "FAILED_PRECONDITION"),
        ("rate_limit", 429, "RESOURCE_EXHAUSTED"),
        ("request_too_large", 400, "INVALID_ARGUMENT"),
        ("insufficient_quota", 429, "RESOURCE_EXHAUSTED"),
    ],
)
async def test_named_errors_in_googles_format(
    base: str, name: str, status: int, google_status: str
) -> None:
    headers = {**KEY, "x-sim-error": name}
    resp, raw = await _post(base, f"v1beta/models/{MODEL}:generateContent", HELLO, headers)
    error = orjson.loads(raw)["error"]
    assert resp.status == status
    assert (error["code"], error["status"]) == (status, google_status)
    assert "retry-after" not in resp.headers
    if status == 429:
        retry = [d for d in error["details"] if d["@type"].endswith("RetryInfo")]
        assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]


@pytest.mark.parametrize(
    ("status", "google_status", "error_class"),
    [
        (400, "INVALID_ARGUMENT", genai_errors.ClientError),
        (401, "UNAUTHENTICATED", genai_errors.ClientError),
        (403, "PERMISSION_DENIED", genai_errors.ClientError),
        (404, "NOT_FOUND", genai_errors.ClientError),
        (429, "RESOURCE_EXHAUSTED", genai_errors.ClientError),
        (500, "INTERNAL", genai_errors.ServerError),
        (503, "UNAVAILABLE", genai_errors.ServerError),
        (504, "DEADLINE_EXCEEDED", genai_errors.ServerError),
    ],
)
async def test_status_directive_raises_the_sdks_errors(
    base: str, status: int, google_status: str, error_class: type[Exception]
) -> None:
    client = _client(base)
    with pytest.raises(error_class) as info:
        await client.aio.models.generate_content(
            model=MODEL, contents="x", config=_headers(**{"x-sim-status": str(status)})
        )
    assert isinstance(info.value, genai_errors.APIError)
    assert (info.value.code, info.value.status) == (status, google_status)


async def test_bad_requests_and_unknown_paths(base: str) -> None:
    resp, raw = await _post(base, f"v1beta/models/{MODEL}:generateContent", {"contents": []}, KEY)
    assert resp.status == 400 and orjson.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"
    big = {**HELLO, "generationConfig": {"candidateCount": 9}}
    resp, raw = await _post(base, f"v1beta/models/{MODEL}:generateContent", big, KEY)
    assert resp.status == 400
    resp, raw = await _post(base, f"v1beta/models/{MODEL}:embedContent", HELLO, KEY)
    assert resp.status == 404 and orjson.loads(raw)["error"]["status"] == "NOT_FOUND"
    resp, raw = await _post(base, f"v2/models/{MODEL}:generateContent", HELLO, KEY)
    error = orjson.loads(raw)["error"]
    assert resp.status == 404 and (error["code"], error["status"]) == (404, "NOT_FOUND")


# --- OpenAI routes: the secret in `api-key` (Azure OpenAI v1 API style) ------------------


async def test_openai_routes_take_the_secret_in_api_key(base: str, recorder: Any) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]}
    async with aiohttp.ClientSession() as session:
        url = f"{base}/openai/v1/chat/completions"
        async with session.post(url, json=body, headers={"api-key": "az-secret"}) as resp:
            answer = await resp.json()
        assert resp.status == 200 and answer["usage"]["prompt_tokens"] == 7
        async with session.post(url, json=body, headers={"api-key": "az-invalid"}) as resp:
            assert resp.status == 401
        both = {"api-key": "az-secret", "authorization": "Basic nope"}
        async with session.post(url, json=body, headers=both) as resp:
            assert resp.status == 401  # an Authorization header present wins
    first = recorder.items[0]
    assert first["headers"]["api-key"] == "az-secret"
    assert "authorization" not in first["headers"]
