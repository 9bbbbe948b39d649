"""Application / request state keys shared by the simulator modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator.control import Recorder
from simulator.errors import new_request_id


@dataclass(frozen=True, slots=True)
class SimConfig:
    chunk_delay_ms: float = 0.0


CONFIG_KEY = web.AppKey("meterway_sim_config", SimConfig)
RECORDER_KEY = web.AppKey("meterway_sim_recorder", Recorder)

# aiohttp >= 3.13 has typed request keys; older versions use plain strings.
_REQUEST_ID_KEY: Any = (
    web.RequestKey("meterway_sim_request_id", str)  # type: ignore[attr-defined]
    if hasattr(web, "RequestKey")
    else "meterway_sim_request_id"
)


def request_id(request: web.Request) -> str:
    """The upstream request id of this request (created on first use)."""
    rid: str | None = request.get(_REQUEST_ID_KEY)
    if rid is None:
        rid = new_request_id()
        request[_REQUEST_ID_KEY] = rid
    return rid


def default_delay_ms(request: web.Request) -> float:
    return request.app[CONFIG_KEY].chunk_delay_ms


def recorded_requests(app: web.Application) -> list[dict[str, Any]]:
    """Recorded requests of a simulator app, oldest first."""
    return app[RECORDER_KEY].items
