"""When an upstream error is the provider's word about the key, and the probe
that confirms it (contract section 10).

Each provider kind is one `KeyRules` entry: how a key authenticates, how its
error bodies look, which of its errors mean "this key is rate limited" or
"this key may be revoked", and its free probe (the models list). The relay
asks `classify` only about 401, 403 and 429 answers, so successful requests
pay nothing here. Each kind (openai, anthropic, gemini) is one entry in `RULES`.

- 401, or a 403 that the rules call key- or account-level: `SUSPECT`. The
  key is disabled only when `KeyHealth.probe` (a GET of the models list with
  that key) is refused with 401/403 as well; a probe that succeeds (or cannot
  tell: 429, 5xx, unreachable) leaves the key active and the client gets the
  upstream's answer.
- 429 that the rules call a rate limit: `RATE_LIMITED` (the key cools down).
  A 429 caused by the request (too large) is passed through, the key untouched.
- 429 for an exhausted account quota (OpenAI `insufficient_quota`): `QUOTA`.
  Billing of the key's account, not a rate: the key neither cools nor is
  disabled; the answer is passed through and the relay logs and counts it,
  so the operator can act.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.upstream import Target, UpstreamClient, UpstreamError

PROBE_TIMEOUT_SECONDS = 10.0
# A key whose probe just succeeded is not probed again for this long: a client
# cannot make every one of its failing requests cost the provider a probe.
PROBE_OK_SECONDS = 10.0


class Verdict(enum.Enum):
    PASS = "pass"  # the request's own error: pass it through, the key untouched
    SUSPECT = "suspect"  # the key may be revoked: probe before disabling it
    RATE_LIMITED = "rate_limited"  # the key hit a rate limit: cool it, retry elsewhere
    QUOTA = "quota"  # the key's account is out of quota: pass through, tell the operator


class Probe(enum.Enum):
    OK = "ok"  # the provider accepts the key
    REJECTED = "rejected"  # refused with 401/403: the key is bad
    UNKNOWN = "unknown"  # 429, 5xx, unreachable: no word about the key


@dataclass(frozen=True, slots=True)
class ProviderError:
    """The parts of an error body that say what went wrong."""

    tokens: frozenset[str]  # error type, code, status names
    message: str


@dataclass(frozen=True, slots=True)
class KeyRules:
    auth: Callable[[str], tuple[str, str]]  # secret -> the header that carries it
    parse_error: Callable[[Any], ProviderError | None]  # None: not this provider's format
    rate_limit: frozenset[str] = frozenset()  # tokens of a rate-limit 429
    # messages of request-level 429s that carry a rate-limit token anyway
    request_level_429: tuple[str, ...] = ()
    quota: frozenset[str] = frozenset()  # tokens of an exhausted account quota
    # a 403 is a suspect when its tokens meet `key_403` (None: any 403 in the
    # provider's format) and miss `request_403`
    key_403: frozenset[str] | None = frozenset()
    request_403: frozenset[str] = frozenset()
    # a 400 whose tokens meet these is about the key (Google answers a bad key so)
    key_400: frozenset[str] = frozenset()
    probe_path: str = "models"
    probe_headers: tuple[tuple[str, str], ...] = ()


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _openai_error(body: Any) -> ProviderError | None:
    """`{"error": {"message", "type", "param", "code"}}`."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    tokens = {t for t in (_str(error.get("type")), _str(error.get("code"))) if t}
    return ProviderError(frozenset(tokens), _str(error.get("message")) or "")


def _anthropic_error(body: Any) -> ProviderError | None:
    """`{"type": "error", "error": {"type", "message"}}`."""
    if not isinstance(body, dict) or body.get("type") != "error":
        return None
    error = body.get("error")
    if not isinstance(error, dict):
        return None
    kind = _str(error.get("type"))
    return ProviderError(frozenset({kind} if kind else ()), _str(error.get("message")) or "")


def _google_error(body: Any) -> ProviderError | None:
    """`{"error": {"code", "message", "status", "details": [{"reason"}]}}`."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or "status" not in error:
        return None
    tokens = {_str(error.get("status"))}
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict):
            tokens.add(_str(detail.get("reason")))
            violations = detail.get("violations")
            for violation in violations if isinstance(violations, list) else ():
                quota = violation.get("quotaId") if isinstance(violation, dict) else None
                if isinstance(quota, str) and "PerDay" in quota:  # not a rate: a used-up day
                    tokens.add(_DAILY_QUOTA)
    tokens.discard(None)
    return ProviderError(frozenset(tokens), _str(error.get("message")) or "")  # type: ignore[arg-type]


_DAILY_QUOTA = "daily_quota"  # a token of ours: Google's quota ids name the day in them


def _bearer(secret: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {secret}")


def _x_api_key(secret: str) -> tuple[str, str]:
    return ("x-api-key", secret)


RULES: dict[str, KeyRules] = {
    "openai": KeyRules(
        auth=_bearer,
        parse_error=_openai_error,
        rate_limit=frozenset({"rate_limit_exceeded"}),
        # "Request too large for gpt-4o ... on tokens per min": the request alone
        # exceeds the limit; another key of the same organisation would refuse it too
        request_level_429=("Request too large",),
        quota=frozenset({"insufficient_quota"}),
        # OpenAI reports key and account trouble as 401 and sends few 403s, with
        # no stable code for "this key": any 403 in its format is a suspect (the
        # probe decides) except the ones about where the request comes from
        key_403=None,
        request_403=frozenset({"unsupported_country_region_territory", "request_forbidden"}),
    ),
    "anthropic": KeyRules(
        auth=_x_api_key,
        parse_error=_anthropic_error,
        rate_limit=frozenset({"rate_limit_error"}),
        # "Your API key does not have permission to use the specified resource."
        key_403=frozenset({"permission_error", "authentication_error"}),
        probe_headers=(("anthropic-version", "2023-06-01"),),
    ),
    "gemini": KeyRules(
        auth=lambda secret: ("x-goog-api-key", secret),
        parse_error=_google_error,
        # per-minute limits and exhausted daily quotas alike: the key rests
        rate_limit=frozenset({"RESOURCE_EXHAUSTED"}),
        quota=frozenset({_DAILY_QUOTA}),  # a daily quota used up: no cooling helps
        key_403=None,  # key restrictions, API not enabled for the key's project
        key_400=frozenset({"API_KEY_INVALID"}),
        probe_path="v1beta/models",
    ),
}
# A kind without rules of its own: Bearer auth; a 401 is a suspect, nothing cools.
_UNKNOWN_KIND = KeyRules(auth=_bearer, parse_error=_openai_error)


def rules_for(kind: str) -> KeyRules:
    return RULES.get(kind, _UNKNOWN_KIND)


def classify(rules: KeyRules, status: int, body: bytes) -> Verdict:
    """What an upstream 4xx says about the key that got it."""
    if status == 401:  # authentication is about the key, whatever the body says
        return Verdict.SUSPECT
    if status not in (400, 403, 429):
        return Verdict.PASS
    try:
        error = rules.parse_error(orjson.loads(body))
    except orjson.JSONDecodeError:
        error = None
    if error is None:  # not the provider speaking (a CDN page, an empty body)
        return Verdict.PASS
    tokens = error.tokens
    if status == 400:
        return Verdict.SUSPECT if tokens & rules.key_400 else Verdict.PASS
    if status == 403:
        if tokens & rules.request_403:
            return Verdict.PASS
        if rules.key_403 is None or tokens & rules.key_403:
            return Verdict.SUSPECT
        return Verdict.PASS
    if tokens & rules.quota:
        return Verdict.QUOTA
    if tokens & rules.rate_limit and not error.message.startswith(rules.request_level_429):
        return Verdict.RATE_LIMITED
    return Verdict.PASS


class KeyHealth:
    """Probes provider keys: one probe per key at a time, and a recent success
    remembered for `PROBE_OK_SECONDS`."""

    def __init__(self) -> None:
        self._ok_until: dict[int, float] = {}
        self._running: dict[int, asyncio.Future[Probe]] = {}

    async def probe(
        self,
        client: UpstreamClient,
        target: Target,
        rules: KeyRules,
        key_id: int,
        secret: str,
        *,
        auth: tuple[str, str] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Probe:
        """Is this key accepted? `target` is the provider's models list."""
        now = time.monotonic()
        if self._ok_until.get(key_id, 0.0) > now:
            return Probe.OK
        running = self._running.get(key_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Probe] = asyncio.get_running_loop().create_future()
        self._running[key_id] = future
        try:
            result = await _probe_once(client, target, rules, auth or rules.auth(secret), headers)
        except BaseException:
            future.set_result(Probe.UNKNOWN)
            raise
        else:
            future.set_result(result)
        finally:
            del self._running[key_id]
        if result is Probe.OK:
            now = time.monotonic()
            self._ok_until = {k: t for k, t in self._ok_until.items() if t > now}
            self._ok_until[key_id] = now + PROBE_OK_SECONDS
        return result

    def forget(self, key_id: int) -> None:
        self._ok_until.pop(key_id, None)


async def _probe_once(
    client: UpstreamClient,
    target: Target,
    rules: KeyRules,
    auth: tuple[str, str],
    fixed: tuple[tuple[str, str], ...] = (),
) -> Probe:
    """One GET of the models list with the key, and the provider's fixed
    headers (a gateway in front of it may need them to let anything through)."""
    headers = [*fixed, auth, *rules.probe_headers, ("Accept", "application/json")]
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            response = await client.get(target, headers)
            try:
                body = await response.read()  # read to its end: the connection is reused
            finally:
                response.release()
    except (UpstreamError, TimeoutError):
        return Probe.UNKNOWN
    if 200 <= response.status < 300:
        return Probe.OK
    if response.status in (401, 403):
        return Probe.REJECTED
    if response.status == 400 and rules.key_400 and classify(rules, 400, body) is Verdict.SUSPECT:
        return Probe.REJECTED
    return Probe.UNKNOWN
