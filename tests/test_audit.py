"""The audit log (CONTRACT.md section 9): every operator action from the CLI
and from the dashboard, with actor, time, before and after, never a secret."""

# ruff: noqa: F811  (fixtures imported from other test modules are parameters here)

from __future__ import annotations

import getpass
import json
from decimal import Decimal

import asyncpg
import pytest

from shared.db import audit, providers
from tests.test_cli import Cli, cli, cli_env, new_email  # noqa: F401  (fixtures)
from tests.test_dashboard_helpers import (  # noqa: F401  (fixtures)
    Browser,
    browser,
    dashboard_url,
    make_user,
)

ACTOR = f"cli:{getpass.getuser()}"


async def _entries(cli: Cli, since_id: int) -> list[dict]:
    result = await cli.ok("audit", "list", "--json")
    return [e for e in result.json() if e["id"] > since_id][::-1]  # oldest first


async def _last_id(pg: asyncpg.Pool) -> int:
    return await pg.fetchval("SELECT COALESCE(max(id), 0) FROM audit_log")


async def _no_secret(pg: asyncpg.Pool, *secrets: str) -> None:
    dump = json.dumps([dict(r) for r in await pg.fetch("SELECT * FROM audit_log")], default=str)
    for secret in secrets:
        assert secret not in dump


async def test_every_cli_action_is_recorded(pg, cli: Cli):
    start = await _last_id(pg)
    email = new_email()
    password = "a-long-password-1"
    await cli.ok("user", "create", email, "--password", password, "--rate-multiplier", "1.5")
    await cli.ok("user", "set", email, "--daily-alert-usd", "3.25", "--disabled", "false")
    await cli.ok("credits", "add", email, "10.000000001", "--note", "invoice 7")
    await cli.ok("credits", "add", email, "-0.5")
    created = await cli.ok("key", "create", email, "--name", "ci", "--rpm", "60")
    proxy_key = created.out.splitlines()[-1]
    key_id = int(created.out.split("created key ")[1].split()[0])
    await cli.ok("key", "set", str(key_id), "--budget-usd", "5", "--budget-period", "day")
    await cli.ok("key", "revoke", proxy_key)
    secret = "sk-audit-" + "x" * 20
    added = await cli.ok("provider-key", "add", "openai", "-", "--name", "audited",
                         stdin=secret.encode())  # fmt: skip
    pk_id = int(added.out.split("key ")[1].split()[0])
    await cli.ok("provider-key", "disable", str(pk_id))
    await cli.ok("provider-key", "enable", str(pk_id))
    await cli.ok("provider-key", "remove", str(pk_id))
    try:
        await cli.ok("provider", "pause", "anthropic")
        await cli.ok("provider", "resume", "anthropic")
        await cli.ok("provider", "set", "anthropic", "--warn-usd", "50", "--stop-usd", "80.5")
        await cli.ok("provider", "set", "anthropic", "--warn-usd", "none")
    finally:
        await providers.set_paused(pg, "anthropic", False)
        await pg.execute("UPDATE providers SET warn_usd = NULL, stop_usd = NULL"
                         " WHERE name = 'anthropic'")  # fmt: skip
    code = (await cli.ok("code", "create", "2.5", "--note", "campaign")).out.strip()

    entries = await _entries(cli, start)
    assert [e["action"] for e in entries] == [
        "user.create", "user.set", "credits.add", "credits.add", "key.create", "key.set",
        "key.revoke", "provider_key.add", "provider_key.disable", "provider_key.enable",
        "provider_key.remove", "provider.pause", "provider.resume", "provider.thresholds",
        "provider.thresholds", "code.create",
    ]  # fmt: skip
    for e in entries:
        assert e["actor"] == ACTOR
        assert set(e) >= {"at", "actor", "action", "subject", "before", "after"}
    by = {e["action"]: e for e in entries}
    assert by["user.create"]["subject"] == f"user:{email}"
    assert by["user.create"]["after"]["rate_multiplier"] == "1.5"
    assert by["user.create"]["after"]["password_set"] is True
    assert by["user.set"]["before"] == {"daily_alert_usd": None, "disabled": False}
    assert by["user.set"]["after"] == {"daily_alert_usd": "3.25", "disabled": False}
    credit = entries[2]
    assert Decimal(credit["before"]["balance_usd"]) == 0
    assert Decimal(credit["after"]["balance_usd"]) == Decimal("10.000000001")
    assert credit["after"]["amount_usd"] == "10.000000001" and credit["reason"] == "invoice 7"
    assert Decimal(entries[3]["after"]["balance_usd"]) == Decimal("9.500000001")
    assert by["key.create"]["subject"] == f"key:{key_id}"
    assert by["key.create"]["after"]["rpm"] == 60 and by["key.create"]["after"]["user"] == email
    assert by["key.set"]["before"]["budget_usd"] is None
    assert Decimal(by["key.set"]["after"]["budget_usd"]) == 5
    assert by["key.set"]["after"]["budget_period"] == "day"
    assert by["key.revoke"]["before"]["revoked"] is False
    assert by["key.revoke"]["after"]["revoked"] is True
    assert by["provider_key.add"]["after"]["name"] == "audited"
    assert by["provider_key.disable"]["after"]["status"] == "disabled"
    assert by["provider_key.remove"]["after"] is None
    assert by["provider.pause"]["subject"] == "provider:anthropic"
    assert by["provider.pause"]["after"]["paused"] is True
    assert by["provider.resume"]["after"]["paused"] is False
    assert entries[13]["after"] == {"warn_usd": "50", "stop_usd": "80.5"}
    assert entries[14]["before"] == {"warn_usd": "50", "stop_usd": "80.5"}
    assert entries[14]["after"] == {"warn_usd": None, "stop_usd": "80.5"}
    assert by["code.create"]["after"]["count"] == 1
    assert by["code.create"]["after"]["amount_usd"] == "2.5"
    await _no_secret(pg, password, proxy_key, secret, code)

    text = (await cli.ok("audit", "list")).out
    assert "provider.thresholds" in text and "warn_usd: 50 -> -" in text
    assert (await cli.ok("audit", "list", "--days", "1", "--json")).json()
    await cli.fails("audit", "list", "--days", "0")


async def test_audit_list_days_and_filters(pg):
    async with pg.acquire() as conn:
        await audit.record(conn, "old@example.com", "user.set", "user:x@example.com",
                           {"disabled": False}, {"disabled": True})  # fmt: skip
        await conn.execute("UPDATE audit_log SET at = now() - interval '10 days'"
                           " WHERE actor = 'old@example.com'")  # fmt: skip
        new_id = await audit.record(conn, "new@example.com", "provider.pause",
                                    "provider:openai", None, {"paused": True}, "incident 5")  # fmt: skip
    recent = await audit.recent(pg, days=7)
    assert new_id in [e.id for e in recent]
    assert "old@example.com" not in [e.actor for e in recent]
    assert "old@example.com" in [e.actor for e in await audit.recent(pg, days=11)]
    found = await audit.recent(pg, days=7, actor="NEW@", action="provider")
    assert [e.id for e in found][:1] == [new_id] and found[0].reason == "incident 5"
    assert not await audit.recent(pg, days=7, actor="new@", action="user")
    assert await audit.recent(pg, days=None, subject="x@example")
    with pytest.raises(ValueError):
        await audit.record(pg, "a", "no.such", "s")


def _confirm(form: dict, reason: str) -> dict:
    return {**form, "confirming": "1", "confirm": "yes", "reason": reason}


async def test_every_dashboard_action_is_recorded(pg, provider_keys, browser: Browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg, credit="1")
    await browser.login(admin)
    start = await _last_id(pg)
    uid = user.id
    email = f"made-{uid}@example.com"
    assert (await browser.post("/admin/users", {"email": email}))[0] == 303
    assert (await browser.post(f"/admin/users/{uid}/credit",
                               {"amount_usd": "2.5", "reason": "invoice 9"}))[0] == 303  # fmt: skip
    # a debit needs a confirmation: the first post changes nothing
    debit = {"amount_usd": "-0.75", "reason": "goodwill undo"}
    status, text, _ = await browser.post(f"/admin/users/{uid}/credit", debit)
    assert status == 200 and "I understand" in text
    assert await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", uid) == Decimal("3.5")
    debit_confirmed = {**debit, "confirming": "1", "confirm": "yes"}
    assert (await browser.post(f"/admin/users/{uid}/credit", debit_confirmed))[0] == 303
    assert await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", uid) == Decimal("2.75")
    settings = {"rate_multiplier": "1.25", "daily_alert_usd": "4", "low_balance_usd": ""}
    assert (await browser.post(f"/admin/users/{uid}/settings", settings))[0] == 303
    password = "a-dashboard-password"
    assert (await browser.post(f"/admin/users/{uid}/password",
                               {"password": password, "confirm": password}))[0] == 303  # fmt: skip
    assert (await browser.post(f"/admin/users/{uid}/invite"))[0] == 200
    assert (await browser.post(f"/admin/users/{uid}/settings", {"end_sessions": "1"}))[0] == 303
    status, text, _ = await browser.post(f"/admin/users/{uid}/keys",
                                         {"name": "ops", "rpm": "60"})  # fmt: skip
    assert status == 200
    proxy_key = text.split('id="new-key">')[1].split("<")[0]
    key_id = await pg.fetchval("SELECT max(id) FROM api_keys WHERE user_id = $1", uid)
    assert (await browser.post(f"/admin/users/{uid}/keys/{key_id}/controls",
                               {"budget_usd": "5", "budget_period": "week", "rpm": "60"})
            )[0] == 303  # fmt: skip
    revoke = f"/admin/users/{uid}/keys/{key_id}/revoke"
    assert (await browser.post(revoke))[0] == 200  # the confirmation page
    assert await pg.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", key_id) is None
    status, text, _ = await browser.post(revoke, {"confirming": "1", "reason": "leaked"})
    assert status == 400 and "Tick the box" in text  # reason without the tick: still nothing
    assert await pg.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", key_id) is None
    assert (await browser.post(revoke, _confirm({}, "leaked in CI")))[0] == 303
    assert await pg.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", key_id) is not None

    secret = "sk-dash-audit-" + "y" * 20
    assert (await browser.post("/admin/provider-keys", {"provider": "openai", "secret": secret,
                                                         "name": "dash"}))[0] == 303  # fmt: skip
    pk = await pg.fetchval("SELECT max(id) FROM provider_keys")
    assert (await browser.post(f"/admin/provider-keys/{pk}/disable"))[0] == 200
    assert await pg.fetchval("SELECT status FROM provider_keys WHERE id = $1", pk) == "active"
    assert (await browser.post(f"/admin/provider-keys/{pk}/disable",
                               _confirm({}, "rotating")))[0] == 303  # fmt: skip
    assert (await browser.post(f"/admin/provider-keys/{pk}/enable"))[0] == 303
    assert (await browser.post(f"/admin/provider-keys/{pk}/remove"))[0] == 200
    assert await pg.fetchval("SELECT count(*) FROM provider_keys WHERE id = $1", pk) == 1
    assert (await browser.post(f"/admin/provider-keys/{pk}/remove",
                               _confirm({}, "retired")))[0] == 303  # fmt: skip
    try:
        assert (await browser.post("/admin/providers/anthropic/pause"))[0] == 200
        assert not await pg.fetchval("SELECT paused FROM providers WHERE name = 'anthropic'")
        assert (await browser.post("/admin/providers/anthropic/pause",
                                   _confirm({}, "upstream incident")))[0] == 303  # fmt: skip
        assert await pg.fetchval("SELECT paused FROM providers WHERE name = 'anthropic'")
        assert (await browser.post("/admin/providers/anthropic/resume"))[0] == 303
        thresholds = {"warn_usd": "0.5", "stop_usd": "9"}
        assert (await browser.post("/admin/providers/anthropic/thresholds", thresholds))[0] == 303
        cleared = {"warn_usd": "", "stop_usd": "9"}
        assert (await browser.post("/admin/providers/anthropic/thresholds", cleared))[0] == 303
        row = await pg.fetchrow("SELECT warn_usd, stop_usd FROM providers WHERE name='anthropic'")
        assert row["warn_usd"] is None and row["stop_usd"] == Decimal("9")
    finally:
        await providers.set_paused(pg, "anthropic", False)
        await pg.execute("UPDATE providers SET warn_usd = NULL, stop_usd = NULL"
                         " WHERE name = 'anthropic'")  # fmt: skip
    _, text, _ = await browser.get("/admin/codes")
    once = text.split('name="once" value="')[1].split('"')[0]
    status, csv_text, _ = await browser.post("/admin/codes", {"amount_usd": "3", "count": "2",
                                                               "once": once})  # fmt: skip
    assert status == 200
    codes = [line.split(",")[1] for line in csv_text.splitlines()[1:]]

    entries = [e.document() for e in await audit.recent(pg, days=1)]
    entries = [e for e in entries if e["id"] > start][::-1]
    assert [e["action"] for e in entries] == [
        "user.create", "credits.add", "credits.add", "user.set", "user.password", "user.invite",
        "user.sessions_end", "key.create", "key.set", "key.revoke", "provider_key.add",
        "provider_key.disable", "provider_key.enable", "provider_key.remove", "provider.pause",
        "provider.resume", "provider.thresholds", "provider.thresholds", "code.create",
    ]  # fmt: skip
    assert {e["actor"] for e in entries} == {admin.email}
    assert entries[1]["reason"] == "invoice 9" and entries[2]["reason"] == "goodwill undo"
    assert entries[2]["before"] == {"balance_usd": "3.5"}
    assert Decimal(entries[2]["after"]["balance_usd"]) == Decimal("2.75")
    assert entries[3]["before"] == {"rate_multiplier": "1", "daily_alert_usd": None,
                                    "low_balance_usd": "1"}  # fmt: skip
    assert entries[3]["after"] == {"rate_multiplier": "1.25", "daily_alert_usd": "4",
                                   "low_balance_usd": None}  # fmt: skip
    assert entries[9]["reason"] == "leaked in CI" and entries[9]["after"]["revoked"] is True
    assert entries[11]["reason"] == "rotating" and entries[13]["reason"] == "retired"
    assert entries[14]["reason"] == "upstream incident"
    assert "upstream incident" in entries[14]["after"]["paused_reason"]
    assert entries[17]["after"] == {"warn_usd": None, "stop_usd": "9"}
    assert entries[18]["after"]["count"] == 2 and entries[18]["after"]["amount_usd"] == "3"
    await _no_secret(pg, password, proxy_key, secret, *codes)

    # the operator page, with its filters
    _, text, _ = await browser.get("/admin/audit")
    assert "Provider paused" in text and "upstream incident" in text and admin.email in text
    _, text, _ = await browser.get("/admin/audit?action=provider.&subject=anthropic")
    assert 'data-action="provider.pause"' in text and 'data-action="key.revoke"' not in text
    _, text, _ = await browser.get(f"/admin/audit?actor=nobody-{uid}")
    assert "Nothing recorded" in text and "data-audit-id" not in text


async def test_non_operators_cannot_see_the_audit_log(pg, browser: Browser):
    user = await make_user(pg)
    await browser.login(user)
    status, text, _ = await browser.get("/admin/audit")
    assert status == 403 and "for operators" in text
