"""The rows of `/docs/pricing`: every price set of the catalog, as people read it.

Each price is the catalog's price times the model's multiplier (and, for the
"your price" columns, the caller's rate multiplier), shown exactly by the one
display rule for unit prices (`shared.money.price_display`). A price a set
leaves out is shown as what applies (the model's, or the input price for a
missing cache price), exactly as the bill computes it (`Prices.of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from shared.catalog import Catalog, LongContextTier, ModelPrice, Prices, ServiceTier
from shared.money import exact, price_display, tokens_display

_KINDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")


@dataclass(frozen=True)
class PriceRow:
    model: str
    provider: str
    label: str  # "" for the model's own prices, else the tier it is ("flex", "above 200,000")
    prices: dict[str, str]  # kind -> display string
    mine: dict[str, str] | None  # the same with the caller's rate multiplier


def _scaled(value: Decimal, *factors: Decimal) -> Decimal:
    with exact():
        for factor in factors:
            value *= factor
    return value


def _shown(m: ModelPrice, prices: Prices, rate: Decimal | None) -> tuple[dict, dict | None]:
    values = {kind: getattr(prices, kind) for kind in _KINDS}
    shown = {k: price_display(_scaled(v, m.multiplier)) for k, v in values.items()}
    if m.kind == "embedding":  # billed as input only
        shown = {**shown, "output": "-", "cache_read": "-", "cache_write": "-",
                 "cache_write_1h": "-"}  # fmt: skip
    mine = None
    if rate is not None:
        mine = {k: price_display(_scaled(v, m.multiplier, rate)) for k, v in values.items()}
    return shown, mine


def _above(tier: LongContextTier) -> str:
    return f"above {tokens_display(tier.above_input_tokens)} input tokens"


def _row(name: str, m: ModelPrice, label: str, prices: Prices, rate: Decimal | None) -> PriceRow:
    shown, mine = _shown(m, prices, rate)
    return PriceRow(name, m.provider, label, shown, mine)


def _service_rows(name: str, m: ModelPrice, tier_name: str, st: ServiceTier,
                  rate: Decimal | None) -> list[PriceRow]:  # fmt: skip
    rows = [_row(name, m, tier_name, Prices.of(st, m), rate)]
    for lt in sorted(st.tiers, key=lambda t: t.above_input_tokens):
        rows.append(_row(name, m, f"{tier_name}, {_above(lt)}", Prices.of(lt, st, m), rate))
    return rows


def price_tables(catalog: Catalog, rate: Decimal | None) -> dict[str, list]:
    """`models` (each model's own prices), `long_context` (its tiers),
    `service_tiers` (flex, priority, ... and their own tiers) and `per_call`
    (web search), each a list of rows in provider, model order."""
    ordered = sorted(catalog.models.items(), key=lambda item: (item[1].provider, item[0]))
    models, long_context, service, per_call = [], [], [], []
    for name, m in ordered:
        models.append(_row(name, m, "", m.base, rate))
        for lt in sorted(m.tiers, key=lambda t: t.above_input_tokens):
            long_context.append(_row(name, m, _above(lt), Prices.of(lt, m), rate))
        for tier_name, st in m.service_tiers.items():
            service.extend(_service_rows(name, m, tier_name, st, rate))
        if m.web_search_per_call is not None:
            price = m.web_search_per_call
            per_call.append({
                "model": name, "provider": m.provider,
                "web_search": price_display(_scaled(price, m.multiplier)),
                "mine": None if rate is None else price_display(_scaled(price, m.multiplier, rate)),
            })  # fmt: skip
    return {"models": models, "long_context": long_context, "service_tiers": service,
            "per_call": per_call}  # fmt: skip
