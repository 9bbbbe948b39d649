"""The `meterway` command: argument parsing and dispatch. Work lives elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from meterway import provider_parsers
from meterway.context import CommandError, Context, open_context
from shared.config import Settings, get_settings
from shared.logs import configure_logging, use_fast_event_loop
from shared.passwords import MIN_PASSWORD

_AMOUNT_HELP = (
    "USD as a plain decimal such as 25 or -0.5 (at most 12 digits after the point,"
    " below 1000000000 in absolute value); negative removes credit"
)
_THRESHOLD_HELP = "USD, a plain non-negative decimal (at most 12 digits after the point)"
_MULTIPLIER_HELP = "a plain decimal above 0 and at most 1000 (at most 6 digits after the point)"


def _key_parsers(sub: argparse._SubParsersAction) -> None:
    """`meterway key create|set|list|revoke` (CONTRACT.md sections 1 and 6)."""
    key = sub.add_parser("key", help="proxy API keys").add_subparsers(dest="action", required=True)
    kc = key.add_parser(
        "create",
        help="create a proxy API key (printed once, alone on the last line)",
        description="Create a proxy API key for the user EMAIL, optionally with per-minute\n"
        "limits, a budget per UTC period, a models list and an expiry. The key is\n"
        "printed once, alone on the last line of stdout; only its hash is stored.",
        epilog="example:\n  meterway key create alice@example.com --name ci --budget-usd 20"
        " --budget-period week --models gpt-4o,gpt-4o-mini --expires-at 2026-12-31T23:59:59Z",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kc.add_argument("email")
    kc.add_argument("--name", default="", help="a name to tell keys apart")
    kc.add_argument("--rpm", type=int, help="requests per minute, a positive integer")
    kc.add_argument("--tpm", type=int, help="tokens per minute, a positive integer")
    _key_control_flags(kc, clearable=False)
    ks = key.add_parser(
        "set",
        help="change a key's budget, models, expiry or per-minute limits",
        description="Change the controls of one key; only the options given change.\n"
        "Every proxy applies the change within a few seconds.",
        epilog="examples:\n"
        "  meterway key set 12 --budget-usd 5 --budget-period day\n"
        "  meterway key set 12 --budget-usd none --models all --expires-at never --rpm none",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ks.add_argument("key_or_id", metavar="KEY_ID", help="the id from `key list` (or the full key)")
    ks.add_argument("--rpm", help="requests per minute, a positive integer; 'none' removes it")
    ks.add_argument("--tpm", help="tokens per minute, a positive integer; 'none' removes it")
    _key_control_flags(ks, clearable=True)
    kl = key.add_parser(
        "list",
        help="the user's keys with their limits and spend this period",
        description="List the user's keys: id, name, prefix, created, last used, revoked,\n"
        "budget and period, spend in the budget's period (this calendar month without a\n"
        "budget), models, expiry, rpm and tpm. Never a key itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kl.add_argument("email")
    kl.add_argument(
        "--json", action="store_true", help="a JSON list of objects, amounts as strings"
    )
    key.add_parser("revoke", help="revoke a key, given the full key or its id").add_argument(
        "key_or_id"
    )


def _key_control_flags(p: argparse.ArgumentParser, *, clearable: bool) -> None:
    def clear(word: str, does: str = "removes it") -> str:
        return f"; '{word}' {does}" if clearable else ""

    p.add_argument(
        "--budget-usd",
        metavar="X",
        help="the most the key may spend per budget period, USD as a plain decimal"
        f" (at most 12 digits after the point){clear('none')}",
    )
    p.add_argument(
        "--budget-period",
        choices=["day", "week", "month", "total"],
        help="UTC calendar period the budget counts in: day, week (ISO, from Monday"
        " 00:00 UTC), month, or total (never resets); default month; needs a budget",
    )
    p.add_argument(
        "--models",
        metavar="ID,ID,...",
        help="catalog model ids the key may use, comma-separated; others get 403"
        f" (default: every model){clear('all', 'allows every model again')}",
    )
    p.add_argument(
        "--expires-at",
        metavar="ISO-8601",
        help="from this moment the key gets 401: ISO 8601 with Z or an offset, such as"
        f" 2026-12-31T23:59:59Z (default: never){clear('never')}",
    )


def _key_commands(
    a: argparse.Namespace,
) -> dict[tuple[str, str], Callable[[Context], Awaitable[None]]]:
    from meterway.commands import accounts, keys

    controls = {
        name: getattr(a, name, None)
        for name in ("budget_usd", "budget_period", "models", "expires_at")
    }
    return {
        ("key", "create"): lambda c: keys.key_create(c, a.email, a.name, a.rpm, a.tpm, **controls),
        ("key", "set"): lambda c: keys.key_set(c, a.key_or_id, rpm=a.rpm, tpm=a.tpm, **controls),
        ("key", "list"): lambda c: keys.key_list(c, a.email, a.json),
        ("key", "revoke"): lambda c: accounts.key_revoke(c, a.key_or_id),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meterway", description="Metered LLM API gateway")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", help="create or upgrade the database schema")
    serve = sub.add_parser("serve", help="run one proxy instance")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--workers",
        type=int,
        help="serving processes on the one port (default PROXY_WORKERS, else 1)",
    )
    sub.add_parser("worker", help="run one metering worker")
    dash = sub.add_parser("dashboard", help="run the dashboard")
    dash.add_argument("--port", type=int)
    dev = sub.add_parser("dev", help="migrate, then proxy + worker (+ simulator) for local use")
    dev.add_argument("--simulator-port", type=int, default=9100)
    mock = sub.add_parser("mock-upstream", help="run the OpenAI/Anthropic upstream simulator")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9100)
    mock.add_argument("--chunk-delay-ms", type=float, default=0.0)
    sub.add_parser(
        "reconcile",
        help="check ledger, usage, money in (codes, Stripe) and Redis balances; non-zero on drift",
    )
    alerts = sub.add_parser("alerts", help="the alerts log").add_subparsers(
        dest="action", required=True
    )
    al = alerts.add_parser("list")
    al.add_argument("--days", type=int, default=7)
    al.add_argument("--json", action="store_true")
    audit = sub.add_parser("audit", help="the audit log of operator actions").add_subparsers(
        dest="action", required=True
    )
    aul = audit.add_parser(
        "list", help="who changed what and when (CLI and dashboard), newest first"
    )
    aul.add_argument("--days", type=int, default=7, help="how many days back (default 7)")
    aul.add_argument(
        "--json", action="store_true", help="objects: at, actor, action, subject, before, after"
    )

    user = sub.add_parser("user", help="create or change users").add_subparsers(
        dest="action", required=True
    )
    create = user.add_parser("create")
    create.add_argument("email")
    create.add_argument("--admin", action="store_true")
    create.add_argument(
        "--password", help=f"dashboard password, at least {MIN_PASSWORD} characters"
    )
    create.add_argument("--rate-multiplier", help=_MULTIPLIER_HELP)
    uset = user.add_parser("set")
    uset.add_argument("email")
    uset.add_argument("--rate-multiplier", help=_MULTIPLIER_HELP)
    uset.add_argument("--daily-alert-usd", help=_THRESHOLD_HELP)
    uset.add_argument("--low-balance-usd", help=_THRESHOLD_HELP)
    uset.add_argument("--disabled", choices=["true", "false"])

    credits = sub.add_parser("credits", help="add or remove credit").add_subparsers(
        dest="action", required=True
    )
    add = credits.add_parser("add")
    add.add_argument("email")
    add.add_argument("amount_usd", metavar="AMOUNT_USD", help=_AMOUNT_HELP)
    add.add_argument("--note")

    _key_parsers(sub)

    pkey = sub.add_parser("provider-key", help="upstream provider keys").add_subparsers(
        dest="action", required=True
    )
    pa = pkey.add_parser(
        "add",
        help="store an upstream key, encrypted (secret from stdin or the environment)",
        description="Store an upstream provider key, encrypted at rest. Give the secret\n"
        "exactly once; prefer '-' or --secret-env: then it is not in `ps` or shell history.",
        epilog="examples:\n"
        "  meterway provider-key add openai - < key.txt\n"
        '  printf %s "$KEY" | meterway provider-key add openai -\n'
        "  OPENAI_KEY=... meterway provider-key add openai --secret-env OPENAI_KEY",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pa.add_argument("provider", help="a provider's name: openai, anthropic, gemini or one added")
    pa.add_argument(
        "secret",
        nargs="?",
        metavar="SECRET|-",
        help="'-' reads the secret from stdin (one trailing newline is dropped);"
        " a literal SECRET still works but shows in `ps` and shell history",
    )
    pa.add_argument(
        "--secret-env",
        metavar="VAR",
        help="read the secret from the environment variable VAR",
    )
    pa.add_argument("--name", default="")
    pl = pkey.add_parser("list")
    pl.add_argument("provider", nargs="?")
    pl.add_argument("--json", action="store_true")
    for action in ("disable", "enable", "remove"):
        pkey.add_parser(action).add_argument("id", type=int)

    prov = sub.add_parser(
        "provider", help="add, remove, list; pause, resume, thresholds"
    ).add_subparsers(dest="action", required=True)
    provider_parsers.add_config_parsers(prov)
    prov.add_parser("pause").add_argument("provider")
    prov.add_parser("resume").add_argument("provider")
    ps = prov.add_parser("set")
    ps.add_argument("provider")
    ps.add_argument("--warn-usd", help=_THRESHOLD_HELP)
    ps.add_argument("--stop-usd", help=_THRESHOLD_HELP)
    prov.add_parser("list").add_argument("--json", action="store_true")

    code = sub.add_parser("code", help="redemption codes (prepaid credit)").add_subparsers(
        dest="action", required=True
    )
    cc = code.add_parser(
        "create",
        help="make codes and print them, one a line (shown once; only a hash is stored)",
        description="Make N redemption codes worth AMOUNT_USD each and print them, one a\n"
        "line, and nothing else on stdout. They are shown only now: only a\n"
        "hash is stored. Users redeem them with POST /v1/account/redeem or the dashboard.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cc.add_argument(
        "amount_usd", metavar="AMOUNT_USD", help="USD per code, a plain decimal above 0"
    )
    cc.add_argument("--count", type=int, default=1, help="how many codes (default 1)")
    cc.add_argument(
        "--expires-at", help="ISO 8601 with Z or an offset, in the future (default: never)"
    )
    cc.add_argument("--note", help="a note kept with the codes (e.g. the customer or campaign)")
    code.add_parser(
        "list", help="id, amount, state (open, redeemed, expired), who and when; never a code"
    ).add_argument("--json", action="store_true")
    return p


def _admin_command(a: argparse.Namespace) -> Callable[[Context], Awaitable[None]]:
    from meterway.commands import (
        accounts,
        alerts,
        audit,
        codes,
        provider_config,
        providers,
        reconcile,
    )

    table: dict[tuple[str, str | None], Callable[[Context], Awaitable[None]]] = {
        ("user", "create"): lambda c: accounts.user_create(
            c, a.email, a.admin, a.password, a.rate_multiplier
        ),
        ("user", "set"): lambda c: accounts.user_set(
            c,
            a.email,
            rate_multiplier=a.rate_multiplier,
            daily_alert_usd=a.daily_alert_usd,
            low_balance_usd=a.low_balance_usd,
            disabled=a.disabled,
        ),
        ("credits", "add"): lambda c: accounts.credits_add(c, a.email, a.amount_usd, a.note),
        **_key_commands(a),
        ("provider-key", "add"): lambda c: providers.key_add(
            c, a.provider, a.secret, a.secret_env, a.name
        ),
        ("provider-key", "list"): lambda c: providers.key_list(c, a.provider, a.json),
        ("provider-key", "disable"): lambda c: providers.key_set_status(c, a.id, "disabled"),
        ("provider-key", "enable"): lambda c: providers.key_set_status(c, a.id, "active"),
        ("provider-key", "remove"): lambda c: providers.key_remove(c, a.id),
        ("provider", "pause"): lambda c: providers.pause(c, a.provider, True),
        ("provider", "resume"): lambda c: providers.pause(c, a.provider, False),
        ("provider", "set"): lambda c: providers.set_thresholds(
            c, a.provider, a.warn_usd, a.stop_usd
        ),
        ("provider", "list"): lambda c: providers.provider_list(c, a.json),
        ("provider", "add"): lambda c: provider_config.add(
            c, a.name, a.kind, a.base_url, a.auth_header, a.header
        ),
        ("provider", "remove"): lambda c: provider_config.remove(c, a.name),
        ("reconcile", None): reconcile.run,
        ("alerts", "list"): lambda c: alerts.alerts_list(c, a.days, a.json),
        ("audit", "list"): lambda c: audit.audit_list(c, a.days, a.json),
        ("code", "create"): lambda c: codes.code_create(
            c, a.amount_usd, a.count, a.expires_at, a.note
        ),
        ("code", "list"): lambda c: codes.code_list(c, a.json),
    }
    return table[(a.command, getattr(a, "action", None))]


async def _run_admin(settings: Settings, command: Callable[[Context], Awaitable[None]]) -> None:
    async with open_context(settings) as ctx:
        await command(ctx)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        settings = get_settings()
        return _dispatch(args, settings)
    except CommandError as exc:
        print(f"meterway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"meterway: {message}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "migrate":
        from shared.db.migrate import migrate

        applied = asyncio.run(migrate(settings.database_url))
        print("applied: " + ", ".join(applied) if applied else "schema is up to date")
        return 0
    if args.command == "serve":
        host, port = args.host or settings.proxy_host, args.port or settings.proxy_port
        workers = args.workers if args.workers is not None else settings.proxy_workers
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        if workers > 1:
            from meterway.commands.serve import serve_workers

            return serve_workers(settings, host, port, workers)
        from proxy.app import run

        use_fast_event_loop()
        run(settings, host, port)
        return 0
    if args.command == "worker":
        from worker.main import run as run_worker

        use_fast_event_loop()
        run_worker(settings)
        return 0
    if args.command == "dashboard":
        from dashboard.app import run as run_dashboard

        use_fast_event_loop()
        run_dashboard(settings, settings.proxy_host, args.port or settings.dashboard_port)
        return 0
    if args.command == "dev":
        from meterway.dev import run_dev

        asyncio.run(run_dev(settings, simulator_port=args.simulator_port))
        return 0
    if args.command == "mock-upstream":
        from simulator.app import run as run_simulator

        print(f"upstream simulator on http://{args.host}:{args.port}", flush=True)
        run_simulator(args.host, args.port, chunk_delay_ms=args.chunk_delay_ms)
        return 0
    asyncio.run(_run_admin(settings, _admin_command(args)))
    return 0
