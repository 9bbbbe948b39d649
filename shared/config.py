"""Settings from the environment (and an optional `.env`), one object."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = "postgresql://localhost:5432/meterway"
    redis_url: str = "redis://localhost:6379/0"
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 8000
    dashboard_port: int = 8001
    # where people reach the dashboard and the proxy (links between /docs and the dashboard);
    # unset: the host of the request, on the other's port (shared/public_urls.py)
    dashboard_url: str | None = None
    # the proxies' /metrics the dashboard's System page reads error rates from (comma-separated)
    proxy_metrics_urls: str | None = None
    public_proxy_url: str | None = None
    upstream_openai_base_url: str = "https://api.openai.com/v1"
    upstream_anthropic_base_url: str = "https://api.anthropic.com/v1"
    upstream_gemini_base_url: str = "https://generativelanguage.googleapis.com"
    model_catalog: Path = REPO_ROOT / "model_catalog.json"
    meterway_secret_key: str | None = None
    max_request_bytes: int = 33_554_432
    smtp_url: str | None = None
    alert_from: str = "meterway@localhost"
    alert_operator_emails: str = ""
    # Section 9: alerts also POSTed here (may carry a secret, as Slack's do: never logged)
    alert_webhook_url: str | None = Field(default=None, repr=False)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # the worker's /metrics

    # Operational knobs beyond the contract (documented in the README).
    hold_ttl_seconds: int = Field(default=3600, ge=1)
    client_disconnect_policy: Literal["abort", "finish"] = "abort"
    finish_timeout_seconds: float = Field(default=120.0, gt=0)
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    settle_job_timeout: int = 20
    settle_batch_size: int = Field(default=500, ge=1)
    settle_claim_idle_seconds: float = Field(default=30.0, gt=0)
    settle_lanes: int = Field(default=2, ge=1, le=16)

    # Deployment and scale (contract section 8).
    proxy_workers: int = Field(default=1, ge=1, le=256)
    shutdown_drain_seconds: float = Field(default=5.0, ge=0)
    shutdown_grace_seconds: float = Field(default=60.0, ge=0)
    # REDIS_URL names one node of a Redis Cluster (docs/scaling.md); arq's own queue
    # then needs a plain Redis (ARQ_REDIS_URL; without a cluster it defaults to REDIS_URL)
    redis_cluster: bool = False
    arq_redis_url: str | None = None

    # Slow or huge clients (contract section 10).
    client_header_timeout_seconds: float = Field(default=10.0, gt=0)
    client_body_timeout_seconds: float = Field(default=60.0, gt=0)
    # a streaming client that reads nothing for this long is cut (its stream billed as a
    # disconnect): a stalled reader may not keep its hold and an upstream stream forever
    client_write_timeout_seconds: float = Field(default=60.0, gt=0)
    dashboard_session_max_hours: float = Field(default=12.0, gt=0)

    # Money in (contract section 7): Stripe Checkout top-ups. Secrets never show in a repr.
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"
    topup_min_usd: Decimal = Decimal(5)
    topup_max_usd: Decimal = Decimal(1000)

    @field_validator("meterway_secret_key")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("METERWAY_SECRET_KEY must be at least 32 characters")
        return value

    @model_validator(mode="after")
    def _cluster_settings(self) -> Settings:
        if self.redis_cluster:
            from urllib.parse import urlsplit

            db = urlsplit(self.redis_url).path.strip("/")
            if db not in ("", "0"):
                raise ValueError("with REDIS_CLUSTER=1, REDIS_URL must name database 0 (or none)")
            if not self.arq_redis_url:
                raise ValueError("with REDIS_CLUSTER=1, ARQ_REDIS_URL (a plain Redis) is required")
        return self

    @property
    def arq_url(self) -> str:
        """The Redis of arq's queue (the worker's periodic jobs)."""
        return self.arq_redis_url or self.redis_url

    @property
    def operator_emails(self) -> list[str]:
        return [a.strip() for a in self.alert_operator_emails.split(",") if a.strip()]

    def require_secret_key(self) -> str:
        if not self.meterway_secret_key:
            raise RuntimeError("METERWAY_SECRET_KEY is not set (at least 32 characters)")
        return self.meterway_secret_key


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
