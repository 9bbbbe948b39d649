"""Upstream simulator: official SDKs must parse its answers; directives must work."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from simulator import RECORDER_KEY, start
from simulator.control import parse_directives
from simulator.errors import SimError
from simulator.tokens import (
    anthropic_input_tokens,
    chat_input_tokens,
    make_generation,
    responses_input_tokens,
)

TEXT5 = "tok0 tok1 tok2 tok3 tok4 "
HELLO: Any = [{"role": "user", "content": "hello world"}]  # 11 chars -> 4 + 3 = 7 tokens


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
async def oai(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{base}/openai/v1", api_key="sk-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def ant(base: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=f"{base}/anthropic", api_key="sk-ant-test", max_retries=0
    ) as client:
        yield client


# --- tokens / directives (pure) ---------------------------------------------------------


def test_token_counting() -> None:
    assert chat_input_tokens({"messages": HELLO}) == 7
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcde"}]}]
    assert chat_input_tokens({"messages": parts}) == 4 + 2
    body: dict[str, Any] = {"instructions": "abcd", "input": [{"role": "user", "content": "ab"}]}
    assert responses_input_tokens(body) == 4 + math.ceil(6 / 4)
    assert responses_input_tokens({"input": "x" * 8}) == 6
    blocks = {"system": [{"type": "text", "text": "abc"}], "messages": HELLO}
    assert anthropic_input_tokens(blocks) == 4 + math.ceil(14 / 4)
    gen = make_generation(5, 3, 10)
    assert gen.text == "tok0 tok1 tok2 " and gen.truncated and gen.output_tokens == 3
    assert not make_generation(5, 5, 10).truncated


def test_directive_parsing() -> None:
    d = parse_directives(
        {
            "x-sim-chunks": "2",
            "x-sim-cache-write-tokens": "10",
            "x-sim-cache-write-1h-tokens": "30",
            "x-sim-no-usage": "1",
        }
    )
    assert (d.chunks, d.cache_write_tokens, d.cache_write_1h_tokens, d.no_usage) == (
        2,
        10,
        10,
        True,
    )
    with pytest.raises(SimError):
        parse_directives({"x-sim-chunks": "lots"})
    with pytest.raises(SimError):
        parse_directives({"x-sim-status": "200"})


# --- OpenAI chat ---------------------------------------------------------------------


async def test_chat_non_stream(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert resp.model == "gpt-4o"
    assert resp.choices[0].message.content == TEXT5
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (7, 5)
    assert resp.usage.total_tokens == 12
    assert resp._request_id is not None and resp._request_id.startswith("req_")


async def test_chat_max_tokens_and_cached(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        max_completion_tokens=2,
        extra_headers={"x-sim-cached-tokens": "100", "x-sim-chunks": "9"},
    )
    assert resp.choices[0].message.content == "tok0 tok1 "
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 7  # clamped to prompt tokens


async def test_chat_stream_without_usage_option(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_stream_include_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-sim-chunks": "3", "x-sim-input-tokens": "42"},
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1 + 3 + 1 + 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (42, 3)
    assert all(chunk.usage is None for chunk in chunks[:-1])


async def test_chat_stream_no_usage_directive(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-sim-no-usage": "1"},
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_stream_error_event(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        stream=True,
        extra_headers={"x-sim-error-event-after": "2"},
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "tok0 tok1 "


async def test_chat_stream_break_after(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        stream=True,
        extra_headers={"x-sim-break-after": "2"},
    )
    with pytest.raises(openai.APIConnectionError):
        async for _chunk in stream:
            pass


# --- OpenAI responses ----------------------------------------------------------------


async def test_responses_non_stream(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.responses.create(
        model="gpt-4o",
        input="hello world",
        instructions="be brief",
        extra_headers={"x-sim-cached-tokens": "3"},
    )
    assert resp.output_text == TEXT5
    assert resp.status == "completed"
    assert resp.usage is not None
    assert resp.usage.input_tokens == 4 + math.ceil(19 / 4)
    assert resp.usage.output_tokens == 5
    assert resp.usage.input_tokens_details.cached_tokens == 3


async def test_responses_stream(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(
        model="gpt-4o",
        input=[{"role": "user", "content": "hello world"}],
        stream=True,
        extra_headers={"x-sim-chunks": "4"},
    )
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types.count("response.output_text.delta") == 4
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == "tok0 tok1 tok2 tok3 "
    assert final.response.usage is not None
    assert (final.response.usage.input_tokens, final.response.usage.output_tokens) == (7, 4)


async def test_responses_stream_helper(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model="gpt-4o", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == TEXT5
    assert final.usage is not None and final.usage.output_tokens == 5


async def test_responses_stream_truncated(oai: openai.AsyncOpenAI) -> None:
    # Like api.openai.com: hitting max_output_tokens ends with `response.incomplete`.
    stream = await oai.responses.create(
        model="gpt-4o", input="hi", max_output_tokens=2, stream=True
    )
    events = [event async for event in stream]
    final = events[-1]
    assert final.type == "response.incomplete"
    assert final.response.status == "incomplete"
    assert final.response.incomplete_details is not None
    assert final.response.incomplete_details.reason == "max_output_tokens"
    assert final.response.usage is not None and final.response.usage.output_tokens == 2


async def test_responses_stream_error_event(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(
        model="gpt-4o", input="hi", stream=True, extra_headers={"x-sim-error-event-after": "1"}
    )
    events = [event async for event in stream]
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "error"]


async def test_delay_directive(base: str) -> None:
    body = {"model": "m", "messages": HELLO, "stream": True}
    headers = {"authorization": "Bearer k", "x-sim-chunks": "3", "x-sim-delay-ms": "20"}
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        resp = await session.post(f"{base}/v1/chat/completions", json=body, headers=headers)
        raw = await resp.read()
        elapsed = time.perf_counter() - started
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert len(events) == 1 + 3 + 1 + 1 + 1  # role, deltas, finish, [DONE], trailing ""
    assert elapsed >= 0.09  # 5 gaps between 6 events x 20 ms


async def test_models_lists(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    openai_models = [m.id async for m in oai.models.list()]
    assert "gpt-4o" in openai_models
    anthropic_models = [m.id async for m in ant.models.list()]
    assert "claude-sonnet-4-6" in anthropic_models


# --- Anthropic -----------------------------------------------------------------------


async def test_anthropic_non_stream(ant: anthropic.AsyncAnthropic) -> None:
    msg = await ant.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        system="sys",
        messages=HELLO,
        extra_headers={
            "x-sim-cached-tokens": "50",
            "x-sim-cache-write-tokens": "20",
            "x-sim-cache-write-1h-tokens": "5",
        },
    )
    assert msg.content[0].type == "text" and msg.content[0].text == TEXT5
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 4 + math.ceil(14 / 4)
    assert msg.usage.output_tokens == 5
    assert msg.usage.cache_read_input_tokens == 50
    assert msg.usage.cache_creation_input_tokens == 20
    assert msg.usage.cache_creation is not None
    assert msg.usage.cache_creation.ephemeral_5m_input_tokens == 15
    assert msg.usage.cache_creation.ephemeral_1h_input_tokens == 5
    assert msg._request_id is not None and msg._request_id.startswith("req_")


async def test_anthropic_stream(ant: anthropic.AsyncAnthropic) -> None:
    async with ant.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=3,
        messages=HELLO,
        extra_headers={"x-sim-cached-tokens": "2", "x-sim-cache-write-tokens": "4"},
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "tok0 tok1 tok2 "
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)
    assert final.usage.cache_read_input_tokens == 2
    assert final.usage.cache_creation_input_tokens == 4
    assert final.usage.cache_creation is None


async def test_anthropic_stream_error_event(ant: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        async with ant.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=HELLO,
            extra_headers={"x-sim-error-event-after": "1"},
        ) as stream:
            await stream.get_final_message()
    assert "overloaded_error" in str(info.value)


async def test_anthropic_stream_break_after(ant: anthropic.AsyncAnthropic) -> None:
    try:
        async with ant.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=HELLO,
            extra_headers={"x-sim-break-after": "2"},
        ) as stream:
            await stream.get_final_message()
    except anthropic.APIConnectionError:
        pass
    except Exception as exc:  # the SDK lets its HTTP library's transport error through
        assert "RemoteProtocolError" in type(exc).__name__ or "peer closed" in str(exc)
    else:
        pytest.fail("a stream cut mid-body must fail on the client")


async def test_anthropic_requires_max_tokens(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{base}/anthropic/v1/messages",
            json={"model": "claude-sonnet-4-6", "messages": HELLO},
            headers={"x-api-key": "k"},
        )
        body = await resp.json()
    assert resp.status == 400
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["request_id"] == resp.headers["request-id"]


# --- errors --------------------------------------------------------------------------


async def test_auth_errors(base: str) -> None:
    bad_oai = openai.AsyncOpenAI(base_url=f"{base}/openai/v1", api_key="sk-invalid", max_retries=0)
    bad_ant = anthropic.AsyncAnthropic(
        base_url=f"{base}/anthropic", api_key="sk-ant-invalid", max_retries=0
    )
    limited = openai.AsyncOpenAI(
        base_url=f"{base}/openai/v1", api_key="sk-ratelimited", max_retries=0
    )
    try:
        await _auth_errors(base, bad_oai, bad_ant, limited)
    finally:
        for client in (bad_oai, bad_ant, limited):
            await client.close()


async def _auth_errors(base, bad_oai, bad_ant, limited) -> None:
    with pytest.raises(openai.AuthenticationError):
        await bad_oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(anthropic.AuthenticationError):
        await bad_ant.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=HELLO)
    with pytest.raises(openai.RateLimitError) as info:
        await limited.responses.create(model="gpt-4o", input="x")
    assert info.value.response.headers["retry-after"] == "1"
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{base}/openai/v1/chat/completions", json={})
        body = await resp.json()
    assert resp.status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_status_directives(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(openai.InternalServerError):
        await oai.chat.completions.create(
            model="gpt-4o",
            messages=HELLO,
            extra_headers={"x-sim-status": "500"},
        )
    with pytest.raises(anthropic.OverloadedError):
        await ant.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=5,
            messages=HELLO,
            extra_headers={"x-sim-status": "529"},
        )


@pytest.mark.parametrize(
    ("name", "provider", "status", "error_type", "code"),
    [
        ("invalid_api_key", "openai", 401, "invalid_request_error", "invalid_api_key"),
        ("invalid_api_key", "anthropic", 401, "authentication_error", None),
        ("permission", "openai", 403, "invalid_request_error", None),
        ("permission", "anthropic", 403, "permission_error", None),
        ("region", "openai", 403, "request_forbidden", "unsupported_country_region_territory"),
        ("region", "anthropic", 403, "forbidden", None),
        ("rate_limit", "openai", 429, "requests", "rate_limit_exceeded"),
        ("rate_limit", "anthropic", 429, "rate_limit_error", None),
        ("request_too_large", "openai", 429, "tokens", "rate_limit_exceeded"),
        ("request_too_large", "anthropic", 413, "request_too_large", None),
        ("insufficient_quota", "openai", 429, "insufficient_quota", "insufficient_quota"),
        ("insufficient_quota", "anthropic", 400, "invalid_request_error", None),
    ],
)
async def test_named_errors_in_each_providers_format(
    base: str, name: str, provider: str, status: int, error_type: str, code: str | None
) -> None:
    if provider == "openai":
        url, auth = f"{base}/openai/v1/chat/completions", {"authorization": "Bearer sk-x"}
        body: dict[str, Any] = {"model": "gpt-4o", "messages": HELLO}
    else:
        url, auth = f"{base}/anthropic/v1/messages", {"x-api-key": "sk-ant-x"}
        body = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": HELLO}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers={**auth, "x-sim-error": name}) as resp,
    ):
        answer = await resp.json()
    assert resp.status == status
    if provider == "openai":
        assert set(answer["error"]) == {"message", "type", "param", "code"}
        assert (answer["error"]["type"], answer["error"]["code"]) == (error_type, code)
    else:
        assert answer["type"] == "error" and answer["request_id"].startswith("req_")
        assert answer["error"]["type"] == error_type
    assert ("retry-after" in resp.headers) == (status == 429)


async def test_named_errors_raise_the_sdks_typed_errors(
    oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        await oai.chat.completions.create(
            model="gpt-4o", messages=HELLO, extra_headers={"x-sim-error": "insufficient_quota"}
        )
    assert err.value.code == "insufficient_quota"
    with pytest.raises(anthropic.PermissionDeniedError):
        await ant.messages.create(
            model="claude-haiku-4-5",
            max_tokens=5,
            messages=HELLO,
            extra_headers={"x-sim-error": "permission"},
        )
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.chat.completions.create(
            model="gpt-4o", messages=HELLO, extra_headers={"x-sim-error": "nonsense"}
        )
    assert "x-sim-error must be one of" in bad.value.message


@pytest.mark.parametrize(
    ("secret", "status"),
    [("revoked", 401), ("invalid", 401), ("forbidden", 403), ("good", 200)],
)
async def test_the_models_list_answers_for_the_key(base: str, secret: str, status: int) -> None:
    """The proxy's key probe: a bad key is refused on the models list too."""
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{base}/openai/v1/models", headers={"authorization": f"Bearer sk-{secret}-1"}
        ) as resp:
            assert resp.status == status
            body = await resp.json()
        if status == 200:
            assert body["object"] == "list"
        else:
            assert "message" in body["error"]
        async with session.get(
            f"{base}/anthropic/v1/models",
            headers={"x-api-key": f"sk-ant-{secret}-1", "anthropic-version": "2023-06-01"},
        ) as resp:
            assert resp.status == status
            body = await resp.json()
        if status == 200:
            assert body["has_more"] is False
        else:
            expected = "authentication_error" if status == 401 else "permission_error"
            assert body["error"]["type"] == expected


async def test_bad_json(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{base}/v1/chat/completions",
            data=b"{not json",
            headers={"authorization": "Bearer sk", "content-type": "application/json"},
        )
        body = await resp.json()
    assert resp.status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert resp.headers["x-request-id"].startswith("req_")


# --- wire layout / recording -----------------------------------------------------------


async def test_anthropic_sse_bytes(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{base}/v1/messages",
            json={"model": "m", "max_tokens": 1, "messages": HELLO, "stream": True},
            headers={"x-api-key": "k", "x-sim-no-usage": "1"},
        )
        raw = await resp.read()
    assert resp.headers["content-type"] == "text/event-stream"
    assert resp.headers["cache-control"] == "no-cache"
    events = raw.decode().split("\n\n")
    assert events[-1] == ""
    names = [e.split("\n")[0] for e in events[:-1]]
    assert names == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
        "event: content_block_delta",
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ]
    assert '"usage"' not in raw.decode()


async def test_recorded_requests(
    base: str, sim: tuple[str, web.AppRunner], oai: openai.AsyncOpenAI
) -> None:
    async with aiohttp.ClientSession() as session:
        assert (await (await session.get(f"{base}/healthz")).json()) == {"ok": True}
        await session.delete(f"{base}/_sim/requests")
        await oai.chat.completions.create(
            model="gpt-4o",
            messages=HELLO,
            extra_headers={"x-sim-chunks": "1"},
        )
        recorded = await (await session.get(f"{base}/_sim/requests")).json()
        assert len(recorded) == 1
        entry = recorded[0]
        assert entry["method"] == "POST"
        assert entry["path"] == "/openai/v1/chat/completions"
        assert entry["headers"]["x-sim-chunks"] == "1"
        assert entry["headers"]["authorization"] == "Bearer sk-test"
        assert entry["body"]["messages"] == HELLO
        assert sim[1].app[RECORDER_KEY].items == recorded
        await session.delete(f"{base}/_sim/requests")
        assert (await (await session.get(f"{base}/_sim/requests")).json()) == []
