"""`meterway audit list`: the audit log of operator actions, newest first."""

from __future__ import annotations

import json

from meterway.context import CommandError, Context
from shared.db import audit


async def audit_list(ctx: Context, days: int, as_json: bool) -> None:
    if not 1 <= days <= 36_500:
        raise CommandError("--days must be from 1 to 36500")
    entries = await audit.recent(ctx.pg, days=days, limit=100_000)
    if as_json:
        print(json.dumps([e.document() for e in entries], indent=2))
        return
    for e in entries:
        changes = "; ".join(f"{n}: {_show(b)} -> {_show(a)}" for n, b, a in e.changes())
        reason = f"  reason: {e.reason}" if e.reason else ""
        print(f"{e.at.isoformat()[:19]}  {e.actor:<28} {e.action:<22} {e.subject}{reason}")
        if changes:
            print(f"    {changes}")


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
