"""`meterway alerts list`: the alerts log, newest first."""

from __future__ import annotations

import json

from meterway.context import Context


async def alerts_list(ctx: Context, days: int, as_json: bool) -> None:
    rows = await ctx.pg.fetch(
        "SELECT id, rule, subject, day, message, recipients, created_at, emailed_at, email_error"
        " FROM alerts WHERE day > current_date - $1::int ORDER BY id DESC",
        days,
    )
    items = [
        {
            "id": r["id"],
            "rule": r["rule"],
            "subject": r["subject"],
            "created": r["created_at"].isoformat(),
            "message": r["message"],
            "recipients": list(r["recipients"]),
            "emailed": r["emailed_at"] is not None,
            "email_error": r["email_error"],
        }
        for r in rows
    ]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    for item in items:
        mailed = "mailed" if item["emailed"] else (item["email_error"] or "pending")
        print(f"{item['created'][:19]}  {item['rule']:<22} {item['subject']:<18} {mailed}")
        print(f"    {item['message']}")
