"""Forward one request upstream and stream the answer back, never buffered.

Picks a provider key from the pool, retries once on another key where the
contract says so (a 401/403 that the key's probe confirms disables the key; a
rate-limit 429 cools it; a 5xx or a connection failure before the first byte
changes nothing), then passes the answer through unchanged: same status, same
JSON body, same SSE bytes flushed as they arrive. What an error says about the
key is `proxy.key_health`'s business, per provider kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from proxy import tracing
from proxy.errors import ProxyError
from proxy.forwarded_headers import upstream_header_block
from proxy.key_health import Probe, Verdict, classify, rules_for
from proxy.keypool import NoActiveKey, UpstreamKey
from proxy.metrics import FIRST_BYTE
from proxy.providers import PreparedBody
from proxy.providers.sse import StreamScanner
from proxy.readiness import READINESS
from proxy.routes import Call, target
from proxy.state import Gateway
from proxy.upstream import (
    ConnectTimeout,
    Target,
    UpstreamError,
    UpstreamResponse,
)
from shared import invalidation, redis_keys
from shared.db import alerts as db_alerts
from shared.db import providers as db_providers
from shared.events import TokenUsage

log = structlog.get_logger("meterway.relay")

_COOLDOWN_DEFAULT_SECONDS = 5.0
# bytes queued for a client beyond which a write may wait on it (aiohttp waits above 64 KiB)
_BEHIND_BYTES = 16 * 1024
_MAX_KEYS_PER_REQUEST = 2
_KEY_STATUSES = frozenset({401, 403, 429})  # the only answers that may speak about the key


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
    response_id: str | None = None  # how a later request may refer to this answer


@dataclass(slots=True)
class _Step:
    """After an upstream error: `body` to pass through, or else a retry."""

    body: bytes | None = None
    moved: bool = False  # this answer cooled or disabled the key


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


def _answer_headers(
    response: UpstreamResponse, request_id: str, upstream_id: str | None = None
) -> dict[str, str]:
    headers = {"x-request-id": request_id}
    upstream_id = _upstream_id(response) or upstream_id
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
        call: Call,
        prepared: PreparedBody,
        request_id: str,
    ) -> None:
        self.gw = gw
        self.request = request
        self.spec = call.provider
        self.adapter = call.adapter
        self.rules = rules_for(call.provider.kind)
        self.prepared = prepared
        self.request_id = request_id
        self.target = call.target

    async def run(self) -> RelayResult:
        response, key, body = await self._send_with_failover()
        if body is not None:  # an upstream error, passed through unbilled
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

    async def _send_with_failover(self) -> tuple[UpstreamResponse, UpstreamKey, bytes | None]:
        """The answer to send on: a success (body unread), or an error to pass
        through with its body read (the response released).

        At most 2 keys are tried: the second only after a retryable failure of
        the first (a key-level 401/403 its probe confirmed, a rate-limit 429, a
        5xx, a connection failure before the first byte). At most one key of
        the request changes state (cooling or disabled)."""
        provider = self.spec.name
        key = self._choose(provider, frozenset())
        tried = {key.id}
        moved = False  # one request moves at most one key to cooling or disabled
        while True:
            try:
                response = await self._post(key)
            except ConnectTimeout as exc:
                following = self._following(provider, tried)
                if following is None:
                    raise ProxyError(504, "Upstream timed out") from exc
                reason = "connect_timeout"
            except TimeoutError as exc:
                raise ProxyError(504, "Upstream timed out") from exc
            except UpstreamError as exc:
                following = self._following(provider, tried)
                if following is None:
                    raise ProxyError(502, "Upstream unreachable") from exc
                reason = "connect"
            else:
                if response.status < 400:
                    return response, key, None
                following = self._following(provider, tried)
                step = await self._after_error(response, key, moved, following is not None)
                if step.body is not None:
                    return response, key, step.body
                moved = moved or step.moved
                if following is None:  # the key was disabled and no other may take over
                    self._choose(provider, frozenset(tried))  # 503, or 429 when all cool
                    raise ProxyError(502, "Upstream refused the provider key")
                reason = str(response.status)
            self._count_retry(provider, key, reason)
            key = following
            tried.add(key.id)

    @tracing.upstream
    async def _post(self, key: UpstreamKey) -> UpstreamResponse:
        """One upstream attempt, timed to its answer's headers or its failure."""
        started = perf_counter()
        try:
            return await self.gw.upstream.post(
                self.target, upstream_header_block(self.request, key, self.spec), self.prepared.body
            )
        finally:
            self.gw.metrics.upstream_attempt(
                self.spec.name, self.adapter.endpoint, perf_counter() - started
            )

    def _following(self, provider: str, tried: set[int]) -> UpstreamKey | None:
        """The key a retry would go to; None when this request may not try another."""
        if len(tried) >= _MAX_KEYS_PER_REQUEST:
            return None
        try:
            return self.gw.pool.choose(provider, frozenset(tried))
        except NoActiveKey:
            return None

    async def _after_error(
        self, response: UpstreamResponse, key: UpstreamKey, moved: bool, can_retry: bool
    ) -> _Step:
        """What an upstream error answer means for the key, and whether to retry."""
        status = response.status
        if status >= 500:
            if not can_retry:
                return _Step(body=await read_whole(response))
            response.release()  # unread: the connection closes
            return _Step()
        body = await read_whole(response)
        rules = self.rules
        if moved or (status not in _KEY_STATUSES and not (status == 400 and rules.key_400)):
            return _Step(body=body)
        verdict = classify(rules, status, body)
        if verdict is Verdict.RATE_LIMITED:
            await self._cool_down(key, _retry_after(response))
            return _Step(moved=True) if can_retry else _Step(body=body, moved=True)
        if verdict is Verdict.SUSPECT:
            probe = await self.gw.pool.health.probe(
                self.gw.upstream,
                self._probe_target(),
                rules,
                key.id,
                key.secret,
                auth=key.auth,
                headers=self.spec.headers,
            )
            log.warning(
                "provider_key_probed",
                provider=key.provider,
                key_prefix=key.prefix,
                status=status,
                probe=probe.value,
            )
            if probe is Probe.REJECTED:
                return _Step(moved=await self._disable(key, status))
        elif verdict is Verdict.QUOTA:
            self.gw.metrics.inc("meterway_upstream_quota_exhausted_total", provider=key.provider)
            log.warning(
                "provider_key_quota_exhausted", provider=key.provider, key_prefix=key.prefix
            )
        return _Step(body=body)

    def _probe_target(self) -> Target:
        return target(self.spec.base_url, self.rules.probe_path)

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

    async def _disable(self, key: UpstreamKey, status: int) -> bool:
        """Disable a key its probe confirmed bad; False when another request did."""
        if not self.gw.pool.drop(key.id):
            return False
        self.gw.metrics.inc("meterway_provider_keys_disabled_total", provider=key.provider)
        log.error(
            "provider_key_disabled", provider=key.provider, key_prefix=key.prefix, status=status
        )
        reason = f"upstream answered {status} and refused the key on its models list too"
        try:
            await self._record_disabled(key, reason)
        except Exception as exc:  # this proxy stops using it anyway; the next request retries
            log.error("provider_key_disable_not_recorded", key_prefix=key.prefix, error=str(exc))
        return True

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
            webhook=bool(self.gw.settings.alert_webhook_url),
        )

    async def _whole(self, response: UpstreamResponse, key: UpstreamKey) -> RelayResult:
        body = await read_whole(response)
        usage = response_id = upstream_id = None
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body)
            if isinstance(parsed, dict):
                usage = self.adapter.usage_from_body(parsed)
                response_id = self.adapter.response_id(parsed)
                id_in_body = getattr(self.adapter, "upstream_id", None)
                upstream_id = id_in_body(parsed) if id_in_body is not None else None
        headers = _answer_headers(response, self.request_id, upstream_id)
        answer = web.Response(
            status=response.status, body=body, content_type=response.content_type, headers=headers
        )
        return RelayResult(
            answer,
            billable=True,
            usage=usage,
            usage_final=usage is not None,
            output_estimate=len(body) // 4,
            provider_key_id=key.id,
            upstream_request_id=headers.get("x-upstream-request-id"),
            response_id=response_id,
        )

    async def _stream(self, response: UpstreamResponse, key: UpstreamKey) -> RelayResult:
        scanner = self.adapter.scanner(self.prepared)
        answer = web.StreamResponse(
            status=response.status, headers=_answer_headers(response, self.request_id)
        )
        answer.content_type = response.content_type or "text/event-stream"
        answer.headers["Cache-Control"] = "no-cache"
        outcome = "completed"
        first = True
        try:
            if self.request.app[READINESS].draining:  # its headers say so (proxy.middleware)
                answer.force_close()
            await answer.prepare(self.request)
            transport = self.request.transport
            async for chunk in response.iter_chunks():
                out = scanner.feed(chunk)
                if out:
                    if first:  # time to first byte: the first body bytes, not the headers
                        self.request[FIRST_BYTE] = perf_counter()
                        first = False
                    if transport and transport.get_write_buffer_size() + len(out) < _BEHIND_BYTES:
                        await answer.write(out)  # the client keeps up: no timer needed
                    else:
                        await self._send(answer, out)
            rest = scanner.finish()
            if rest:
                await self._send(answer, rest)
            if not scanner.complete and not scanner.error_event:
                outcome = "upstream_truncated"
        except (ConnectionError, asyncio.CancelledError):  # reset, broken pipe, lost
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
            with contextlib.suppress(ConnectionError):
                await answer.write_eof()
        return RelayResult(
            answer,
            billable=True,
            usage=scanner.usage,
            usage_final=scanner.complete or scanner.usage_arrives_last,
            output_estimate=scanner.deltas,
            provider_key_id=key.id,
            upstream_request_id=_upstream_id(response) or getattr(scanner, "upstream_id", None),
            outcome=outcome,
            response_id=scanner.response_id,
        )

    async def _send(self, answer: web.StreamResponse, data: bytes) -> None:
        """Write to the client; one that stops reading for CLIENT_WRITE_TIMEOUT_SECONDS
        is treated as gone (its stream billed as a disconnect, its hold released),
        so a stalled reader cannot keep a hold and an upstream stream forever. The
        timer runs only for a write that may have to wait (the client behind, or a
        large block), not for the small chunks of an ordinary stream."""
        transport = self.request.transport
        if transport is None or transport.get_write_buffer_size() + len(data) < _BEHIND_BYTES:
            await answer.write(data)
            return
        try:
            async with asyncio.timeout(self.gw.settings.client_write_timeout_seconds):
                await answer.write(data)
        except TimeoutError as exc:
            log.warning("client_stopped_reading", queued=transport.get_write_buffer_size())
            transport.abort()
            raise ConnectionResetError("client stopped reading") from exc

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
        event = self.adapter.stream_error_event("Upstream stream ended unexpectedly")
        with contextlib.suppress(ConnectionError):
            await answer.write(scanner.finish() + event)
