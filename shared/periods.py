"""UTC calendar periods of API-key budgets (CONTRACT.md section 6).

`day` starts at 00:00 UTC, `week` on Monday 00:00 UTC (ISO week), `month` on
the 1st 00:00 UTC; `total` never resets (no start, no end). Pure functions;
naive datetimes are refused, aware ones in any offset are taken as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

PERIODS: tuple[str, ...] = ("day", "week", "month", "total")
DEFAULT_PERIOD = "month"


def _utc(at: datetime) -> datetime:
    if not isinstance(at, datetime):
        raise TypeError(f"not a datetime: {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("a naive datetime has no place in time; give it a time zone")
    return at.astimezone(UTC)


def _check(period: str) -> None:
    if period not in PERIODS:
        raise ValueError(f"unknown budget period {period!r}: day, week, month or total")


def period_start(period: str, at: datetime) -> datetime | None:
    """The first instant (UTC) of the period containing `at`; None for `total`."""
    _check(period)
    at = _utc(at)
    if period == "total":
        return None
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(period: str, at: datetime) -> datetime | None:
    """The first instant after the period containing `at` (the next start); None for `total`."""
    start = period_start(period, at)
    if start is None:
        return None
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def period_id(period: str, at: datetime) -> str:
    """A compact, stable name of the period containing `at`: `d20261201`,
    `w2026W49` (ISO year and week), `m202612`, `total`."""
    _check(period)
    at = _utc(at)
    if period == "day":
        return f"d{at:%Y%m%d}"
    if period == "week":
        year, week, _ = at.isocalendar()
        return f"w{year:04d}W{week:02d}"
    if period == "month":
        return f"m{at:%Y%m}"
    return "total"
