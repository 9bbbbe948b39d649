"""Exact money: Decimal in code and Postgres, integer nano-dollars in Redis.

Redis keeps a *view* of balances and holds as integers of 1e-9 USD so that Lua
scripts can compare them exactly (doubles are exact up to 2**53, that is about
nine million dollars per user). Postgres keeps the exact value; conversions to
units round in the conservative direction for the caller.
"""

from __future__ import annotations

import re
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    localcontext,
)

UNITS_PER_USD = 1_000_000_000
_UNIT = Decimal(1).scaleb(-9)

# Money arithmetic never rounds: 100 significant digits is far beyond any sum of
# catalog prices, token counts and multipliers, and anything that would still
# need rounding raises instead of losing a digit.
EXACT = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact, Rounded])


def exact():
    """`with exact(): ...` runs Decimal arithmetic that raises rather than rounds."""
    return localcontext(EXACT)


def to_decimal(value: object) -> Decimal:
    """Parse a JSON number, string or int as an exact Decimal (never via float)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not an amount")
    if isinstance(value, int | str):
        result = Decimal(value)
    elif isinstance(value, float):
        # JSON numbers parsed by a float-happy parser: take their shortest repr.
        result = Decimal(repr(value))
    else:
        raise TypeError(f"not an amount: {value!r}")
    if not result.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return result


def units_floor(amount: Decimal) -> int:
    """USD -> integer units, rounded down (for balances: never overstate them)."""
    numerator, denominator = amount.as_integer_ratio()  # exact, whatever the precision
    return numerator * UNITS_PER_USD // denominator


def units_ceil(amount: Decimal) -> int:
    """USD -> integer units, rounded up (for holds: never understate them)."""
    numerator, denominator = amount.as_integer_ratio()
    return -(-numerator * UNITS_PER_USD // denominator)


def units_to_usd(units: int) -> Decimal:
    return Decimal(units).scaleb(-9)


def usd_str(amount: Decimal) -> str:
    """A decimal string without exponent, trailing zeros trimmed (`"0.0000425"`)."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def usd_places(amount: Decimal, *, up: bool, places: int = 4) -> str:
    """A rounded amount for a message: `up` for what is needed, down for what
    there is, so a message never says a request fits when it did not."""
    step = Decimal(1).scaleb(-places)
    return format(amount.quantize(step, rounding=ROUND_CEILING if up else ROUND_FLOOR), "f")


# --- amounts typed by people (CLI and dashboard): one parser for both -------------------

_PLAIN_AMOUNT = re.compile(r"-?[0-9]+(?:\.[0-9]{1,12})?")
_PLAIN_MULTIPLIER = re.compile(r"[0-9]+(?:\.[0-9]{1,6})?")
MAX_AMOUNT = Decimal(1_000_000_000)  # absolute value of one amount, exclusive
MAX_MULTIPLIER = Decimal(1000)


class AmountError(ValueError):
    """An amount or multiplier that does not parse; the message is one line for people."""


def parse_amount(text: str, what: str = "amount", *, negative: bool = True) -> Decimal:
    """A plain decimal (`-?digits[.digits]`, at most 12 digits after the point),
    absolute value below 1e9. No exponents, no signs but a leading minus, no
    separators: what you see is exactly what is credited."""
    text = text.strip()
    if not _PLAIN_AMOUNT.fullmatch(text):
        raise AmountError(
            f"{what} must be a plain decimal such as 25 or 0.50"
            f" (at most 12 digits after the point), got {text[:40]!r}"
        )
    value = Decimal(text)
    if abs(value) >= MAX_AMOUNT:
        raise AmountError(f"{what} must be below 1000000000 in absolute value")
    if value < 0 and not negative:
        raise AmountError(f"{what} must not be negative")
    return value


def parse_multiplier(text: str, what: str = "rate multiplier") -> Decimal:
    """A plain decimal in (0, 1000] with at most 6 digits after the point."""
    text = text.strip()
    if not _PLAIN_MULTIPLIER.fullmatch(text):
        raise AmountError(
            f"{what} must be a plain decimal such as 1 or 1.25"
            f" (at most 6 digits after the point), got {text[:40]!r}"
        )
    value = Decimal(text)
    if not 0 < value <= MAX_MULTIPLIER:
        raise AmountError(f"{what} must be above 0 and at most 1000")
    return value


# --- the range of a balance ------------------------------------------------------------------

# A user's balance stays below this in absolute value (exclusive), whatever moves
# it: the Redis view keeps balances as integer nano-USD changed with HINCRBY, and
# every change to Postgres is checked against this bound first.
MAX_BALANCE = Decimal(1_000_000_000)


class BalanceOutOfRange(AmountError):
    """A balance change refused because the balance would reach MAX_BALANCE in
    absolute value; nothing was changed. The message is one line for people."""


def add_exact(a: Decimal, b: Decimal) -> Decimal:
    """a + b without rounding (raises rather than lose a digit)."""
    with exact():
        return a + b


# --- one display rule for people (dashboard, /docs, CLI text, alert mails) -------------------
# JSON, CSV and the dashboard's hover keep the exact value (`usd_str`); what people read
# follows this rule: a `$` prefix, thousands separators, 2 decimals for amounts of a cent
# or more; a cost under a dollar, and any amount under a cent, with 4 significant digits
# (`$0.3008`, `$0.01881`, `$0.00000735`), so a sub-cent amount never reads `$0.00`.

_CENT = Decimal("0.01")


def _significant(magnitude: Decimal, digits: int = 4) -> str:
    """0 < magnitude < 1 with `digits` significant digits, trailing zeros trimmed
    down to 2 decimals (`0.3008`, `0.50`, `0.00000735`)."""
    places = max(2, digits - magnitude.adjusted() - 1)
    text = format(magnitude.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


def usd_display(amount: Decimal | int | str | None, *, cost: bool = False) -> str:
    """The display rule: `$1,234.57` (balances, totals, thresholds), a `cost` under
    a dollar and any amount under a cent with 4 significant digits; `-` for None."""
    if amount is None:
        return "-"
    value = to_decimal(amount)
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if 0 < magnitude < (1 if cost else _CENT):
        text = _significant(magnitude)
        if text not in ("1.00", "0.01"):  # rounding did not reach the next rule's range
            return f"{sign}${text}"
    shown = magnitude.quantize(_CENT, rounding=ROUND_HALF_EVEN)
    return f"{sign if shown else ''}${shown:,.2f}"


def usd_exact(amount: Decimal | int | str) -> str:
    """Every digit, for text a person may copy (`$10.045678901`); no separators."""
    value = to_decimal(amount)
    text = usd_str(abs(value))
    return f"{'-' if value < 0 else ''}${text}"


def usd_display_exact(amount: Decimal | int | str) -> str:
    """`usd_display`, followed by the exact value where the display rounded it:
    `$10.05 (exactly $10.045678901)`; for one-off confirmations in the CLI."""
    shown = usd_display(amount)
    exact_text = usd_exact(amount)
    if shown.replace(",", "") in (exact_text, exact_text + "0", exact_text + ".00"):
        return shown
    return f"{shown} (exactly {exact_text})"


def price_display(amount: Decimal | int | str | None) -> str:
    """A unit price (per million tokens, per call): exact, never rounded, at least
    2 decimals, thousands separated (`$2.50`, `$0.075`, `$5.625`, `$1,250.00`)."""
    if amount is None:
        return "-"
    value = to_decimal(amount)
    text = usd_str(abs(value))
    whole, _, frac = text.partition(".")
    return f"{'-' if value < 0 else ''}${int(whole):,}.{frac.ljust(2, '0')}"


def tokens_display(count: int | None) -> str:
    """Token counts with thousands separators (`1,234,567`); `-` for None."""
    return "-" if count is None else f"{int(count):,}"
