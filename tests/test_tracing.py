"""OpenTelemetry traces (contract section 9): real proxy and worker processes
export OTLP/HTTP to a local collector sink, which decodes the protobuf
requests with opentelemetry-proto; off, nothing of opentelemetry is loaded."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
import time
import zlib

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from shared.config import REPO_ROOT
from tests.clients import anthropic_client, openai_client
from tests.conftest import PROVIDER_SECRETS, wait_settled
from tests.util import free_port

HELLO = [{"role": "user", "content": "Hi"}]
pytestmark = pytest.mark.usefixtures("provider_keys")


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Sink:
    """A minimal OTLP/HTTP traces receiver: every span, with its service name."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.posts = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(body)
        self.posts += 1
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(
                        {
                            "service": resource.get("service.name"),
                            "resource": resource,
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in s.attributes},
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                        }
                    )
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    def requests(self, request_id: str) -> list[dict]:
        return [
            s
            for s in self.spans
            if s["name"] == "request" and s["attributes"].get("meterway.request_id") == request_id
        ]

    def children(self, parent: dict) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for s in self.spans:
            if s["parent"] == parent["span_id"] and s["trace_id"] == parent["trace_id"]:
                found.setdefault(s["name"], []).append(s)
        return found

    async def wait_for(self, check, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                names = sorted({s["name"] for s in self.spans})
                raise AssertionError(f"spans not received; got {len(self.spans)}: {names}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def sink():
    s = Sink()
    await s.start()
    yield s
    await s.runner.cleanup()


def otel_env(sink: Sink) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}


async def test_a_metered_request_is_one_trace_with_its_steps(stack, books, pg, sink):
    await stack.worker(**otel_env(sink))
    _, url = await stack.proxy(**otel_env(sink))
    acct = await books.create("5")
    openai = openai_client(url, acct.key)
    raw = await openai.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, max_tokens=20
    )
    whole_id = raw.headers["x-request-id"]
    upstream_id = raw.headers["x-upstream-request-id"]
    raw = await anthropic_client(url, acct.key).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=20, messages=HELLO, stream=True
    )
    async for _event in await raw.parse():
        pass
    stream_id = raw.headers["x-request-id"]
    async with aiohttp.ClientSession() as http:  # a refused key: a request span, status 401
        async with http.post(
            f"{url}/v1/openai/chat/completions",
            headers={"Authorization": "Bearer mw-not-a-key"},
            json={"model": "gpt-4o", "messages": HELLO},
        ) as resp:
            assert resp.status == 401
            refused_id = resp.headers["x-request-id"]
    await wait_settled(pg, [whole_id, stream_id], timeout=20)
    steps = {"auth", "hold", "upstream", "enqueue"}

    def complete() -> bool:
        done = [sink.requests(i) for i in (whole_id, stream_id, refused_id)]
        return all(done) and all(steps <= set(sink.children(r[0])) for r in done[:2])

    await sink.wait_for(complete)
    await sink.wait_for(lambda: any(s["name"] == "settle_batch" for s in sink.spans))

    (whole,) = sink.requests(whole_id)
    assert whole["service"] == "meterway-proxy"
    assert whole["parent"] == ""  # a root span: its trace is this request's
    attributes = whole["attributes"]
    assert attributes["meterway.provider"] == "openai"
    assert attributes["meterway.endpoint"] == "chat/completions"
    assert attributes["meterway.model"] == "gpt-4o"
    assert attributes["http.response.status_code"] == 200
    assert attributes["meterway.upstream_request_id"] == upstream_id
    children = sink.children(whole)
    assert set(children) == steps
    assert [len(v) for v in children.values()] == [1, 1, 1, 1]  # one upstream attempt
    (up,) = children["upstream"]
    assert up["attributes"]["meterway.upstream_request_id"] == upstream_id
    assert up["attributes"]["http.response.status_code"] == 200
    assert isinstance(up["attributes"]["meterway.provider_key_id"], int)
    for child in (c for spans in children.values() for c in spans):
        assert whole["start"] <= child["start"] <= child["end"] <= whole["end"]
    # the steps in their order: admission, hold, upstream, enqueue
    order = sorted(steps, key=lambda name: children[name][0]["start"])
    assert order == ["auth", "hold", "upstream", "enqueue"]

    (stream,) = sink.requests(stream_id)
    assert stream["attributes"]["meterway.provider"] == "anthropic"
    assert stream["attributes"]["meterway.endpoint"] == "messages"
    assert stream["attributes"]["meterway.model"] == "claude-haiku-4-5"
    assert stream["trace_id"] != whole["trace_id"]
    assert set(sink.children(stream)) == steps

    (refused,) = sink.requests(refused_id)
    assert refused["attributes"]["http.response.status_code"] == 401
    assert set(sink.children(refused)) == {"auth"}  # refused at admission

    batches = [s for s in sink.spans if s["name"] == "settle_batch"]
    assert {s["service"] for s in batches} == {"meterway-worker"}
    assert sum(s["attributes"]["meterway.charged"] for s in batches) == 2
    assert all(s["attributes"]["meterway.events"] >= 1 for s in batches)

    # no secret anywhere: the proxy key, the provider keys
    secrets = [acct.key, "mw-not-a-key", *PROVIDER_SECRETS.values()]
    for s in sink.spans:
        for value in [*s["attributes"].values(), *s["resource"].values()]:
            assert not any(secret in str(value) for secret in secrets), s


def test_off_nothing_of_opentelemetry_is_loaded():
    """Unset, the hooks are the functions themselves and no opentelemetry module
    is imported by the proxy or the worker."""
    code = (
        "import sys\n"
        "import proxy.app, proxy.handlers, proxy.relay, worker.main, worker.settle\n"
        "from proxy import tracing\n"
        "assert not tracing.ENABLED\n"
        "assert not hasattr(worker.settle.settle_batch, '__wrapped__')\n"
        "assert not hasattr(proxy.relay.Relay._post, '__wrapped__')\n"
        "assert tracing.span('hold') is tracing.span('upstream')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {
        k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
