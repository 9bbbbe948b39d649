"""Holds are upper bounds (contract section 10): what each adapter's bound
counts, for text, images, documents, `n`, server-side context and the
context window, and the money a hold comes to."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import orjson
import pytest

from proxy.errors import ProxyError
from proxy.hold_bound import insufficient_balance, request_bound
from proxy.providers import ADAPTERS
from proxy.providers.anthropic_messages import ANTHROPIC_IMAGE_TOKENS
from proxy.providers.bounds import TEXT_MARGIN_TOKENS
from proxy.providers.openai_chat import OPENAI_IMAGE_TOKENS
from shared.catalog import ModelPrice, load_catalog
from shared.config import REPO_ROOT
from shared.money import units_ceil
from shared.pricing import hold_usd

CHAT = ADAPTERS[("openai", "chat/completions")]
RESPONSES = ADAPTERS[("openai", "responses")]
MESSAGES = ADAPTERS[("anthropic", "messages")]
SHIPPED = load_catalog(REPO_ROOT / "model_catalog.json")
IMAGE = base64.b64encode(bytes(range(256)) * 400).decode()  # ~136 KB of base64


def bound_of(adapter, body: dict, model: str | None = None):
    """The bound of a body as the proxy reads it (orjson, as from the wire)."""
    model = model or body["model"]
    raw = json.dumps(body, ensure_ascii=False).encode()
    parsed = orjson.loads(raw)
    return request_bound(adapter, parsed, raw, model, SHIPPED.models[model]), raw


# text only, with the small windows their providers publish
_SMALL_WINDOWS = {"gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"}


def test_every_shipped_model_has_a_context_window_and_an_image_rule():
    for name, price in SHIPPED.models.items():
        if price.kind == "embedding" or name in _SMALL_WINDOWS:
            assert price.context_window, name
            continue
        assert price.context_window and price.context_window >= 100_000, name
        if price.provider == "anthropic" or not name.startswith("o3-mini"):
            assert price.max_tokens_per_image, name


def test_text_counts_one_token_per_byte_of_the_body():
    text = "naïve café " * 300  # multi-byte characters count by their bytes
    body = {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": text}]}
    bound, raw = bound_of(CHAT, body)
    assert len(raw) > len(text.encode()) > len(text)
    assert bound.input_tokens == len(raw) + TEXT_MARGIN_TOKENS
    assert bound.output_tokens == 100 and bound.server_context is None


def test_n_and_best_of_multiply_the_output_cap():
    base = {"model": "gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    outputs = [bound_of(CHAT, {**base, "n": n})[0].output_tokens for n in (1, 8, 128)]
    assert outputs == [1000, 8000, 128_000]
    assert bound_of(CHAT, {**base, "n": 2, "best_of": 5})[0].output_tokens == 5000
    # no cap in the request: the model's, times n
    no_cap = {"model": "gpt-4o", "n": 3, "messages": base["messages"]}
    assert bound_of(CHAT, no_cap)[0].output_tokens == 3 * 16384


def test_chat_images_inline_and_by_url_count_the_models_most_per_image():
    parts = [{"type": "text", "text": "what are these?"}]
    parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}}] * 20
    parts += [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}] * 5
    body = {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": parts}]}
    bound, raw = bound_of(CHAT, body)
    text_bytes = len(raw) - 20 * len(f"data:image/png;base64,{IMAGE}")
    assert bound.input_tokens == text_bytes + TEXT_MARGIN_TOKENS + 25 * 1445
    # gpt-4o-mini's published image rates are far larger
    two = {**body, "model": "gpt-4o-mini"}
    two["messages"] = [{"role": "user", "content": parts[:1] + parts[-2:]}]
    mini, raw = bound_of(CHAT, two)
    assert mini.input_tokens == len(raw) + TEXT_MARGIN_TOKENS + 2 * 48_169
    assert OPENAI_IMAGE_TOKENS == 48_169  # the provider's worst case, for models without a rule


def test_an_image_bound_never_passes_the_context_window():
    parts = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}] * 500
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": parts}]}
    assert bound_of(CHAT, body)[0].input_tokens == 128_000


def test_chat_file_inputs_and_web_search_hold_the_context_window():
    pdf = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,AAAA"},
    }
    body = {"model": "gpt-4.1", "max_tokens": 5, "messages": [{"role": "user", "content": [pdf]}]}
    bound, _ = bound_of(CHAT, body)
    assert bound.input_tokens == 1_047_576 and bound.server_context == "a file input"
    search = {
        "model": "gpt-4o",
        "web_search_options": {},
        "messages": [{"role": "user", "content": "x"}],
    }
    assert bound_of(CHAT, search)[0].input_tokens == 128_000


def test_responses_server_side_context_holds_the_context_window():
    for extra, reason in [
        ({"previous_response_id": "resp_123"}, "a previous response"),
        ({"conversation": "conv_1"}, "a conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "a stored prompt"),
        ({"background": True, "stream": True}, "a background run"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "hosted tools"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "a stored item"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "a file input"),
    ]:  # fmt: skip
        body = {"model": "gpt-5", "input": "hi", "max_output_tokens": 16, **extra}
        bound, _ = bound_of(RESPONSES, body)
        assert (bound.input_tokens, bound.output_tokens) == (400_000, 16), extra
        assert bound.server_context == reason
    plain, raw = bound_of(RESPONSES, {"model": "gpt-5", "input": "hi", "max_output_tokens": 16})
    assert plain.input_tokens == len(raw) + TEXT_MARGIN_TOKENS
    # function tools are in the body: no context window for them
    tools = {"model": "gpt-5", "input": "hi", "tools": [{"type": "function", "name": "f"}]}
    assert bound_of(RESPONSES, tools)[0].server_context is None


def test_a_background_run_must_be_streamed():
    body = {"model": "gpt-5", "input": "hi", "background": True}
    with pytest.raises(ProxyError) as caught:  # its usage would never pass through
        bound_of(RESPONSES, body)
    assert caught.value.status == 400 and caught.value.code == "background_needs_stream"
    streamed, _ = bound_of(RESPONSES, {**body, "stream": True})
    assert streamed.input_tokens == 400_000


def test_responses_images_count_per_image():
    image = {"type": "input_image", "image_url": f"data:image/jpeg;base64,{IMAGE}"}
    body = {"model": "gpt-5", "input": [{"role": "user", "content": [image, image]}]}
    bound, raw = bound_of(RESPONSES, body)
    inline = 2 * len(image["image_url"])
    assert bound.input_tokens == len(raw) - inline + TEXT_MARGIN_TOKENS + 2 * 1190


def test_anthropic_images_documents_and_server_tools():
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": IMAGE},
    }
    url_image = {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}
    body = {"model": "claude-opus-4-1", "max_tokens": 50,
            "messages": [{"role": "user", "content": [image, url_image, {"type": "text", "text": "?"}]}]}  # fmt: skip
    bound, raw = bound_of(MESSAGES, body)
    assert bound.input_tokens == len(raw) - len(IMAGE) + TEXT_MARGIN_TOKENS + 2 * 1700
    assert ANTHROPIC_IMAGE_TOKENS == 1700
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"},
    }
    body["messages"][0]["content"] = [pdf] * 20
    assert bound_of(MESSAGES, body)[0].input_tokens == 200_000
    text_doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "abc"},
    }
    body["messages"][0]["content"] = [text_doc]
    assert bound_of(MESSAGES, body)[0].server_context is None
    body["messages"][0]["content"] = "hi"
    body["tools"] = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
    assert bound_of(MESSAGES, body)[0].server_context == "server tools"
    body["tools"] = [{"type": "bash_20250124", "name": "bash"}]
    typed, raw = bound_of(MESSAGES, body)
    assert typed.input_tokens == len(raw) + TEXT_MARGIN_TOKENS + 400 + 2000  # tool prompt + bash


def test_a_request_that_needs_a_context_window_the_model_lacks_is_a_400():
    price = ModelPrice(provider="openai", input_per_mtok=Decimal(1), output_per_mtok=Decimal(1))
    body = {"model": "x", "input": "hi", "previous_response_id": "resp_1"}
    with pytest.raises(ProxyError) as caught:
        request_bound(RESPONSES, body, orjson.dumps(body), "x", price)
    assert caught.value.status == 400 and "context_window" in caught.value.message


@pytest.mark.parametrize("value", [2**63, 10**30, 2**64 + 1])
def test_token_caps_beyond_int64_are_a_400(value):
    for adapter, name in [(CHAT, "max_tokens"), (CHAT, "n"), (RESPONSES, "max_output_tokens"),
                          (MESSAGES, "max_tokens")]:  # fmt: skip
        body = {"model": "gpt-4o" if adapter is not MESSAGES else "claude-haiku-4-5", name: value}
        with pytest.raises(ProxyError) as caught:
            bound_of(adapter, body)
        assert caught.value.status == 400


@pytest.mark.parametrize("options", ["x", [], 1, True])
def test_stream_options_that_are_not_an_object_are_a_400(options):
    body = {"model": "gpt-4o", "stream": True, "stream_options": options, "messages": []}
    with pytest.raises(ProxyError) as caught:
        CHAT.prepare(body, orjson.dumps(body))
    assert caught.value.status == 400


def test_hold_money_of_a_bound_is_exact():
    price = SHIPPED.models["claude-opus-4-1"]
    # dearest input (1-hour cache write, 30/M) for the input, 75/M for the output
    assert hold_usd(200_000, 32_000, price, Decimal("1.5")) == Decimal("12.6")
    assert units_ceil(hold_usd(1, 0, price, Decimal(1))) == 30_000


def test_the_402_says_what_was_needed_and_what_there_was():
    error = insufficient_balance(163_800_001, 100_000_000)
    assert error.status == 402 and error.code == "insufficient_balance"
    assert "needs up to 0.1639 USD, 0.1000 available" in error.message
    assert "max_tokens" in error.message and "add credit" in error.message
    assert error.headers == {
        "x-meterway-hold-usd": "0.163800001",
        "x-meterway-available-usd": "0.1",
    }


def test_a_json_escape_cannot_hide_a_marker_from_the_bound():
    """`\\u0064ocument` is `document` to the provider: the walk still runs."""
    raw = (
        b'{"model": "claude-opus-4-5", "max_tokens": 10, "messages": [{"role": "user",'
        b' "content": [{"type": "d\\u006fcument", "source": {"type": "url",'
        b' "url": "https://example.com/big.pdf"}}]}]}'
    )
    body = orjson.loads(raw)
    price = SHIPPED.models["claude-opus-4-5"]
    assert request_bound(MESSAGES, body, raw, "claude-opus-4-5", price).input_tokens == 200_000
    raw = b'{"model": "gpt-5", "input": "x", "previous_response_i\\u0064": "resp_1"}'
    bound = request_bound(RESPONSES, orjson.loads(raw), raw, "gpt-5", SHIPPED.models["gpt-5"])
    assert bound.input_tokens == 400_000


def test_responses_input_items_not_known_to_be_whole_hold_the_context_window():
    for item in [
        {"type": "reasoning", "id": "rs_1", "summary": []},  # stored, no encrypted content
        {"type": "image_generation_call", "id": "ig_1"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    ]:
        body = {"model": "gpt-5", "input": [item]}
        assert bound_of(RESPONSES, body)[0].input_tokens == 400_000, item
    whole = {"model": "gpt-5", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "42"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "abc"},
    ]}  # fmt: skip
    bound, raw = bound_of(RESPONSES, whole)
    assert bound.server_context is None and bound.input_tokens == len(raw) + TEXT_MARGIN_TOKENS


def test_any_anthropic_tools_add_the_tool_use_system_prompt():
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}]}  # fmt: skip
    bound, raw = bound_of(MESSAGES, body)
    assert bound.input_tokens == len(raw) + TEXT_MARGIN_TOKENS + 400
