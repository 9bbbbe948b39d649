"""`meterway alerts list`: the alerts log, newest first."""

from __future__ import annotations

import json

from meterway.context import Context


async def alerts_list(ctx: Context, days: int, as_json: bool) -> None:
    rows = await ctx.pg.fetch(
        "SELECT id, rule, subject, day, message, recipients, created_at, emailed_at, email_error,"
        " webhook_state, webhook_attempts, webhook_delivered_at, webhook_error"
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
            "day": r["day"].isoformat(),
            # pending, delivered, failed (gave up after 10 minutes) or none (no webhook)
            "webhook": r["webhook_state"],
            "webhook_attempts": r["webhook_attempts"],
            "webhook_delivered": (
                r["webhook_delivered_at"].isoformat() if r["webhook_delivered_at"] else None
            ),
            "webhook_error": r["webhook_error"],
        }
        for r in rows
    ]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    for item in items:
        mailed = "mailed" if item["emailed"] else (item["email_error"] or "pending")
        print(
            f"{item['created'][:19]}  {item['rule']:<22} {item['subject']:<18} {mailed};"
            f" webhook: {_webhook(item)}"
        )
        print(f"    {item['message']}")


def _webhook(item: dict) -> str:
    state = item["webhook"]
    tries = item["webhook_attempts"]
    if state == "delivered":
        return f"delivered ({tries} {'try' if tries == 1 else 'tries'})"
    if state == "pending" and tries:
        return f"retrying ({tries} failed: {item['webhook_error']})"
    if state == "failed":
        return f"failed after {tries} tries: {item['webhook_error']}"
    if state == "none":
        return "not posted" + (f" ({item['webhook_error']})" if item["webhook_error"] else "")
    return state
