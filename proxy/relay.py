"""Forward one request upstream and stream the answer back, never buffered.

Picks a provider key from the pool, retries on another key where the contract
says so (401/403 disables the key; 429, 5xx or a connection failure before the
first byte is retried once), then passes the answer through unchanged: same
status, same JSON body, same SSE bytes flushed as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from proxy.errors import ProxyError
from proxy.keypool import NoActiveKey, UpstreamKey
from proxy.providers import Adapter, PreparedBody
from proxy.providers.sse import StreamScanner
from proxy.state import Gateway
from proxy.upstream import (
    ConnectTimeout,
    UpstreamError,
    UpstreamResponse,
    parse_target,
)
from shared import invalidation, redis_keys
from shared.db import alerts as db_alerts
from shared.db import providers as db_providers
from shared.events import TokenUsage

log = structlog.get_logger("meterway.relay")

# Client headers never sent upstream (auth, hop-by-hop, recomputed ones).
_DROP_REQUEST_HEADERS = frozenset(
    {
        "host",
        "authorization",
        "x-api-key",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "cookie",
        "expect",  # the body is sent whole at once; a 100 Continue would be noise
        "accept-encoding",
        "content-type",
        # these scope a request to an OpenAI account: the provider key's, not the client's
        "openai-organization",
        "openai-project",
    }
)
_COOLDOWN_DEFAULT_SECONDS = 5.0


@dataclass(slots=True)
class RelayResult:
    """How the upstream exchange ended, for billing."""

    response: web.StreamResponse
    billable: bool
    usage: TokenUsage | None = None
    usage_final: bool = False
    output_estimate: int = 0
    provider_key_id: int | None = None
    upstream_request_id: str | None = None
    outcome: str = "completed"


def upstream_headers(request: web.Request, key: UpstreamKey) -> list[tuple[str, str]]:
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if name.lower() not in _DROP_REQUEST_HEADERS
    ]
    headers.append(("Content-Type", "application/json"))
    if key.provider == "anthropic":
        headers.append(("x-api-key", key.secret))
    else:
        headers.append(("Authorization", f"Bearer {key.secret}"))
    return headers


def _retry_after(response: UpstreamResponse) -> float:
    """Seconds to rest a rate-limited key: the provider's Retry-After, kept sane."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return _COOLDOWN_DEFAULT_SECONDS
    if not math.isfinite(seconds):
        return _COOLDOWN_DEFAULT_SECONDS
    return min(max(seconds, 0.5), 3600.0)


def _upstream_id(response: UpstreamResponse) -> str | None:
    return response.headers.get("x-request-id") or response.headers.get("request-id")


def _answer_headers(response: UpstreamResponse, request_id: str) -> dict[str, str]:
    headers = {"x-request-id": request_id}
    upstream_id = _upstream_id(response)
    if upstream_id:
        headers["x-upstream-request-id"] = upstream_id
    if "retry-after" in response.headers:
        headers["retry-after"] = response.headers["retry-after"]
    return headers


async def read_whole(response: UpstreamResponse) -> bytes:
    """The whole body of an answer, which is released whatever happens."""
    try:
        return await response.read()
    except TimeoutError as exc:
        raise ProxyError(504, "Upstream timed out") from exc
    except UpstreamError as exc:
        raise ProxyError(502, "Upstream connection broke") from exc
    finally:
        response.release()


class Relay:
    def __init__(
        self,
        gw: Gateway,
        request: web.Request,
        adapter: Adapter,
        prepared: PreparedBody,
        request_id: str,
    ) -> None:
        self.gw = gw
        self.request = request
        self.adapter = adapter
        self.prepared = prepared
        self.request_id = request_id
        self.target = parse_target(
            f"{gw.settings.upstream_base_url(adapter.provider)}/{adapter.endpoint}"
        )

    async def run(self) -> RelayResult:
        response, key = await self._send_with_failover()
        if response.status >= 400:
            body = await read_whole(response)
            answer = web.Response(
                status=response.status,
                body=body,
                content_type=response.content_type,
                headers=_answer_headers(response, self.request_id),
            )
            return RelayResult(answer, billable=False, provider_key_id=key.id)
        if self.prepared.stream:
            return await self._stream(response, key)
        return await self._whole(response, key)

    async def _send_with_failover(self) -> tuple[UpstreamResponse, UpstreamKey]:
        provider = self.adapter.provider
        tried: set[int] = set()
        retried = False
        while True:
            key = self._choose(provider, frozenset(tried))
            tried.add(key.id)
            try:
                response = await self.gw.upstream.post(
                    self.target, upstream_headers(self.request, key), self.prepared.body
                )
            except ConnectTimeout as exc:
                if not retried and self._another_key(provider, tried):
                    retried = True
                    self._count_retry(provider, key, "connect_timeout")
                    continue
                raise ProxyError(504, "Upstream timed out") from exc
            except TimeoutError as exc:
                raise ProxyError(504, "Upstream timed out") from exc
            except UpstreamError as exc:
                if not retried and self._another_key(provider, tried):
                    retried = True
                    self._count_retry(provider, key, "connect")
                    continue
                raise ProxyError(502, "Upstream unreachable") from exc
            if response.status in (401, 403):
                response.release()
                await self._disable(key, response.status)
                continue
            try:
                if response.status == 429:
                    await self._cool_down(key, _retry_after(response))
            except BaseException:
                response.release()
                raise
            if response.status == 429 or response.status >= 500:
                if not retried and self._another_key(provider, tried):
                    response.release()
                    retried = True
                    self._count_retry(provider, key, str(response.status))
                    continue
            return response, key

    def _choose(self, provider: str, exclude: frozenset[int]) -> UpstreamKey:
        try:
            return self.gw.pool.choose(provider, exclude)
        except NoActiveKey as exc:
            if exc.cooling_for is not None:
                raise ProxyError(
                    429,
                    f"Every {provider} key is cooling down after upstream rate limits",
                    retry_after=max(1, round(exc.cooling_for)),
                ) from exc
            raise ProxyError(503, "No active API keys", code="no_active_keys") from exc

    def _another_key(self, provider: str, tried: set[int]) -> bool:
        try:
            self.gw.pool.choose(provider, frozenset(tried))
        except NoActiveKey:
            return False
        return True

    def _count_retry(self, provider: str, key: UpstreamKey, reason: str) -> None:
        self.gw.metrics.inc("meterway_upstream_retries_total", provider=provider, reason=reason)
        log.warning("upstream_retry", provider=provider, key_prefix=key.prefix, reason=reason)

    async def _cool_down(self, key: UpstreamKey, seconds: float) -> None:
        """Rest a rate-limited key here at once, and on every other proxy."""
        self.gw.pool.cool_down(key.id, seconds)
        try:
            await self.gw.redis.set(redis_keys.cooling(key.id), 1, px=int(seconds * 1000))
            await invalidation.publish(self.gw.redis, invalidation.cooling_message(key.id, seconds))
        except RedisError as exc:
            log.warning("cooling_not_shared", error=str(exc))

    async def _disable(self, key: UpstreamKey, status: int) -> None:
        self.gw.pool.drop(key.id)
        self.gw.metrics.inc("meterway_provider_keys_disabled_total", provider=key.provider)
        log.error(
            "provider_key_disabled", provider=key.provider, key_prefix=key.prefix, status=status
        )
        reason = f"upstream answered {status}"
        try:
            await self._record_disabled(key, reason)
        except Exception as exc:  # this proxy stops using it anyway; the next request retries
            log.error("provider_key_disable_not_recorded", key_prefix=key.prefix, error=str(exc))

    async def _record_disabled(self, key: UpstreamKey, reason: str) -> None:
        await db_providers.set_key_status(self.gw.pg, key.id, "disabled", reason)
        await invalidation.publish(self.gw.redis, invalidation.PROVIDERS_MESSAGE)
        await db_alerts.record(
            self.gw.pg,
            "provider_key_disabled",
            f"provider_key:{key.id}",
            datetime.now(UTC).date(),
            f"The {key.provider} key {key.prefix}... (id {key.id}) was disabled: {reason}."
            f" Re-enable it with `meterway provider-key enable {key.id}` once it is fixed.",
            self.gw.settings.operator_emails,
        )

    async def _whole(self, response: UpstreamResponse, key: UpstreamKey) -> RelayResult:
        body = await read_whole(response)
        usage = None
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body)
            if isinstance(parsed, dict):
                usage = self.adapter.usage_from_body(parsed)
        answer = web.Response(
            status=response.status,
            body=body,
            content_type=response.content_type,
            headers=_answer_headers(response, self.request_id),
        )
        return RelayResult(
            answer,
            billable=True,
            usage=usage,
            usage_final=usage is not None,
            output_estimate=len(body) // 4,
            provider_key_id=key.id,
            upstream_request_id=_upstream_id(response),
        )

    async def _stream(self, response: UpstreamResponse, key: UpstreamKey) -> RelayResult:
        scanner = self.adapter.scanner(self.prepared)
        answer = web.StreamResponse(
            status=response.status, headers=_answer_headers(response, self.request_id)
        )
        answer.content_type = response.content_type or "text/event-stream"
        answer.headers["Cache-Control"] = "no-cache"
        outcome = "completed"
        try:
            await answer.prepare(self.request)
            async for chunk in response.iter_chunks():
                out = scanner.feed(chunk)
                if out:
                    await answer.write(out)
            rest = scanner.finish()
            if rest:
                await answer.write(rest)
            if not scanner.complete and not scanner.error_event:
                outcome = "upstream_truncated"
        except (ConnectionResetError, asyncio.CancelledError):
            outcome = "client_disconnected"
            await self._after_client_left(response, scanner)
        except (UpstreamError, TimeoutError):
            outcome = "upstream_broken"
            await self._end_broken_stream(answer, scanner)
        finally:
            response.release()
        if outcome == "completed" and scanner.error_event:
            outcome = "upstream_error_event"
        if outcome != "client_disconnected":
            with contextlib.suppress(ConnectionResetError):
                await answer.write_eof()
        return RelayResult(
            answer,
            billable=True,
            usage=scanner.usage,
            usage_final=scanner.complete or self.adapter.provider == "openai",
            output_estimate=scanner.deltas,
            provider_key_id=key.id,
            upstream_request_id=_upstream_id(response),
            outcome=outcome,
        )

    async def _after_client_left(self, response: UpstreamResponse, scanner: StreamScanner) -> None:
        """`abort`: close upstream at once so generation stops. `finish`: read on,
        without a client, until the final usage arrives (bounded in time)."""
        settings = self.gw.settings
        if settings.client_disconnect_policy == "finish":
            try:
                async with asyncio.timeout(settings.finish_timeout_seconds):
                    async for chunk in response.iter_chunks():
                        scanner.feed(chunk)
                    scanner.finish()
                return
            except (UpstreamError, TimeoutError):
                pass
        response.release()  # unfinished: closes the connection, so generation stops

    async def _end_broken_stream(self, answer: web.StreamResponse, scanner: StreamScanner) -> None:
        """Tell the client the stream ended badly, in the provider's own way."""
        message = "Upstream stream ended unexpectedly"
        if self.adapter.provider == "anthropic":
            payload = {"type": "error", "error": {"type": "api_error", "message": message}}
            event = b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
        elif self.adapter.endpoint == "responses":
            payload = {"type": "error", "code": "upstream_error", "message": message, "param": None}
            event = b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
        else:
            payload = {"error": {"message": message, "type": "server_error", "code": None}}
            event = b"data: " + orjson.dumps(payload) + b"\n\n"
        with contextlib.suppress(ConnectionResetError):
            await answer.write(scanner.finish() + event)
