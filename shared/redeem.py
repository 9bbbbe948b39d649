"""Redeeming a code, for the proxy's `POST /v1/account/redeem` and the dashboard's
form alike: the failure throttle (Redis), the credit (Postgres, exactly once),
and the new balance published to the Redis view.

Throttle: a user's failed tries (unknown, expired or already redeemed codes) of
the last hour are kept in one sorted set. A try first reserves a place in it in
one Lua step; with 10 failures (or tries still in flight) there already, it is
refused with 429 until the oldest of them is an hour old. So even parallel tries
never get more than 10 failures an hour. A successful try gives its place back.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import structlog
from redis.asyncio import Redis

from shared import redis_keys
from shared.balance_view import BalanceView
from shared.db import codes

log = structlog.get_logger("meterway.redeem")

MAX_FAILURES = 10
WINDOW_SECONDS = 3600

_RESERVE = """
local cutoff = tonumber(ARGV[1]) - tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tostring(tonumber(oldest[2]) + tonumber(ARGV[2]) - tonumber(ARGV[1]))}
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, '0'}
"""


@dataclass(frozen=True, slots=True)
class Redeemed:
    credited_usd: Decimal
    balance_usd: Decimal


class RedeemRefused(Exception):
    """status 400 `invalid_code`, 409 `code_already_redeemed`, 429 `too_many_attempts`."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


_MESSAGES = {
    "invalid_code": (400, "Invalid or expired redemption code"),
    "code_already_redeemed": (409, "This code has already been redeemed"),
}


class Redeemer:
    def __init__(self, pg: asyncpg.Pool, redis: Redis, view: BalanceView) -> None:
        self.pg = pg
        self.redis = redis
        self.view = view
        self._reserve = redis.register_script(_RESERVE)

    async def redeem(self, user_id: int, code: str) -> Redeemed:
        key = redis_keys.redeem_tries(user_id)
        member = secrets.token_hex(8)
        now_ms = int(time.time() * 1000)
        allowed, wait_ms = await self._reserve(
            keys=[key], args=[now_ms, WINDOW_SECONDS * 1000, MAX_FAILURES, member]
        )
        if not int(allowed):
            retry = max(1, -(-int(float(wait_ms)) // 1000))
            log.info("redeem_throttled", user_id=user_id)
            raise RedeemRefused(
                429,
                "too_many_attempts",
                f"Too many failed redemption attempts; try again in {retry} s",
                retry_after=retry,
            )
        code = code.strip()
        try:
            if not code or len(code) > codes.MAX_CODE_LENGTH:
                raise codes.CodeRefused("invalid_code")
            async with self.pg.acquire() as conn:
                credited, balance, version = await codes.redeem(conn, user_id, code)
        except codes.CodeRefused as exc:
            await self.redis.zadd(key, {member: int(time.time() * 1000)}, xx=True)
            status, message = _MESSAGES[exc.reason]
            log.info("redeem_refused", user_id=user_id, reason=exc.reason)
            raise RedeemRefused(status, exc.reason, message) from exc
        except BaseException:
            await self.redis.zrem(key, member)
            raise
        await self.redis.zrem(key, member)
        try:
            await self.view.publish(user_id, balance, version)
        except Exception as exc:  # the proxy rebuilds a missing or old view from Postgres
            log.warning("balance_view_not_updated", error=str(exc))
        log.info("code_redeemed", user_id=user_id, credited_usd=str(credited))
        return Redeemed(credited, balance)
