"""`meterway code create` / `code list`: redemption codes (contract section 7)."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime

from meterway.context import CommandError, Context
from shared.db import audit, codes
from shared.money import AmountError, parse_amount, usd_display, usd_str

MAX_COUNT = 10_000


def parse_expiry(text: str | None, what: str = "--expires-at") -> datetime | None:
    """ISO 8601 with `Z` or an offset, in the future; None when not given."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise CommandError(f"{what} must be ISO 8601, e.g. 2026-12-31T23:59:59Z") from exc
    if when.tzinfo is None:
        raise CommandError(f"{what} needs a time zone: end it with Z or an offset like +02:00")
    if when <= datetime.now(UTC):
        raise CommandError(f"{what} is in the past")
    return when


def parse_code_amount(text: str, what: str = "AMOUNT_USD"):
    try:
        amount = parse_amount(text, what, negative=False)
    except AmountError as exc:
        raise CommandError(str(exc)) from exc
    if amount <= 0:
        raise CommandError(f"{what} must be above 0")
    return amount


async def code_create(
    ctx: Context, amount_text: str, count: int, expires_at: str | None, note: str | None
) -> None:
    amount = parse_code_amount(amount_text)
    if not 1 <= count <= MAX_COUNT:
        raise CommandError(f"--count must be from 1 to {MAX_COUNT}")
    expiry = parse_expiry(expires_at)
    if note is not None and (len(note) > 500 or any(ord(c) < 32 for c in note)):
        raise CommandError("--note must be at most 500 characters, no control characters")
    async with ctx.pg.transaction():
        made = await codes.create_batch(
            ctx.pg, amount, count, expires_at=expiry, note=note, created_by=f"cli:{_os_user()}"
        )
        await audit.record(ctx.pg, f"cli:{_os_user()}", "code.create", audit.codes_subject(made),
                           None, audit.codes_after(made, amount, expiry, note))  # fmt: skip
    # stdout carries the codes alone, one a line (scripts read it); shown only now.
    for _, code in made:
        print(code)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def code_json(row: codes.CodeRow) -> dict:
    return {
        "id": row.id,
        "amount_usd": usd_str(row.amount_usd),
        "state": row.state,
        "redeemed_by": row.redeemed_by,
        "redeemed_at": row.redeemed_at.isoformat() if row.redeemed_at else None,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "note": row.note,
    }


async def code_list(ctx: Context, as_json: bool) -> None:
    rows = [code_json(r) for r in await codes.list_codes(ctx.pg)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'id':>6}  {'amount':>10}  {'state':<9} {'redeemed by':<30} {'redeemed at':<20}"
          f" {'expires at':<20} note")  # fmt: skip
    for r in rows:
        print(
            f"{r['id']:>6}  {usd_display(r['amount_usd']):>10}  {r['state']:<9}"
            f" {(r['redeemed_by'] or '-'):<30}"
            f" {(r['redeemed_at'] or '-')[:19]:<20} {(r['expires_at'] or '-')[:19]:<20}"
            f" {r['note'] or ''}"
        )
