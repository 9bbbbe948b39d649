"""The password rule, the same for the CLI and the dashboard."""

from __future__ import annotations

MIN_PASSWORD = 10
MAX_PASSWORD = 1024


def password_problem(password: str) -> str | None:
    """What is wrong with a new password, as one sentence, or None."""
    if len(password) < MIN_PASSWORD:
        return f"The password needs at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"The password is too long (at most {MAX_PASSWORD} characters)."
    return None
