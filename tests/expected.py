"""Expected costs computed straight from the catalog file, independently of
`shared.pricing`, so that a pricing bug cannot hide behind itself."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path


def price_table(catalog_path: Path) -> dict[str, dict[str, Decimal]]:
    raw = json.loads(catalog_path.read_text(), parse_float=Decimal)
    return raw["models"]


def expected_cost(
    catalog_path: Path,
    model: str,
    *,
    uncached: int,
    output: int,
    cache_read: int = 0,
    cache_write_5m: int = 0,
    cache_write_1h: int = 0,
    rate: str = "1",
) -> Decimal:
    m = price_table(catalog_path)[model]
    inp = Decimal(m["input_per_mtok"])
    total = (
        uncached * inp
        + cache_read * Decimal(m.get("cache_read_per_mtok", inp))
        + cache_write_5m * Decimal(m.get("cache_write_per_mtok", inp))
        + cache_write_1h * Decimal(m.get("cache_write_1h_per_mtok", inp))
        + output * Decimal(m["output_per_mtok"])
    )
    return total / Decimal(1_000_000) * Decimal(rate) * Decimal(m.get("multiplier", 1))
