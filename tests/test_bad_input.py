"""Bad input gets a 4xx in the provider's format, never a 500 (contract section 10).

Over raw sockets (so that headers can carry any bytes) against the session's
proxy with the simulator upstream: targeted cases first, then a fuzz of hostile
bodies, headers and parameters over every metered endpoint, the account API
and the models lists. The fuzz's inputs come from hypothesis with a fixed seed
(`derandomize`), drawn up front and then sent one by one; every invariant
failure is collected, and the test fails listing each input that broke one.

Invariants: no 500 (nor any other 5xx that upstream did not send), a proxy-made
error is in the provider's format with one `x-request-id`, no hold is left
behind, and nothing is billed for a refused request (no usage record for it;
the balance is the credit minus what the served requests cost).
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_holds_released, wait_settled

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(autouse=True)
def _room_in_the_recorder(upstream) -> None:
    """Counts of upstream requests compare lengths of a log bounded at 1000."""
    upstream.clear()


ANTHROPIC_PATHS = ("/v1/anthropic/messages", "/v1/anthropic/v1/messages")


# --- a raw HTTP/1.1 client ------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


async def send(
    base: str,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None = None,
    *,
    chunked: bool = False,
) -> Answer:
    """One request on its own connection (`Connection: close`), the answer read whole."""
    port = urlsplit(base).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [
            f"{method} {target} HTTP/1.1".encode("latin-1"),
            b"Host: 127.0.0.1",
            b"Connection: close",
        ]
        lines += [name + b": " + value for name, value in headers]
        payload = b""
        if body is not None and chunked:
            lines.append(b"Transfer-Encoding: chunked")
            payload = b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
                for i in range(0, len(body), 1000)
            )
            payload += b"0\r\n\r\n"
        elif body is not None:
            lines.append(b"Content-Length: %d" % len(body))
            payload = body
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
        await writer.drain()
        async with asyncio.timeout(30):
            raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    head_lines = head.decode("latin-1").split("\r\n")
    status = int(head_lines[0].split()[1])
    parsed = []
    for line in head_lines[1:]:
        name, _, value = line.partition(":")
        parsed.append((name.strip().lower(), value.strip()))
    answer = Answer(status, parsed, rest)
    if (answer.header("transfer-encoding") or "").lower() == "chunked":
        answer.body = _dechunk(rest)
    return answer


def bearer(key: str | bytes) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + (key.encode() if isinstance(key, str) else key))


JSON_TYPE = (b"Content-Type", b"application/json")


def format_problem(answer: Answer, path: str) -> str | None:
    """Why a proxy-made error answer is not in the provider's format (None: it is)."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        return f"not JSON: {answer.body[:200]!r}"
    if len(answer.all("x-request-id")) != 1:
        return f"x-request-id headers: {answer.all('x-request-id')}"
    if path.startswith("/v1/anthropic"):
        ok = (
            isinstance(body, dict)
            and body.get("type") == "error"
            and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("type"), str)
            and isinstance(body["error"].get("message"), str)
        )
    else:
        ok = (
            isinstance(body, dict)
            and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("message"), str)
            and isinstance(body["error"].get("type"), str)
        )
    return None if ok else f"not the provider's error format: {body!r:.300}"


def problem(answer: Answer, path: str) -> str | None:
    """Why an answer breaks the contract for bad input (None: it does not)."""
    upstream_said = answer.header("x-upstream-request-id") is not None
    if answer.status >= 500 and not (upstream_said and answer.status in (502, 503, 504)):
        return f"{answer.status}: {answer.body[:300]!r}"
    if answer.status >= 400 and not upstream_said:
        return format_problem(answer, path)
    return None


# --- targeted cases -------------------------------------------------------------------------

CHAT_BODY = {
    "model": "gpt-4o-mini",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "hi"}],
}
MESSAGES_BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "hi"}],
}
RESPONSES_BODY = {"model": "gpt-4o-mini", "max_output_tokens": 16, "input": "hi"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/openai/chat/completions", CHAT_BODY),
        ("POST", "/v1/openai/responses", RESPONSES_BODY),
        ("POST", "/v1/anthropic/messages", MESSAGES_BODY),
        ("POST", "/v1/anthropic/v1/messages", MESSAGES_BODY),
        ("GET", "/v1/account", None),
        ("GET", "/v1/account/usage", None),
        ("GET", "/v1/openai/models", None),
        ("GET", "/v1/anthropic/v1/models", None),
    ],
)
@pytest.mark.parametrize(
    "auth",
    [
        [bearer(b"\xff\xfe\x80")],
        [bearer(b"mw-\xc3\x28abc")],
        [(b"Authorization", b"\xff\xff \xff")],
        [(b"x-api-key", b"\xe9t\xe9")],
        [bearer("x" * 8000)],
        [bearer(b"\xff" * 4000)],
    ],
    ids=["bad-utf8", "broken-utf8", "bad-scheme", "x-api-key", "overlong", "overlong-bytes"],
)
async def test_bad_keys_are_401_in_the_provider_format(
    proxy_url, upstream, method, path, body, auth
):
    before = len(upstream.recorded())
    data = json.dumps(body).encode() if body is not None else None
    answer = await send(proxy_url, method, path, [*auth, JSON_TYPE], data)
    assert answer.status == 401, answer.body
    assert format_problem(answer, path) is None, format_problem(answer, path)
    assert len(upstream.recorded()) == before


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/account/usage?limit=\xff",
        b"/v1/openai/\xff\xfe",
        b"/v1/anthropic/\xc3\x28?x=\xff",
        b"/v1/openai/models?\xff=1",
        b"/v1/openai/%ff",
        b"/v1/%00",
        b"/v1/anthropic/v1/messages?%ff",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_raw_bytes_in_the_path_or_query_are_4xx_in_the_provider_format(
    proxy_url, accounts, target, method
):
    acct = await accounts.create("1")
    body = b"{}" if method == "POST" else None
    answer = await send(proxy_url, method, target.decode("latin-1"), [bearer(acct.key)], body)
    assert 400 <= answer.status < 500, answer.body
    path = target.decode("latin-1").partition("?")[0]
    assert format_problem(answer, path) is None, format_problem(answer, path)


async def test_pricing_page_with_a_bad_key_shows_the_list_prices(proxy_url):
    for auth in ([bearer(b"\xff\xfe")], [bearer("k" * 8000)], [(b"x-api-key", b"\xe9")]):
        answer = await send(proxy_url, "GET", "/docs/pricing", auth)
        assert answer.status == 200, answer.body


async def test_duplicate_authorization_uses_the_first(proxy_url, accounts, upstream):
    acct = await accounts.create("1")
    path = "/v1/openai/chat/completions"
    body = json.dumps(CHAT_BODY).encode()
    good_first = await send(
        proxy_url, "POST", path, [bearer(acct.key), bearer(b"\xff junk"), JSON_TYPE], body
    )
    assert good_first.status == 200
    bad_first = await send(
        proxy_url, "POST", path, [bearer(b"\xff junk"), bearer(acct.key), JSON_TYPE], body
    )
    assert bad_first.status == 401
    assert format_problem(bad_first, path) is None
    for request in upstream.recorded():
        assert acct.key not in str(request)


@pytest.mark.parametrize(
    "limit",
    ["abc", "1e29", "-1", "0", "1001", "", " 5", "5 ", "+5", "1_0", "٣", "%ff", "9" * 5000, "1.0"],
)
async def test_bad_usage_limit_is_400_in_openai_format(proxy_url, accounts, limit):
    acct = await accounts.create("1")
    target = f"/v1/account/usage?limit={quote(limit, safe='%')}"
    answer = await send(proxy_url, "GET", target, [bearer(acct.key)])
    assert answer.status == 400, answer.body
    assert format_problem(answer, "/v1/account/usage") is None
    assert "limit" in json.loads(answer.body)["error"]["message"]


async def test_good_usage_limits_are_served(proxy_url, accounts):
    acct = await accounts.create("1")
    for limit in ("1", "50", "1000", "0007"):
        answer = await send(
            proxy_url, "GET", f"/v1/account/usage?limit={limit}", [bearer(acct.key)]
        )
        assert answer.status == 200, answer.body
        assert json.loads(answer.body) == {"data": []}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/openai/chat/completions", CHAT_BODY), ("/v1/anthropic/v1/messages", MESSAGES_BODY)],
    ids=["openai", "anthropic"],
)
@pytest.mark.parametrize("encoding", [b"gzip", b"br", b"zstd", b"x-junk", b"\xff"])
async def test_content_encoding_is_415_and_nothing_goes_upstream(
    proxy_url, accounts, upstream, redis, pg, path, body, encoding
):
    acct = await accounts.create("1")
    before = len(upstream.recorded())
    answer = await send(
        proxy_url,
        "POST",
        path,
        [bearer(acct.key), JSON_TYPE, (b"Content-Encoding", encoding)],
        json.dumps(body).encode(),
    )
    assert answer.status == 415, answer.body
    assert format_problem(answer, path) is None
    assert len(upstream.recorded()) == before
    await wait_holds_released(redis, acct.user_id)
    assert await accounts.balance(acct.user_id) == Decimal("1")


async def test_non_utf8_forwarded_headers_are_not_a_500(proxy_url, accounts, upstream):
    acct = await accounts.create("1")
    for path, body, header in [
        ("/v1/anthropic/v1/messages", MESSAGES_BODY, b"anthropic-beta"),
        ("/v1/anthropic/messages", MESSAGES_BODY, b"anthropic-version"),
        ("/v1/openai/chat/completions", CHAT_BODY, b"OpenAI-Beta"),
        ("/v1/openai/responses", RESPONSES_BODY, b"x-stainless-lang"),
    ]:
        answer = await send(
            proxy_url,
            "POST",
            path,
            [bearer(acct.key), JSON_TYPE, (header, b"\xff\xfe-\xc3\x28")],
            json.dumps(body).encode(),
        )
        assert problem(answer, path) is None, (path, problem(answer, path))


# --- the fuzz -------------------------------------------------------------------------------

INT64 = 2**63
# fmt: off
SPECIAL_NUMBERS = [
    0, -1, 1, -(2**31), 2**31, INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64, 10**30, -(10**30),
    1.5, -0.5, 1e308, -1e308, 1e-300, 0.0, -0.0, 1e19, 2.0**63,
]
# fmt: on
# fmt: off
SPECIAL_STRINGS = [
    "", "x", "1", "-1", "1e29", "NaN", "Infinity", "null", "true", "\x00", "\u202e", "gpt-4o",
    "claude-haiku-4-5", "auto", "high", "priority", "flex", "web_search", "include_usage",
]
# fmt: on

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(SPECIAL_STRINGS),
    st.text(max_size=12),
)
hostile = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["type", "text", "role", "content", "include_usage"]),
                st.text(max_size=6),
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=8,
)

# fmt: off
CHAT_FIELDS = [
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n",
    "best_of", "tools", "tool_choice", "temperature", "service_tier", "web_search_options",
    "modalities", "audio", "logprobs", "top_logprobs", "response_format", "user", "metadata",
    "prediction", "reasoning_effort", "seed",
]
# fmt: on
# fmt: off
RESPONSES_FIELDS = [
    "model", "input", "stream", "stream_options", "max_output_tokens", "max_tokens", "n",
    "tools", "tool_choice", "previous_response_id", "conversation", "background", "reasoning",
    "service_tier", "include", "instructions", "max_tool_calls", "text", "store", "truncation",
]
# fmt: on
# fmt: off
MESSAGES_FIELDS = [
    "model", "messages", "max_tokens", "stream", "system", "tools", "tool_choice", "thinking",
    "metadata", "stop_sequences", "service_tier", "temperature", "top_k", "mcp_servers",
    "container", "n", "best_of",
]
# fmt: on
CAPS = [
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "best_of",
    "stream_options",
    "max_tool_calls",
    "top_logprobs",
    "thinking",
]  # fmt: skip
ENDPOINTS = {
    "/v1/openai/chat/completions": (CHAT_BODY, CHAT_FIELDS),
    "/v1/openai/responses": (RESPONSES_BODY, RESPONSES_FIELDS),
    "/v1/anthropic/messages": (MESSAGES_BODY, MESSAGES_FIELDS),
    "/v1/anthropic/v1/messages": (MESSAGES_BODY, MESSAGES_FIELDS),
}
# fmt: off
RAW_BODIES = [
    b"", b"null", b"true", b"1", b"-1e999", b'"a string"', b"[]", b"[{}]", b"{", b"{}",
    b'{"model": NaN}', b'{"model": "gpt-4o-mini", "max_tokens": Infinity}',
    b'{"model": "\\ud800"}', b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"model": "gpt-4o-mini"} x',
    b'{"model": "gpt-4o-mini", "model": 5}', b"[" * 5000 + b"]" * 5000,
    b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"a": ' * 600 + b"1" + b"}" * 600,
    b'{"model": "gpt-4o-mini", "max_tokens": 18446744073709551616}',
    b'{"model": "gpt-4o-mini", "max_tokens": 9223372036854775808}',
    b'{"model": "claude-haiku-4-5", "max_tokens": 1e400}',
    b'{"model": "gpt-4o-mini", "max_tokens": 100000000000000000000000000000}',
]
# fmt: on


@dataclass
class Case:
    method: str
    path: str  # with the query, if any
    headers: list[tuple[bytes, bytes]]
    body: bytes | None = None
    chunked: bool = False
    note: str = ""


@st.composite
def metered_cases(draw) -> Case:
    path = draw(st.sampled_from(sorted(ENDPOINTS)))
    base, fields = ENDPOINTS[path]
    kinds = ["fields", "fields", "fields", "caps", "caps", "messages", "raw", "huge"]
    kind = draw(st.sampled_from(kinds))
    if kind == "raw":
        body = draw(st.sampled_from(RAW_BODIES))
        if path in ANTHROPIC_PATHS:
            body = body.replace(b"gpt-4o-mini", b"claude-haiku-4-5")
        return Case("POST", path, [], body, note="raw body")
    doc = copy.deepcopy(base)
    stream = draw(st.sampled_from([None, True, True, False]))  # a stream takes other paths
    if stream is not None:
        doc["stream"] = stream
    if kind == "fields":
        for name in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
            if draw(st.integers(0, 9)) == 0:
                doc.pop(name, None)
            else:
                doc[name] = draw(hostile)
    elif kind == "caps":  # the numbers that size a hold, and the stream's options
        for name in draw(st.lists(st.sampled_from(CAPS), min_size=1, max_size=2, unique=True)):
            doc[name] = draw(st.one_of(st.sampled_from(SPECIAL_NUMBERS), scalars, hostile))
    elif kind == "messages":
        key = "input" if path.endswith("responses") else "messages"
        doc[key] = draw(
            st.one_of(
                hostile,
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "role": st.one_of(st.sampled_from(["user", "system", "tool"]), hostile),
                            "content": hostile,
                        }
                    ),
                    max_size=3,
                ),
            )
        )
    else:  # huge strings, where a hold counts bytes
        size = draw(st.sampled_from([100_000, 900_000]))
        key = "input" if path.endswith("responses") else "messages"
        doc[key] = "y" * size if key == "input" else [{"role": "user", "content": "y" * size}]
    return Case("POST", path, [], json.dumps(doc).encode(), note=kind)


HOSTILE_HEADERS: list[list[tuple[bytes, bytes]]] = [
    [(b"Content-Type", b"text/plain")],
    [(b"Content-Type", b"application/json; charset=latin-1")],
    [(b"Content-Type", b"\xff\xfe")],
    [(b"Content-Type", b"multipart/form-data; boundary=x")],
    [(b"Content-Encoding", b"gzip")],
    [(b"Content-Encoding", b"identity")],
    [(b"Content-Encoding", b"\xff")],
    [(b"anthropic-version", b"\xff\xff")],
    [(b"anthropic-beta", b"x" * 8000)],
    [(b"OpenAI-Beta", b"\xc3\x28")],
    [(b"x-stainless-retry-count", b"-1e999")],
    [(b"Accept", b"\xff")],
    [(b"Expect", b"100-continue")],
    [(b"Connection", b"keep-alive, x-api-key")],
    [(b"X-Forwarded-For", b"\xff" * 100)],
]


@st.composite
def header_cases(draw, key: str) -> Case:
    path = draw(st.sampled_from(sorted(ENDPOINTS)))
    base, _ = ENDPOINTS[path]
    body = json.dumps(base).encode()
    auth = draw(
        st.sampled_from(
            [
                [bearer(key)],
                [bearer(key), bearer(b"\xff")],
                [bearer(b"\xff"), bearer(key)],
                [bearer(key + "\xff".encode("latin-1").decode("latin-1"))],
                [bearer(key.encode() + b"\xff")],
                [bearer(b"a" * 8000)],
                [(b"Authorization", b"Bearer")],
                [(b"Authorization", b"Basic " + key.encode())],
                [(b"x-api-key", key.encode())],
                [(b"x-api-key", b"\xff" + key.encode())],
                [],
            ]
        )
    )
    extra = draw(st.lists(st.sampled_from(HOSTILE_HEADERS), max_size=2))
    headers = [*auth, *(h for group in extra for h in group)]
    chunked = draw(st.booleans())
    return Case("POST", path, headers, body, chunked=chunked, note="headers")


@st.composite
def query_cases(draw) -> Case:
    path = draw(
        st.sampled_from(
            [
                "/v1/account",
                "/v1/account/usage",
                "/v1/openai/models",
                "/v1/anthropic/models",
                "/v1/anthropic/v1/models",
            ]
        )
    )
    name = draw(st.sampled_from(["limit", "limit", "after", "before_id", "x"]))
    value = draw(
        st.one_of(
            st.sampled_from(["abc", "1e29", "-5", "0", "1001", "10", "", "%ff", "%00", "9" * 5000]),
            st.text(max_size=10).map(quote),
            st.integers().map(str),
        )
    )
    if draw(st.integers(0, 9)) == 0:  # raw bytes, not percent-encoded
        value = draw(st.binary(min_size=1, max_size=6)).decode("latin-1")
        value = "".join(c for c in value if c not in " \r\n#")
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "DELETE"]))
    return Case(method, f"{path}?{name}={value}", [], None, note="query")


def draw_all(strategy, count: int) -> list:
    """`count` examples of `strategy`, the same on every run."""
    drawn: list = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example) -> None:
        drawn.append(example)

    collect()
    return drawn


@dataclass
class Tally:
    failures: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # request ids of 4xx/5xx answers
    served: list[str] = field(default_factory=list)  # request ids of 2xx answers


async def run_case(proxy_url: str, case: Case, key_headers, tally: Tally) -> None:
    headers = [*key_headers, *case.headers]
    if case.body is not None and not any(n.lower() == b"content-type" for n, _ in headers):
        headers.append(JSON_TYPE)
    try:
        answer = await send(
            proxy_url, case.method, case.path, headers, case.body, chunked=case.chunked
        )
    except Exception as exc:  # no answer at all is a failure too
        tally.failures.append(f"{case.method} {case.path} [{case.note}] -> no answer: {exc!r}")
        return
    path = case.path.partition("?")[0]
    why = problem(answer, path)
    if why is not None:
        body = case.body if case.body is None or len(case.body) < 600 else case.body[:600] + b"..."
        tally.failures.append(
            f"{case.method} {case.path} [{case.note}] headers={case.headers!r:.300} "
            f"body={body!r} -> {why}"
        )
    request_id = answer.header("x-request-id")
    if request_id is None or not path.startswith("/v1/") or case.method != "POST":
        return
    if answer.status >= 400:
        tally.refused.append(request_id)
    elif answer.status < 300 and path in ENDPOINTS:
        tally.served.append(request_id)


async def test_fuzz_hostile_input_never_500_never_billed(proxy_url, accounts, pg, redis, upstream):
    credit = Decimal("1000")
    acct = await accounts.create(str(credit))
    key_headers = [bearer(acct.key)]
    cases = draw_all(metered_cases(), 1200) + draw_all(query_cases(), 150)
    header_only = draw_all(header_cases(acct.key), 200)
    tally = Tally()
    sem = asyncio.Semaphore(8)

    async def one(case: Case, keyed: bool) -> None:
        async with sem:
            await run_case(proxy_url, case, key_headers if keyed else [], tally)

    await asyncio.gather(*(one(c, True) for c in cases), *(one(c, False) for c in header_only))

    # nothing held, nothing billed for a refusal, the served ones billed exactly
    await wait_holds_released(redis, acct.user_id, timeout=30)
    if tally.served:
        await wait_settled(pg, tally.served, timeout=30)
    billed_refusals = await pg.fetch(
        "SELECT request_id, status, cost_usd FROM usage_records WHERE request_id = ANY($1::text[])",
        tally.refused,
    )
    for row in billed_refusals:
        tally.failures.append(f"refused request billed: {dict(row)}")
    spent = await pg.fetchval(
        "SELECT coalesce(sum(cost_usd), 0) FROM usage_records WHERE user_id = $1", acct.user_id
    )
    balance = await accounts.balance(acct.user_id)
    if balance != credit - spent:
        tally.failures.append(f"balance {balance} != credit {credit} - billed {spent}")
    upstream.clear()  # a thousand requests reached it: leave room for the next tests
    assert len(tally.served) > 20, "the fuzz should also reach upstream"
    assert not tally.failures, f"{len(tally.failures)} failures:\n" + "\n".join(tally.failures)
