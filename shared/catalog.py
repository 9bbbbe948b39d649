"""The model catalog: load, validate, look up. Numbers are exact decimals."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Any provider's name (contract section 5): a built-in or one added with
# `meterway provider add`; a model of a provider not registered is not served.
Provider = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,31}$")]
log = structlog.get_logger("meterway.catalog")


def _exact_number(value: object) -> object:
    # json.load(parse_float=Decimal) already gives Decimals; guard floats anyway.
    return Decimal(repr(value)) if isinstance(value, float) else value


_PRICE_FIELDS = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
)


class TierPrices(BaseModel):
    """Prices that replace some of a price set's: a long-context tier
    (`above_input_tokens`) or a service tier. A price left out is the base's."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    input_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_1h_per_mtok: Decimal | None = Field(default=None, ge=0)

    @field_validator(*_PRICE_FIELDS, mode="before")
    @classmethod
    def _exact(cls, value: object) -> object:
        return _exact_number(value)


class LongContextTier(TierPrices):
    above_input_tokens: int = Field(ge=0)


class ServiceTier(TierPrices):
    tiers: tuple[LongContextTier, ...] = ()


@dataclass(frozen=True)
class Prices:
    """The prices that apply to one request, per million tokens; a missing cache
    price is the input price of this set."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal

    @classmethod
    def of(cls, *chain: TierPrices | ModelPrice) -> Prices:
        """The prices of the first of `chain` (a tier, the service tier it is
        in, the model) that sets each; a cache price none of them sets is the
        input price of this set."""

        def pick(name: str) -> Decimal | None:
            for prices in chain:
                value = getattr(prices, f"{name}_per_mtok")
                if value is not None:
                    return value
            return None

        def cache(name: str) -> Decimal:
            value = pick(name)
            return input_price if value is None else value

        input_price, output_price = pick("input"), pick("output")
        assert input_price is not None and output_price is not None  # the model has both
        return cls(
            input_price, output_price, cache("cache_read"), cache("cache_write"),
            cache("cache_write_1h"),
        )  # fmt: skip

    @property
    def dearest_input(self) -> Decimal:
        """The highest price an input token can have (what holds assume)."""
        return max(self.input, self.cache_read, self.cache_write, self.cache_write_1h)

    @cached_property
    def whole(self) -> WholePrices:
        """The same prices as integers over one denominator (exact), for the
        proxy's integer arithmetic."""
        values = (
            self.input, self.output, self.cache_read, self.cache_write, self.cache_write_1h,
            self.dearest_input,
        )  # fmt: skip
        ratios = [value.as_integer_ratio() for value in values]
        scale = math.lcm(*(den for _, den in ratios))
        return WholePrices(scale, *(num * (scale // den) for num, den in ratios))


@dataclass(frozen=True, slots=True)
class WholePrices:
    """Prices per million tokens times `scale`, all integers."""

    scale: int
    input: int
    output: int
    cache_read: int
    cache_write: int
    cache_write_1h: int
    dearest_input: int


def _tier_reached(tiers: tuple[LongContextTier, ...], input_tokens: int) -> LongContextTier | None:
    """The highest tier whose threshold the whole input is strictly above."""
    reached = [t for t in tiers if input_tokens > t.above_input_tokens]
    return max(reached, key=lambda t: t.above_input_tokens) if reached else None


class ModelPrice(BaseModel):
    """One catalog entry. A missing cache price means the input price."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider: Provider
    # `embedding`: served by the embeddings endpoint only (and the only kind it
    # serves); its output price may be left out (embeddings bill input only)
    kind: Literal["chat", "embedding"] = "chat"
    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(ge=0)
    cache_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_1h_per_mtok: Decimal | None = Field(default=None, ge=0)
    multiplier: Decimal = Field(default=Decimal(1), ge=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    # the most input tokens the model takes: the input bound of a request whose
    # body cannot bound it (server-side context, documents), and a cap on any other
    context_window: int | None = Field(default=None, gt=0, lt=2**40)
    # the most tokens one image can count, by the provider's published rules
    max_tokens_per_image: int | None = Field(default=None, gt=0, lt=2**31)
    # long-context tiers: the whole input above a threshold prices every token
    tiers: tuple[LongContextTier, ...] = ()
    # service tiers the provider reports (flex, priority, ...): their prices
    service_tiers: dict[str, ServiceTier] = Field(default_factory=dict)
    # USD per web search call (Anthropic server tool, OpenAI Responses tool)
    web_search_per_call: Decimal | None = Field(default=None, ge=0)
    # the most tool calls one request may make, where the request sets none
    max_tool_calls: int | None = Field(default=None, gt=0, lt=2**31)

    @field_validator(*_PRICE_FIELDS, "multiplier", "web_search_per_call", mode="before")
    @classmethod
    def _exact(cls, value: object) -> object:
        return _exact_number(value)

    @model_validator(mode="before")
    @classmethod
    def _embedding_output_price(cls, data: object) -> object:
        """An embedding model may omit its output price: it is 0."""
        if isinstance(data, dict) and data.get("kind") == "embedding":
            if data.get("output_per_mtok") is None:
                data = {**data, "output_per_mtok": Decimal(0)}
        return data

    @cached_property
    def base(self) -> Prices:
        return Prices.of(self)

    @cached_property
    def single_price_set(self) -> bool:
        """No tiers of either kind: every request is priced at `base`."""
        return not self.tiers and not self.service_tiers

    @cached_property
    def multiplier_ratio(self) -> tuple[int, int]:
        return self.multiplier.as_integer_ratio()

    @cached_property
    def web_search_ratio(self) -> tuple[int, int] | None:
        wpc = self.web_search_per_call
        return None if wpc is None else wpc.as_integer_ratio()

    @property
    def cache_read(self) -> Decimal:
        return self.base.cache_read

    @property
    def cache_write(self) -> Decimal:
        return self.base.cache_write

    @property
    def cache_write_1h(self) -> Decimal:
        return self.base.cache_write_1h

    @cached_property
    def dearest_input(self) -> Decimal:
        """The highest price an input token can have at base prices."""
        return self.base.dearest_input

    def prices(self, service_tier: str | None, input_tokens: int) -> Prices:
        """The prices of a request the provider served at `service_tier` (None,
        `default`, `standard`...: the model's own), whose whole input was
        `input_tokens`."""
        chosen = self.service_tiers.get(service_tier) if service_tier else None
        chain: tuple[TierPrices | ModelPrice, ...] = (self,) if chosen is None else (chosen, self)
        tier = _tier_reached(self.tiers if chosen is None else chosen.tiers, input_tokens)
        if tier is not None:
            chain = (tier, *chain)
        return self.base if len(chain) == 1 else Prices.of(*chain)

    def hold_prices(self, requested_tier: str | None, input_tokens: int) -> list[Prices]:
        """Every price set a request could be served at: the model's, and the
        requested service tier's (none asked, or `auto`: every listed one), at
        the long-context tier `input_tokens` reaches."""
        names: list[str | None] = [None]
        if requested_tier in (None, "auto"):
            names += list(self.service_tiers)
        elif requested_tier in self.service_tiers:
            names.append(requested_tier)
        return [self.prices(name, input_tokens) for name in names]


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    currency: Literal["USD"] = "USD"
    prices_as_of: str | None = None  # when the list prices were last checked
    prices_note: str | None = None
    models: dict[str, ModelPrice]

    def get(self, model: str) -> ModelPrice | None:
        return self.models.get(model)

    def for_provider(self, provider: str) -> dict[str, ModelPrice]:
        return {name: m for name, m in self.models.items() if m.provider == provider}


def load_catalog(path: Path | str) -> Catalog:
    """Read and validate the catalog; raises ValueError with the file name on error."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
        catalog = Catalog.model_validate(raw)
    except (OSError, ValueError) as exc:
        raise ValueError(f"model catalog {path}: {exc}") from exc
    known = set(ModelPrice.model_fields)
    for name, entry in raw.get("models", {}).items():
        unknown = sorted(set(entry) - known)
        if unknown:  # a typo here would silently fall back to the input price
            log.warning("catalog_unknown_fields", model=name, fields=unknown)
    return catalog
