"""The model catalog: load, validate, look up. Numbers are exact decimals."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

Provider = Literal["openai", "anthropic"]
log = structlog.get_logger("meterway.catalog")
PROVIDERS: tuple[Provider, ...] = ("openai", "anthropic")


class ModelPrice(BaseModel):
    """One catalog entry. A missing cache price means the input price."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider: Provider
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

    @field_validator(
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "cache_write_1h_per_mtok",
        "multiplier",
        mode="before",
    )
    @classmethod
    def _exact(cls, value: object) -> object:
        # json.load(parse_float=Decimal) already gives Decimals; guard floats anyway.
        return Decimal(repr(value)) if isinstance(value, float) else value

    @property
    def cache_read(self) -> Decimal:
        return self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok

    @property
    def cache_write(self) -> Decimal:
        if self.cache_write_per_mtok is None:
            return self.input_per_mtok
        return self.cache_write_per_mtok

    @property
    def cache_write_1h(self) -> Decimal:
        if self.cache_write_1h_per_mtok is None:
            return self.input_per_mtok
        return self.cache_write_1h_per_mtok

    @cached_property
    def dearest_input(self) -> Decimal:
        """The highest price an input token can have (what holds assume)."""
        return max(self.input_per_mtok, self.cache_write, self.cache_write_1h)


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    currency: Literal["USD"] = "USD"
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
