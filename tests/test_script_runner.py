"""The proxy's pipelined script runner against a real, private Redis server."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.script_runner import LuaScript, ScriptRunner

ECHO = LuaScript("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(private_redis):
    server, client = private_redis
    runner = ScriptRunner(server.url.replace("/0", "/3"))
    try:
        replies = await asyncio.gather(
            *(runner.run(ECHO, [f"k{i % 7}"], [str(i)]) for i in range(300))
        )
        assert [r[1] for r in replies] == [str(i).encode() for i in range(300)]
        assert [r[0] for r in replies] == [f"k{i % 7}".encode() for i in range(300)]
        assert await client.get("k0") is None  # the URL's database 3, not database 0
        await client.execute_command("SCRIPT", "FLUSH")  # NOSCRIPT: loaded again
        assert (await runner.run(ECHO, ["x"], ["y"]))[1] == b"y"
    finally:
        await runner.close()


async def test_a_lost_redis_fails_calls_and_the_next_call_reconnects(private_redis):
    server, _ = private_redis
    runner = ScriptRunner(server.url)
    try:
        assert (await runner.run(ECHO, ["a"], ["1"]))[2] == 1
        await server.stop()
        with pytest.raises(RedisConnectionError):
            await runner.run(ECHO, ["a"], ["2"])
        await server.start()
        assert (await runner.run(ECHO, ["a"], ["3"]))[2] == 1  # a fresh server
    finally:
        await runner.close()
