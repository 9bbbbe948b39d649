"""The Providers page (issue 11 in the dashboard): every provider with its kind
and base URL; an operator adds one (name, kind, base URL, auth header, fixed
headers one a line) and removes an added one after a confirmation; refusals are
shown on the form and change nothing; every change is audited and published to
the proxies. The removal's confirmation is also driven in Chromium."""

# ruff: noqa: F811  (fixtures imported from the other dashboard test modules are parameters here)

from __future__ import annotations

import asyncio
import json
import secrets

from shared import provider_config
from tests.test_dashboard_admin import _listen, _messages
from tests.test_dashboard_browser import chromium, page, screenshot_on_failure, shoot, sign_in  # noqa: F401
from tests.test_dashboard_helpers import (  # noqa: F401
    Browser,
    browser,
    dashboard_url,
    make_user,
)


def _name() -> str:
    return "dash-" + secrets.token_hex(3)


async def _served(pg) -> list[str]:
    return await provider_config.served_names(pg)


async def test_operator_adds_and_removes_a_provider(pg, redis, settings, browser: Browser):
    admin = await make_user(pg, admin=True)
    await browser.login(admin)
    _, text, _ = await browser.get("/admin/providers")
    for spec in await provider_config.list_provider_specs(pg, settings):
        card = text.split(f'data-provider="{spec.name}"')[1].split("</section>")[0]
        assert f'<dd class="kind">{spec.kind}</dd>' in card
        assert f"<code>{spec.base_url}</code>" in card
        assert ("Remove provider" in card) is (not spec.builtin)

    name = _name()
    pubsub = await _listen(redis)
    form = {"name": name, "kind": "openai", "base_url": "https://llm.example.com/v1/",
            "auth_header": "", "headers": "api-version: 2024-10-21\r\nX-Team: billing\r\n"}  # fmt: skip
    status, _, resp = await browser.post("/admin/providers", form)
    assert status == 303 and resp.headers["Location"] == "/admin/providers"
    assert "providers" in " ".join(await _messages(pubsub))
    await pubsub.aclose()
    spec = await provider_config.get_provider_spec(pg, name, settings)
    assert spec is not None and (spec.kind, spec.base_url) == (
        "openai",
        "https://llm.example.com/v1",
    )
    assert spec.auth_header == "Authorization" and not spec.builtin
    assert spec.headers == (("api-version", "2024-10-21"), ("X-Team", "billing"))
    entry = await pg.fetchrow(
        "SELECT actor, after FROM audit_log WHERE action = 'provider.add' AND subject = $1",
        f"provider:{name}",
    )
    after = json.loads(entry["after"])
    assert entry["actor"] == admin.email and after["headers"] == ["api-version", "X-Team"]
    assert "2024-10-21" not in entry["after"]  # header values are never audited
    _, text, _ = await browser.get("/admin/providers")
    assert f'data-provider="{name}"' in text and "Added provider" in text
    _, keys_page, _ = await browser.get("/admin/provider-keys")
    assert f"<option>{name}</option>" in keys_page  # keys can be added for it

    for bad, message in [
        ({**form}, "already exists"),
        ({**form, "name": "openai"}, "built in"),
        ({**form, "name": "Bad Name"}, "invalid provider name"),
        ({**form, "name": _name(), "kind": "cohere"}, "unknown kind"),
        ({**form, "name": _name(), "base_url": "ftp://x"}, "invalid base URL"),
        ({**form, "name": _name(), "headers": "Host: evil"}, "set by the proxy"),
    ]:
        status, text, _ = await browser.post("/admin/providers", bad)
        assert status == 400 and message in text, (bad, text[-2000:])
    assert len(await _served(pg)) == len(set(await _served(pg)))
    assert [n for n in await _served(pg) if n.startswith("dash-")].count(name) == 1

    status, text, _ = await browser.post(f"/admin/providers/{name}/remove")
    assert status == 200 and 'id="confirm-form"' in text  # nothing removed yet
    assert name in await _served(pg)
    pubsub = await _listen(redis)
    status, _, _ = await browser.post(
        f"/admin/providers/{name}/remove", {"confirm": "yes", "reason": "moved to another host"}
    )
    assert status == 303 and name not in await _served(pg)
    assert "providers" in " ".join(await _messages(pubsub))
    entry = await pg.fetchrow(
        "SELECT actor, reason FROM audit_log WHERE action = 'provider.remove' AND subject = $1",
        f"provider:{name}",
    )
    assert (entry["actor"], entry["reason"]) == (admin.email, "moved to another host")
    assert (await browser.post("/admin/providers/openai/remove", {"confirm": "yes",
            "reason": "x"}))[0] == 303  # fmt: skip
    assert "openai" in await _served(pg)  # a built-in is never removed
    assert (await browser.post(f"/admin/providers/{name}/pause"))[0] == 404  # gone
    await pubsub.aclose()


async def test_a_user_cannot_touch_providers(pg, browser: Browser):
    user = await make_user(pg)
    await browser.login(user)
    assert (await browser.get("/admin/providers"))[0] == 403
    name = _name()
    status, _, _ = await browser.post("/admin/providers", {"name": name, "kind": "openai",
                                      "base_url": "https://x.example.com"})  # fmt: skip
    assert status == 403 and name not in await _served(pg)


async def test_removing_a_provider_waits_for_the_confirmation_in_chromium(
    pg, settings, dashboard_url, page, tmp_path
):
    admin = await make_user(pg, admin=True)
    name = _name()
    async with screenshot_on_failure(page, tmp_path):
        await sign_in(page, dashboard_url, admin.email, admin.password)
        await page.goto(dashboard_url + "/admin/providers")
        await page.fill("#add-provider input[name=name]", name)
        await page.select_option("#add-provider select[name=kind]", "anthropic")
        await page.fill("#add-provider input[name=base_url]", "http://10.0.0.5:8000/v1")
        await page.fill("#add-provider textarea[name=headers]", "anthropic-beta: tools")
        await page.click("button:has-text('Add provider')")
        card = page.locator(f'section[data-provider="{name}"]')
        await card.wait_for()
        assert (await card.locator(".kind").text_content() or "").strip() == "anthropic"
        assert "http://10.0.0.5:8000/v1" in (await card.locator(".base-url").text_content() or "")
        await shoot(page, "operator-providers-config")
        await card.locator("button:has-text('Remove provider')").click()
        await page.wait_for_selector("#confirm-form")
        await page.click(f"#confirm-form button:has-text('Remove {name}')")  # nothing given
        await asyncio.sleep(0.2)
        assert await page.is_visible("#confirm-form") and name in await _served(pg)
        await page.fill("#confirm-form input[name=reason]", "test over")
        await page.check("#confirm-form input[name=confirm]")
        await page.click(f"#confirm-form button:has-text('Remove {name}')")
        await page.wait_for_selector(f"text=Provider {name} removed.")
        assert name not in await _served(pg)
        assert await page.locator(f'section[data-provider="{name}"]').count() == 0
