"""The audit log (CONTRACT.md section 9): who did what to which subject, when,
with the values before and after. Written in the same transaction as the change
where the caller has one. Never a secret: fields that name one are dropped."""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from shared.db.users import Conn

# Never recorded, whatever a caller passes (proxy keys, provider secrets, codes, passwords).
SECRET_FIELDS = frozenset({
    "secret", "secret_enc", "key", "key_hash", "code", "code_hash", "codes",
    "password", "password_hash", "token", "invite",
})  # fmt: skip
MAX_REASON = 500

# action -> what the operator page calls it
ACTIONS = {
    "user.create": "User created",
    "user.set": "User changed",
    "user.password": "Password set",
    "user.invite": "Invite link made",
    "user.sessions_end": "Sessions ended",
    "credits.add": "Credit changed",
    "key.create": "API key created",
    "key.set": "API key limits changed",
    "key.revoke": "API key revoked",
    "provider_key.add": "Provider key added",
    "provider_key.disable": "Provider key disabled",
    "provider_key.enable": "Provider key enabled",
    "provider_key.remove": "Provider key removed",
    "provider.pause": "Provider paused",
    "provider.resume": "Provider resumed",
    "provider.thresholds": "Provider thresholds changed",
    "code.create": "Codes created",
    "code.redeem": "Code redeemed",
    "provider.add": "Provider added",
    "provider.remove": "Provider removed",
    "reconcile.run": "Reconcile run",
}


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:unknown"


def _plain(value: Any) -> Any:
    """JSON-safe, exact: Decimals as strings, times as ISO 8601, secrets dropped."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if str(k) not in SECRET_FIELDS}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return None
    return value


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(_plain(value), sort_keys=True)


async def record(
    conn: Conn,
    actor: str,
    action: str,
    subject: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
) -> int:
    """One audit row; returns its id."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    return await conn.fetchval(
        "INSERT INTO audit_log (actor, action, subject, before, after, reason)"
        " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6) RETURNING id",
        actor,
        action,
        subject,
        _json(before),
        _json(after),
        (reason or None) and reason[:MAX_REASON],
    )


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    before: Any
    after: Any
    reason: str | None

    def document(self) -> dict[str, Any]:
        """The JSON object of `meterway audit list --json`."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
        }

    @property
    def label(self) -> str:
        return ACTIONS.get(self.action, self.action)

    def changes(self) -> list[tuple[str, Any, Any]]:
        """(field, before, after) for each field that differs (or is new)."""
        before = self.before if isinstance(self.before, dict) else {}
        after = self.after if isinstance(self.after, dict) else {}
        names = list(dict.fromkeys([*before, *after]))
        return [(n, before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)]


def _filters(
    since: datetime | None, actor: str | None, action: str | None, subject: str | None
) -> tuple[str, list[Any]]:
    where, args = [], []
    for clause, value in (
        ("at >= ${}", since),
        ("actor ILIKE ${} ESCAPE '\\'", _like(actor)),
        ("action LIKE ${} ESCAPE '\\'", _prefix(action)),
        ("subject ILIKE ${} ESCAPE '\\'", _like(subject)),
    ):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    return (" WHERE " + " AND ".join(where)) if where else "", args


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like(text: str | None) -> str | None:
    return f"%{_escape(text)}%" if text else None


def _prefix(text: str | None) -> str | None:
    return f"{_escape(text)}%" if text else None


async def recent(
    conn: Conn,
    *,
    days: int | None = 7,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    limit: int = 1000,
    offset: int = 0,
    now: datetime | None = None,
) -> list[Entry]:
    """Newest first; `action` matches a prefix (`provider` finds every provider
    action), `actor` and `subject` a substring, case-insensitively."""
    since = None
    if days is not None:
        since = (now or datetime.now().astimezone()) - timedelta(days=days)
    where, args = _filters(since, actor, action, subject)
    args += [limit, offset]
    rows = await conn.fetch(
        "SELECT id, at, actor, action, subject, before, after, reason FROM audit_log"
        f"{where} ORDER BY at DESC, id DESC LIMIT ${len(args) - 1} OFFSET ${len(args)}",
        *args,
    )
    return [
        Entry(
            r["id"], r["at"], r["actor"], r["action"], r["subject"],
            json.loads(r["before"]) if r["before"] is not None else None,
            json.loads(r["after"]) if r["after"] is not None else None,
            r["reason"],
        )
        for r in rows
    ]  # fmt: skip


def key_fields(key: Any) -> dict[str, Any]:
    """An API key as the audit log shows it: its name, owner and controls (no hash)."""
    return {
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "prefix": key.prefix,
        "revoked": key.revoked_at is not None,
        "rpm": key.rpm_limit,
        "tpm": key.tpm_limit,
        "budget_usd": key.budget_usd,
        "budget_period": key.budget_period,
        "models": list(key.models) if key.models is not None else None,
        "expires_at": key.expires_at,
    }


def user_fields(user: Any, names: Any = None) -> dict[str, Any]:
    """A user's settings as the audit log shows them (never the password)."""
    all_names = ("email", "is_admin", "disabled", "rate_multiplier", "daily_alert_usd",
                 "low_balance_usd")  # fmt: skip
    return {n: getattr(user, n) for n in (names or all_names)}


async def provider_key_fields(conn: Conn, key_id: int) -> dict[str, Any] | None:
    """A provider key as the audit log shows it (never its secret)."""
    row = await conn.fetchrow(
        "SELECT id, provider, name, prefix, status FROM provider_keys WHERE id = $1", key_id
    )
    return dict(row) if row else None


async def _provider(conn: Conn, name: str, lock: bool = True) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT paused, paused_reason, warn_usd, stop_usd FROM providers WHERE name = $1"
        + (" FOR UPDATE" if lock else ""),
        name,
    )
    return dict(row) if row else None


async def set_paused(
    conn: Conn, actor: str, provider: str, paused: bool, reason: str | None = None
) -> None:
    """Pause or resume in Postgres with its audit row; run it in a transaction
    (a resume's Redis resume point is the caller's, after the commit)."""
    before = await _provider(conn, provider)
    stored = ("paused by operator" + (f": {reason}" if reason else "")) if paused else None
    await conn.execute(
        "UPDATE providers SET paused = $2, paused_reason = $3,"
        " paused_at = CASE WHEN $2 THEN now() ELSE NULL END, updated_at = now()"
        " WHERE name = $1",
        provider,
        paused,
        stored,
    )
    after = await _provider(conn, provider, lock=False)
    await record(conn, actor, "provider.pause" if paused else "provider.resume",
                 f"provider:{provider}", before, after, reason)  # fmt: skip


KEEP: Any = object()  # a threshold not given: left as it is (None clears it)


async def set_thresholds(
    conn: Conn, actor: str, provider: str, *, warn_usd: Any = KEEP, stop_usd: Any = KEEP,
    reason: str | None = None,
) -> None:  # fmt: skip
    """Set (a Decimal), clear (None) or keep (KEEP) each daily threshold, with its audit row."""
    before = await _provider(conn, provider)
    if before is None:
        raise LookupError(f"no provider {provider}")
    warn = before["warn_usd"] if warn_usd is KEEP else warn_usd
    stop = before["stop_usd"] if stop_usd is KEEP else stop_usd
    await conn.execute(
        "UPDATE providers SET warn_usd = $2, stop_usd = $3, updated_at = now() WHERE name = $1",
        provider,
        warn,
        stop,
    )
    await record(conn, actor, "provider.thresholds", f"provider:{provider}",
                 {"warn_usd": before["warn_usd"], "stop_usd": before["stop_usd"]},
                 {"warn_usd": warn, "stop_usd": stop}, reason)  # fmt: skip


def codes_subject(made: list[tuple[int, str]]) -> str:
    ids = [i for i, _ in made]
    return f"code:{ids[0]}" if len(ids) == 1 else f"code:{min(ids)}-{max(ids)}"


def codes_after(made: list[tuple[int, str]], amount: Decimal, expires_at: Any, note: Any) -> dict:
    """What a batch of codes records: ids, amount, count, expiry, note; never a code."""
    return {"ids": [i for i, _ in made], "count": len(made), "amount_usd": amount,
            "expires_at": expires_at, "note": note}  # fmt: skip
