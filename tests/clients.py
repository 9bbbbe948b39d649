"""The official SDK clients pointed at a proxy, closed after each test.

Closing matters: an SDK client dropped without `close()` leaves its sockets to
the garbage collector, which closes them behind the event loop's back; a new
socket that reuses such a file descriptor is then never woken up.
"""

from __future__ import annotations

import anthropic
import openai

_OPEN: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = []


def openai_client(
    proxy_url: str, key: str, *, max_retries: int = 0, **headers: str
) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(
        base_url=f"{proxy_url}/v1/openai", api_key=key, max_retries=max_retries,
        default_headers=headers,
    )  # fmt: skip
    _OPEN.append(client)
    return client


def anthropic_client(
    proxy_url: str, key: str, *, max_retries: int = 0, **headers: str
) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(
        base_url=f"{proxy_url}/v1/anthropic", api_key=key, max_retries=max_retries,
        default_headers=headers,
    )  # fmt: skip
    _OPEN.append(client)
    return client


async def close_all() -> None:
    while _OPEN:
        await _OPEN.pop().close()
