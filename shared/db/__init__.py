"""Postgres access: the pool, migrations, and queries grouped by table."""
