"""SSE scanners and provider adapters: usage read from streamed and whole
answers, the OpenAI usage-only chunk hidden from clients that did not ask for
it, every other byte relayed unchanged whatever the chunking."""

from __future__ import annotations

import random
from collections.abc import Iterable

import orjson
import pytest

from proxy.providers import ADAPTERS
from proxy.providers.anthropic_messages import AnthropicMessages
from proxy.providers.openai_chat import OpenAIChat
from proxy.providers.openai_responses import OpenAIResponses
from proxy.providers.sse import StreamScanner, event_data, event_json
from shared.events import TokenUsage

# ---------------------------------------------------------------- helpers


def sse(payload: dict | str, event: str | None = None, nl: str = "\n") -> bytes:
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    head = f"event: {event}{nl}" if event else ""
    return f"{head}data: {data}{nl}{nl}".encode()


def run(scanner: StreamScanner, pieces: Iterable[bytes]) -> bytes:
    """Feed every piece, then finish; return everything meant for the client."""
    out = bytearray()
    for piece in pieces:
        out += scanner.feed(piece)
    out += scanner.finish()
    return bytes(out)


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_pieces(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(data):
        size = rng.randint(1, 40)
        pieces.append(data[i : i + size])
        i += size
    return pieces


def awkward_splits(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, mid-terminator, mid-line, and some random cuts."""
    splits = [[data], one_byte_at_a_time(data)]
    for term in (b"\n\n", b"\r\n\r\n"):
        at = data.find(term)
        if at != -1:
            splits.append([data[: at + 1], data[at + 1 :]])  # between the two line ends
            splits.append([data[: at + len(term) - 1], data[at + len(term) - 1 :]])
    at = data.find(b"data: ")
    splits.append([data[: at + 3], data[at + 3 :]])  # inside "data:"
    splits.append([data[: at + 20], data[at + 20 :]])  # inside the JSON
    splits.extend(random_pieces(data, seed) for seed in range(5))
    return splits


def chat_prepared(body: dict):
    adapter = OpenAIChat()
    return adapter, adapter.prepare(body, orjson.dumps(body))


# ---------------------------------------------------------------- sse basics


def test_event_data_and_json():
    event = b'event: x\ndata: {"a":\ndata:1}\n: comment\n\n'
    assert event_data(event) == b'{"a":\n1}'
    assert event_json(event) == {"a": 1}
    assert event_json(b"data: [DONE]\n\n") is None
    assert event_json(b"data: [1, 2]\n\n") is None  # not an object
    assert event_json(b"event: ping\n\n") is None
    assert event_data(b'data: {"a":1}\r\n\r\n') == b'{"a":1}'


def test_base_scanner_requires_on_event():
    with pytest.raises(NotImplementedError):
        StreamScanner().feed(b"data: x\n\n")


def test_adapter_registry():
    assert isinstance(ADAPTERS[("openai", "chat/completions")], OpenAIChat)
    assert isinstance(ADAPTERS[("openai", "responses")], OpenAIResponses)
    assert isinstance(ADAPTERS[("anthropic", "messages")], AnthropicMessages)
    for (provider, endpoint), adapter in ADAPTERS.items():
        assert (adapter.kind, adapter.endpoint) == (provider, endpoint)


# ---------------------------------------------------------------- OpenAI chat

CHUNK = {
    "id": "chatcmpl-abc",
    "object": "chat.completion.chunk",
    "created": 1_700_000_000,
    "model": "gpt-4o-2024-08-06",
    "system_fingerprint": "fp_1",
}


def chat_chunk(delta: dict, finish: str | None = None) -> dict:
    return {
        **CHUNK,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 30,
    "total_tokens": 1230,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def chat_stream(nl: str = "\n") -> tuple[list[bytes], bytes]:
    """The events an upstream sends with include_usage on, and the usage chunk."""
    events = [
        sse(chat_chunk({"role": "assistant", "content": "", "refusal": None}), nl=nl),
        sse(chat_chunk({"content": "Hel"}), nl=nl),
        sse(chat_chunk({"content": "lo\n\nworld"}), nl=nl),  # escaped newlines inside JSON
        sse(chat_chunk({}, finish="stop"), nl=nl),
    ]
    usage_chunk = sse({**CHUNK, "choices": [], "usage": CHAT_USAGE}, nl=nl)
    done = sse("[DONE]", nl=nl)
    return [*events, usage_chunk, done], usage_chunk


EXPECTED_CHAT_USAGE = TokenUsage(
    uncached_input_tokens=176, cache_read_tokens=1024, output_tokens=30
)


def test_chat_prepare_adds_include_usage_when_missing():
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    adapter, prepared = chat_prepared(body)
    assert prepared.stream is True
    assert prepared.hide_usage_chunk is True
    sent = orjson.loads(prepared.body)
    assert sent == {**body, "stream_options": {"include_usage": True}}
    assert "stream_options" not in body  # the parsed request is not mutated
    assert adapter.scanner(prepared).filtering is True


def test_chat_prepare_keeps_other_stream_options():
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": False, "x": 1}}
    _, prepared = chat_prepared(body)
    assert prepared.hide_usage_chunk is True
    assert orjson.loads(prepared.body)["stream_options"] == {"include_usage": True, "x": 1}
    assert body["stream_options"] == {"include_usage": False, "x": 1}


def test_chat_prepare_leaves_client_include_usage_alone():
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}}
    raw = orjson.dumps(body)
    adapter = OpenAIChat()
    prepared = adapter.prepare(body, raw)
    assert prepared.body is raw
    assert prepared.stream is True
    assert prepared.hide_usage_chunk is False
    assert adapter.scanner(prepared).filtering is False


@pytest.mark.parametrize("stream", [False, None, "true", 1])
def test_chat_prepare_leaves_non_stream_bodies_as_the_same_bytes(stream):
    body = {"model": "gpt-4o", "messages": []}
    if stream is not None:
        body["stream"] = stream
    raw = b'{"model": "gpt-4o",  "messages": [] , "stream": false}'  # odd spacing kept
    prepared = OpenAIChat().prepare(body, raw)
    assert prepared.body is raw
    assert prepared.stream is False
    assert prepared.hide_usage_chunk is False


@pytest.mark.parametrize("nl", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_chat_scanner_hides_usage_chunk_whatever_the_chunking(nl):
    adapter, prepared = chat_prepared({"model": "gpt-4o", "stream": True})
    events, usage_chunk = chat_stream(nl)
    upstream = b"".join(events)
    expected = b"".join(e for e in events if e is not usage_chunk)
    assert len(expected) == len(upstream) - len(usage_chunk)
    for pieces in awkward_splits(upstream):
        assert b"".join(pieces) == upstream
        scanner = adapter.scanner(prepared)
        assert run(scanner, pieces) == expected
        assert scanner.usage == EXPECTED_CHAT_USAGE
        assert scanner.complete is True
        assert scanner.deltas == 2  # the role-only and final chunks carry no output
        assert scanner.error_event is False


def test_chat_scanner_forwards_whole_events_in_order_as_they_complete():
    adapter, prepared = chat_prepared({"model": "gpt-4o", "stream": True})
    events, usage_chunk = chat_stream()
    upstream = b"".join(events)
    expected = b"".join(e for e in events if e is not usage_chunk)
    scanner = adapter.scanner(prepared)
    sent = b""
    for byte in one_byte_at_a_time(upstream):
        sent += scanner.feed(byte)
        assert expected.startswith(sent)  # never reordered, never a partial event
        assert sent == b"" or sent.endswith(b"\n\n")
    assert sent == expected
    assert scanner.finish() == b""


def test_chat_scanner_state_as_the_stream_goes():
    adapter, prepared = chat_prepared({"model": "gpt-4o", "stream": True})
    events, _ = chat_stream()
    scanner = adapter.scanner(prepared)
    assert scanner.feed(events[0]) == events[0]
    assert (scanner.deltas, scanner.complete, scanner.usage) == (
        0,
        False,
        None,
    )  # role only: no output yet
    for event in events[1:4]:
        scanner.feed(event)
    assert scanner.feed(events[4]) == b""  # the usage-only chunk
    assert scanner.usage == EXPECTED_CHAT_USAGE
    assert scanner.complete is False
    assert scanner.feed(events[5]) == events[5]
    assert scanner.complete is True


@pytest.mark.parametrize("nl", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_chat_scanner_with_client_include_usage_passes_everything(nl):
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}}
    adapter, prepared = chat_prepared(body)
    events, _ = chat_stream(nl)
    upstream = b"".join(events)
    for pieces in awkward_splits(upstream):
        scanner = adapter.scanner(prepared)
        for piece in pieces:
            assert scanner.feed(piece) == piece  # forwarded at once, unchanged
        assert scanner.finish() == b""
        assert scanner.usage == EXPECTED_CHAT_USAGE
        assert scanner.complete is True
        assert scanner.deltas == 2


def test_chat_scanner_stream_cut_before_done():
    adapter, prepared = chat_prepared({"model": "gpt-4o", "stream": True})
    events, _ = chat_stream()
    partial = events[3][:25]
    upstream = b"".join(events[:3]) + partial
    scanner = adapter.scanner(prepared)
    out = run(scanner, one_byte_at_a_time(upstream))
    # the trailing partial event is passed on at the end, as it is
    assert out == upstream
    assert scanner.complete is False
    assert scanner.usage is None
    assert scanner.deltas == 2


def test_chat_scanner_error_event():
    adapter, prepared = chat_prepared({"model": "gpt-4o", "stream": True})
    error = sse({"error": {"message": "overloaded", "type": "server_error", "code": None}})
    scanner = adapter.scanner(prepared)
    assert run(scanner, [sse(chat_chunk({"content": "a"})), error]).endswith(error)
    assert scanner.error_event is True
    assert scanner.complete is False


def test_chat_scanner_keeps_usage_chunks_that_carry_choices():
    # a usage object on a chunk that also has choices is read but not hidden
    adapter, prepared = chat_prepared({"model": "gpt-4o", "stream": True})
    chunk = sse({**chat_chunk({}, finish="stop"), "usage": CHAT_USAGE})
    scanner = adapter.scanner(prepared)
    assert scanner.feed(chunk) == chunk
    assert scanner.usage == EXPECTED_CHAT_USAGE


def test_chat_scanner_done_text_in_content_is_not_the_end():
    adapter, prepared = chat_prepared({"model": "gpt-4o", "stream": True})
    scanner = adapter.scanner(prepared)
    scanner.feed(sse(chat_chunk({"content": "the stream ends with [DONE]"})))
    assert scanner.deltas == 1
    assert scanner.complete is False


def test_chat_scanner_counts_deltas_with_spaced_usage_null():
    adapter, prepared = chat_prepared({"model": "gpt-4o", "stream": True})
    scanner = adapter.scanner(prepared)
    chunk = '{"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}'
    scanner.feed(sse(chunk))
    assert scanner.deltas == 1


def test_chat_usage_from_body():
    adapter = OpenAIChat()
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
        },
    }
    assert adapter.usage_from_body(body) == TokenUsage(
        uncached_input_tokens=86, cache_read_tokens=1920, output_tokens=300
    )
    no_details = {"usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29}}
    assert adapter.usage_from_body(no_details) == TokenUsage(
        uncached_input_tokens=19, output_tokens=10
    )
    assert adapter.usage_from_body({"choices": []}) is None
    assert adapter.usage_from_body({"usage": None}) is None
    # more cached than prompt tokens never gives a negative uncached count
    odd = {"usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}}
    assert adapter.usage_from_body(odd) == TokenUsage(cache_read_tokens=5)


def test_chat_output_cap():
    adapter = OpenAIChat()
    assert adapter.output_cap({"max_completion_tokens": 100, "max_tokens": 50}) == 100
    assert adapter.output_cap({"max_tokens": 50}) == 50
    assert adapter.output_cap({}) is None
    assert adapter.output_cap({"max_tokens": 0}) is None
    assert adapter.output_cap({"max_tokens": -5}) is None
    assert adapter.output_cap({"max_tokens": "50"}) is None


# ---------------------------------------------------------------- OpenAI Responses

RESPONSE_USAGE = {
    "input_tokens": 500,
    "input_tokens_details": {"cached_tokens": 200},
    "output_tokens": 40,
    "output_tokens_details": {"reasoning_tokens": 10},
    "total_tokens": 540,
}


def responses_stream(final: str = "response.completed", nl: str = "\n") -> list[bytes]:
    response = {"id": "resp_1", "object": "response", "model": "gpt-4o", "output": []}
    events = [
        sse(
            {"type": "response.created", "response": {**response, "status": "in_progress"}},
            "response.created",
            nl,
        )
    ]
    for i, text in enumerate(["Hel", "lo", " there"]):
        delta = {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": text,
            "sequence_number": i + 1,
        }
        events.append(sse(delta, "response.output_text.delta", nl))
    events.append(
        sse(
            {
                "type": "response.output_text.done",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "text": "Hello there",
            },
            "response.output_text.done",
            nl,
        )
    )
    status = final.split(".")[1]
    events.append(
        sse(
            {"type": final, "response": {**response, "status": status, "usage": RESPONSE_USAGE}},
            final,
            nl,
        )
    )
    return events


EXPECTED_RESPONSE_USAGE = TokenUsage(
    uncached_input_tokens=300, cache_read_tokens=200, output_tokens=40
)


@pytest.mark.parametrize("final", ["response.completed", "response.incomplete"])
@pytest.mark.parametrize("nl", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_responses_scanner_reads_final_usage(final, nl):
    adapter = OpenAIResponses()
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    raw = orjson.dumps(body)
    prepared = adapter.prepare(body, raw)
    assert prepared.body is raw and prepared.stream is True and not prepared.hide_usage_chunk
    upstream = b"".join(responses_stream(final, nl))
    for pieces in awkward_splits(upstream):
        scanner = adapter.scanner(prepared)
        for piece in pieces:
            assert scanner.feed(piece) == piece
        assert scanner.finish() == b""
        assert scanner.usage == EXPECTED_RESPONSE_USAGE
        assert scanner.complete is True
        assert scanner.deltas == 3
        assert scanner.error_event is False


def test_responses_scanner_not_complete_without_final_event():
    scanner = OpenAIResponses().scanner(OpenAIResponses().prepare({"stream": True}, b"{}"))
    run(scanner, responses_stream()[:-1])
    assert scanner.complete is False
    assert scanner.usage is None
    assert scanner.deltas == 3


def test_responses_scanner_error_event():
    scanner = OpenAIResponses().scanner(OpenAIResponses().prepare({"stream": True}, b"{}"))
    error = sse(
        {"type": "error", "code": "server_error", "message": "boom", "param": None}, "error"
    )
    run(scanner, [*responses_stream()[:2], error])
    assert scanner.error_event is True
    assert scanner.complete is False


def test_responses_final_event_name_in_text_is_not_the_end():
    scanner = OpenAIResponses().scanner(OpenAIResponses().prepare({"stream": True}, b"{}"))
    done = {
        "type": "response.output_text.done",
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "text": "wait for response.completed before reading usage",
    }
    scanner.feed(sse(done, "response.output_text.done"))
    assert scanner.complete is False


def test_responses_usage_from_body():
    adapter = OpenAIResponses()
    body = {
        "id": "resp_67ccd2bed1ec8190b14f964abc054267",
        "object": "response",
        "status": "completed",
        "model": "gpt-4o-2024-08-06",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 328,
            "input_tokens_details": {"cached_tokens": 128},
            "output_tokens": 52,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 380,
        },
    }
    assert adapter.usage_from_body(body) == TokenUsage(
        uncached_input_tokens=200, cache_read_tokens=128, output_tokens=52
    )
    # Responses' names, not Chat's: prompt_tokens is not read here
    assert adapter.usage_from_body({"usage": {"prompt_tokens": 9}}) == TokenUsage()
    assert adapter.usage_from_body({"output": []}) is None


def test_responses_output_cap():
    adapter = OpenAIResponses()
    assert adapter.output_cap({"max_output_tokens": 256}) == 256
    assert adapter.output_cap({"max_tokens": 256}) is None
    assert adapter.output_cap({"max_output_tokens": 0}) is None


# ---------------------------------------------------------------- Anthropic

START_USAGE = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 12000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 1,
    "service_tier": "standard",
}


def anthropic_stream(nl: str = "\n", delta_usage: dict | None = None) -> list[bytes]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5-20250929",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": START_USAGE,
    }
    block = {"type": "text", "text": ""}
    return [
        sse({"type": "message_start", "message": message}, "message_start", nl),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": block},
            "content_block_start",
            nl,
        ),
        sse({"type": "ping"}, "ping", nl),
        sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
            "content_block_delta",
            nl,
        ),
        sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
            "content_block_delta",
            nl,
        ),
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop", nl),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": delta_usage or {"output_tokens": 57},
            },
            "message_delta",
            nl,
        ),
        sse({"type": "message_stop"}, "message_stop", nl),
    ]


EXPECTED_ANTHROPIC_USAGE = TokenUsage(
    uncached_input_tokens=25,
    cache_read_tokens=12000,
    cache_write_tokens=3000,
    cache_write_1h_tokens=2000,
    output_tokens=57,
    service_tier="standard",  # reported as given
)


@pytest.mark.parametrize("nl", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_anthropic_scanner_merges_start_and_delta_usage(nl):
    adapter = AnthropicMessages()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True, "messages": []}
    raw = orjson.dumps(body)
    prepared = adapter.prepare(body, raw)
    assert prepared.body is raw and prepared.stream is True and not prepared.hide_usage_chunk
    upstream = b"".join(anthropic_stream(nl))
    for pieces in awkward_splits(upstream):
        scanner = adapter.scanner(prepared)
        for piece in pieces:
            assert scanner.feed(piece) == piece
        assert scanner.finish() == b""
        assert scanner.usage == EXPECTED_ANTHROPIC_USAGE
        assert scanner.complete is True
        assert scanner.deltas == 2
        assert scanner.error_event is False


def test_anthropic_scanner_state_as_the_stream_goes():
    events = anthropic_stream()
    scanner = AnthropicMessages().scanner(AnthropicMessages().prepare({"stream": True}, b"{}"))
    scanner.feed(events[0])
    # after message_start: the input side is known, output is the placeholder 1
    assert scanner.usage == TokenUsage(
        uncached_input_tokens=25,
        cache_read_tokens=12000,
        cache_write_tokens=3000,
        cache_write_1h_tokens=2000,
        output_tokens=1,
        service_tier="standard",
    )
    for event in events[1:7]:
        scanner.feed(event)
    assert scanner.usage == EXPECTED_ANTHROPIC_USAGE
    assert scanner.complete is False  # not before message_stop
    scanner.feed(events[7])
    assert scanner.complete is True


def test_anthropic_message_delta_with_full_usage_and_nulls():
    # newer API versions repeat the input fields in message_delta (null when unknown)
    delta_usage = {
        "input_tokens": 25,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": 12000,
        "output_tokens": 80,
    }
    scanner = AnthropicMessages().scanner(AnthropicMessages().prepare({"stream": True}, b"{}"))
    run(scanner, anthropic_stream(delta_usage=delta_usage))
    assert scanner.usage == TokenUsage(
        uncached_input_tokens=25,
        cache_read_tokens=12000,
        cache_write_tokens=3000,  # null in message_delta does not erase message_start's
        cache_write_1h_tokens=2000,
        output_tokens=80,
        service_tier="standard",
    )


def test_anthropic_scanner_error_and_truncation():
    events = anthropic_stream()
    error = sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"
    )
    scanner = AnthropicMessages().scanner(AnthropicMessages().prepare({"stream": True}, b"{}"))
    run(scanner, [*events[:4], error])
    assert scanner.error_event is True
    assert scanner.complete is False
    assert scanner.deltas == 1
    assert scanner.usage is not None and scanner.usage.output_tokens == 1


def test_anthropic_usage_from_body():
    adapter = AnthropicMessages()
    body = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 500,
            "cache_read_input_tokens": 2000,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 300},
            "output_tokens": 20,
            "service_tier": "standard",
        },
    }
    assert adapter.usage_from_body(body) == TokenUsage(
        uncached_input_tokens=10,
        cache_read_tokens=2000,
        cache_write_tokens=500,
        cache_write_1h_tokens=300,
        output_tokens=20,
        service_tier="standard",
    )
    # older answers: no cache_creation split, cache fields possibly null
    old = {"usage": {"input_tokens": 12, "cache_creation_input_tokens": None, "output_tokens": 3}}
    assert adapter.usage_from_body(old) == TokenUsage(uncached_input_tokens=12, output_tokens=3)
    # the 1h part can never exceed the cache writes it is part of
    odd = {
        "usage": {
            "cache_creation_input_tokens": 4,
            "cache_creation": {"ephemeral_1h_input_tokens": 9},
        }
    }
    assert adapter.usage_from_body(odd) == TokenUsage(cache_write_tokens=4, cache_write_1h_tokens=4)
    assert adapter.usage_from_body({"content": []}) is None


def test_anthropic_output_cap():
    adapter = AnthropicMessages()
    assert adapter.output_cap({"max_tokens": 1024}) == 1024
    assert adapter.output_cap({}) is None
    assert adapter.output_cap({"max_tokens": 0}) is None


# ---------------------------------------------------------------- block fast path


def test_block_fast_path_counts_like_event_by_event():
    """Blocks with nothing rare are counted in one pass; the count must equal
    what the event-by-event path finds, for every adapter."""
    chat = [sse(chat_chunk({"role": "assistant", "content": ""}))]
    chat += [sse(chat_chunk({"content": f'word {i} "quoted"'})) for i in range(7)]
    chat += [sse(chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))]
    chat += [sse(chat_chunk({}, finish="stop"))]
    anthropic = [
        sse({"type": "content_block_delta", "delta": {"text": "x"}}, "content_block_delta")
    ] * 5 + [sse({"type": "ping"}, "ping")]
    responses = responses_stream()[1:4]
    cases = [
        (OpenAIChat().scanner(chat_prepared({"stream": True})[1]), chat, 8),
        (AnthropicMessages().scanner(None), anthropic, 5),
        (OpenAIResponses().scanner(None), responses, 3),
    ]
    for scanner, events, expected in cases:
        block = b"".join(events)
        assert scanner.feed(block) == block
        assert scanner.deltas == expected
        assert scanner.complete is False and scanner.usage is None
        one_by_one = type(scanner)()
        for event in events:
            one_by_one.on_event(event)
        assert one_by_one.deltas == expected


@pytest.mark.parametrize(
    "usage_json",
    [
        '"usage" : {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}',
        '"usage":  {"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}',
        '"usage":\ndata: {"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}',
    ],
    ids=["spaced", "two-spaces", "split-over-data-lines"],
)
def test_chat_usage_is_found_however_it_is_spaced(usage_json):
    _, prepared = chat_prepared({"model": "gpt-4o", "messages": [], "stream": True})
    head = b"".join(sse(chat_chunk({"content": f"t{i}"})) for i in range(3))
    usage_chunk = (
        'data: {"id":"c","object":"chat.completion.chunk","choices":[],' + usage_json + "}\n\n"
    ).encode()
    done = b"data: [DONE]\n\n"
    for pieces in ([head + usage_chunk + done], [head, usage_chunk, done]):
        scanner = OpenAIChat().scanner(prepared)
        out = run(scanner, pieces)
        assert out == head + done  # the injected usage chunk stays hidden
        assert scanner.usage == TokenUsage(uncached_input_tokens=9, output_tokens=4)
        assert scanner.deltas == 3 and scanner.complete


def test_a_long_event_in_many_pieces_is_scanned_once_whole():
    scanner = OpenAIChat().scanner(chat_prepared({"stream": True})[1])
    event = sse(chat_chunk({"content": "x" * 200_000}))
    pieces = [event[i : i + 100] for i in range(0, len(event), 100)]
    out = run(scanner, [*pieces, b"data: [DONE]\n\n"])
    assert out == event + b"data: [DONE]\n\n"
    assert scanner.deltas == 1 and scanner.complete
