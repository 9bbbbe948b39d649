"""One money display rule (shared.money) in the CLI's text output and the alert mails;
JSON output stays exact. The CLI runs as real subprocesses against Postgres and Redis."""

# ruff: noqa: F811  (the fixtures imported from test_cli are parameters here)

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from shared.config import Settings
from shared.money import price_display, tokens_display, usd_display, usd_display_exact, usd_exact
from tests.test_cli import Cli, cli, cli_env, new_email  # noqa: F401  (fixtures)
from worker import alerts, mailer


@pytest.mark.parametrize(
    ("value", "plain", "cost"),
    [
        ("22.93141505", "$22.93", "$22.93"),
        ("0.30084", "$0.30", "$0.3008"),
        ("0.01881375", "$0.02", "$0.01881"),
        ("0.00000735", "$0.00000735", "$0.00000735"),
        ("0.0000425", "$0.0000425", "$0.0000425"),
        ("0", "$0.00", "$0.00"),
        ("-3.456", "-$3.46", "-$3.46"),
        ("1234567.891", "$1,234,567.89", "$1,234,567.89"),
        ("0.999996", "$1.00", "$1.00"),
        ("0.0099999", "$0.01", "$0.01"),
        ("0.5", "$0.50", "$0.50"),
        ("-0.000001", "-$0.000001", "-$0.000001"),
        ("0.125", "$0.12", "$0.125"),  # half to even at the cent, as the dashboard
    ],
)
def test_usd_display_rule(value: str, plain: str, cost: str) -> None:
    assert usd_display(Decimal(value)) == plain
    assert usd_display(Decimal(value), cost=True) == cost


def test_exact_forms_and_tokens() -> None:
    assert usd_display(None) == "-" and price_display(None) == "-" and tokens_display(None) == "-"
    assert usd_exact(Decimal("10.045678901")) == "$10.045678901"
    assert usd_exact(Decimal("-2.30")) == "-$2.3"
    assert usd_display_exact(Decimal("10.045678901")) == "$10.05 (exactly $10.045678901)"
    assert usd_display_exact(Decimal("3")) == "$3.00"
    assert usd_display_exact(Decimal("1234.50")) == "$1,234.50"
    for value, shown in [("2.5", "$2.50"), ("0.075", "$0.075"), ("5.625", "$5.625"),
                         ("1250", "$1,250.00"), ("0.0000001", "$0.0000001"), ("0", "$0.00")]:  # fmt: skip
        assert price_display(Decimal(value)) == shown
    assert tokens_display(1234567) == "1,234,567" and tokens_display(0) == "0"


def test_dashboard_shows_the_same_rule() -> None:
    """The dashboard's money filter and this rule agree on every amount."""
    from dashboard.common import money_text

    rng = random.Random(16)
    values = [Decimal(rng.randrange(0, 10**12)).scaleb(-rng.randrange(0, 13)) for _ in range(3000)]
    values += [-v for v in values[:300]] + [Decimal("0.009999"), Decimal("0.0099995")]
    for value in values:
        assert money_text(value) == usd_display(value), value
        assert money_text(value, cost=True) == usd_display(value, cost=True), value


# --- alert mails --------------------------------------------------------------------------------


def test_alert_texts_follow_the_rule() -> None:
    assert alerts.daily_spend_text(Decimal("12.3456"), Decimal("10")) == (
        "Your Meterway spend today is $12.35, at or above your daily alert of $10.00."
    )
    assert alerts.low_balance_text(Decimal("0.3"), Decimal("1")) == (
        "Your Meterway balance is $0.30, below your low-balance alert of $1.00."
    )
    # two amounts the rule shows alike are shown with every digit: never "$0.50 below $0.50"
    assert alerts.low_balance_text(Decimal("0.49995"), Decimal("0.5")) == (
        "Your Meterway balance is $0.49995, below your low-balance alert of $0.50."
    )
    assert alerts.provider_warn_text("openai", Decimal("1234.5678"), Decimal("1000")) == (
        "openai spend today is $1,234.57, at or above the warn threshold of $1,000.00."
    )
    assert alerts.auto_pause_reason(Decimal("0.00021"), Decimal("0.0002")) == (
        "auto: daily spend $0.00021 reached stop threshold $0.0002"
    )


def test_alert_mail_links_the_dashboard_page_when_configured() -> None:
    plain = Settings(_env_file=None)
    text = "Your Meterway balance is $0.30, below your low-balance alert of $1.00."
    message = mailer.build_message(plain, "user_low_balance", text, ["a@example.com"])
    assert message.get_content().strip() == text
    linked = Settings(_env_file=None, dashboard_url="https://dash.example.com/")
    message = mailer.build_message(linked, "user_low_balance", text, ["a@example.com"])
    assert message.get_content().strip() == f"{text}\n\nDashboard: https://dash.example.com/billing"
    message = mailer.build_message(linked, "provider_auto_paused", "x", ["ops@example.com"])
    assert (
        message.get_content()
        .strip()
        .endswith("Dashboard: https://dash.example.com/admin/providers")
    )


# --- the CLI's text output (JSON stays exact) ---------------------------------------------------


async def test_cli_text_output_uses_the_rule_and_json_stays_exact(cli: Cli) -> None:
    email = new_email()
    await cli.ok("user", "create", email)
    r = await cli.ok("credits", "add", email, "1234.345678901")
    assert r.out.strip() == f"{email}: balance $1,234.35 (exactly $1234.345678901)"
    r = await cli.ok("credits", "add", email, "-234.345678901")
    assert r.out.strip() == f"{email}: balance $1,000.00"

    r = await cli.ok("user", "set", email, "--daily-alert-usd", "2.5", "--low-balance-usd", "0.125")
    assert "daily_alert_usd=$2.50" in r.out and "low_balance_usd=$0.12 (exactly $0.125)" in r.out

    r = await cli.ok(
        "key", "create", email, "--name", "agent", "--budget-usd", "12.5",
        "--budget-period", "week", "--tpm", "250000",
    )  # fmt: skip
    assert "budget $12.50 per week" in r.out and "tpm 250,000" in r.out
    r = await cli.ok("key", "create", email, "--name", "batch", "--budget-usd", "0.0005")
    assert "budget $0.0005 in total" in r.out or "budget $0.0005 per month" in r.out

    table = (await cli.ok("key", "list", email)).out
    assert "$12.50/week" in table and "250,000" in table and "$0.00" in table
    listed = (await cli.ok("key", "list", email, "--json")).json()
    assert isinstance(listed, list)
    assert sorted(k["budget_usd"] for k in listed) == ["0.0005", "12.5"]  # exact in JSON
    assert {k["tpm"] for k in listed} == {250000, None}


async def test_cli_code_list_shows_amounts_by_the_rule(cli: Cli) -> None:
    made = (await cli.ok("code", "create", "1234.5", "--note", "display-rule")).out.split()
    assert len(made) == 1
    table = (await cli.ok("code", "list")).out
    line = next(line for line in table.splitlines() if "display-rule" in line)
    assert "$1,234.50" in line
    listed = (await cli.ok("code", "list", "--json")).json()
    assert isinstance(listed, list)
    assert any(c["amount_usd"] == "1234.5" and c["note"] == "display-rule" for c in listed)
