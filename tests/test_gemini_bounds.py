"""The Gemini adapter's hold bound and key rules, unit by unit (contract sections
5 and 10): every request's billed usage stays within its hold."""

from __future__ import annotations

import base64
import struct
import zlib

import orjson
import pytest

from proxy.key_health import Verdict, classify, rules_for
from proxy.providers import ADAPTERS
from proxy.providers.image_size import image_size
from shared.catalog import load_catalog
from shared.config import REPO_ROOT

GENERATE = ADAPTERS[("gemini", "generateContent")]
PRICE = load_catalog(REPO_ROOT / "model_catalog.json").get("gemini-2.5-flash")


def png(width: int, height: int) -> str:
    header = struct.pack(">II", width, height) + b"\x01\x00\x00\x00\x00"  # 1-bit grey
    ihdr = b"IHDR" + header
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 16).decode()


def bound(body: dict):
    raw = orjson.dumps(body)
    return GENERATE.bound(body, raw, PRICE)


def test_image_sizes_are_read_from_headers():
    assert image_size(png(3072, 1024)) == (3072, 1024)
    gif = base64.b64encode(b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00" * 8).decode()
    assert image_size(gif) == (640, 480)
    jpeg = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08" + struct.pack(">HH", 900, 1600)
    assert image_size(base64.b64encode(jpeg + b"\x00" * 8).decode()) == (1600, 900)
    assert image_size(base64.b64encode(b"not an image at all").decode()) is None


def test_a_large_image_holds_its_tiles_and_an_unreadable_one_the_window():
    image = {"inlineData": {"mimeType": "image/png", "data": png(3072, 3072)}}
    b = bound({"contents": [{"parts": [image]}]})
    assert b.server_context is None
    assert b.input_tokens >= 16 * 258  # 4 x 4 tiles of 768 px
    odd = {"inline_data": {"mime_type": "image/png", "data": "AAAA" * 10}}
    assert bound({"contents": [{"parts": [odd]}]}).server_context is not None
    video = {"inlineData": {"mimeType": "video/mp4", "data": "AAAA"}}
    assert bound({"contents": [{"parts": [video]}]}).server_context is not None
    assert bound({"contents": [{"parts": [{"fileData": {"fileUri": "x"}}]}]}).server_context


@pytest.mark.parametrize(
    "tools",
    [[{"googleSearch": {}}], [{"enterpriseWebSearch": {}}], [{"codeExecution": {}}],
     [{"functionDeclarations": [], "urlContext": {}}], ["odd"]],
)  # fmt: skip
def test_every_tool_but_function_declarations_holds_the_window(tools):
    assert bound({"contents": [], "tools": tools}).server_context is not None


def test_function_declarations_are_text():
    assert bound({"contents": [], "tools": [{"functionDeclarations": []}]}).server_context is None
    assert bound({"contents": [], "cachedContent": "cachedContents/x"}).server_context


def test_candidates_and_caps_in_either_spelling_or_as_strings():
    assert bound({"generationConfig": {"maxOutputTokens": 100}}).output_tokens == 100
    assert (
        bound({"generationConfig": {"maxOutputTokens": "100", "candidateCount": "3"}}).output_tokens
        == 300
    )
    both = {
        "generationConfig": {"maxOutputTokens": 100},
        "generation_config": {"candidate_count": 4},
    }
    assert bound(both).output_tokens == 400
    assert (
        bound({"generationConfig": {"candidateCount": "many"}}).output_tokens
        == 8 * PRICE.max_output_tokens
    )
    assert bound({}).output_tokens == PRICE.max_output_tokens


def google_error(status: int, name: str, **detail) -> bytes:
    details = [detail] if detail else []
    return orjson.dumps(
        {"error": {"code": status, "message": "m", "status": name, "details": details}}
    )


def test_gemini_key_rules():
    rules = rules_for("gemini")
    bad_key = google_error(400, "INVALID_ARGUMENT", reason="API_KEY_INVALID")
    assert classify(rules, 400, bad_key) is Verdict.SUSPECT
    assert classify(rules, 400, google_error(400, "INVALID_ARGUMENT")) is Verdict.PASS
    assert classify(rules, 429, google_error(429, "RESOURCE_EXHAUSTED")) is Verdict.RATE_LIMITED
    daily = google_error(
        429, "RESOURCE_EXHAUSTED",
        violations=[{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
    )  # fmt: skip
    assert classify(rules, 429, daily) is Verdict.QUOTA
    assert classify(rules, 403, google_error(403, "PERMISSION_DENIED")) is Verdict.SUSPECT
    assert classify(rules, 401, b"") is Verdict.SUSPECT
