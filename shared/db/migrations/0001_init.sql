-- Meterway schema, version 1. Money is NUMERIC: exact, never float.

CREATE TABLE users (
    id               BIGSERIAL PRIMARY KEY,
    email            TEXT NOT NULL UNIQUE,
    password_hash    TEXT,
    is_admin         BOOLEAN NOT NULL DEFAULT FALSE,
    disabled         BOOLEAN NOT NULL DEFAULT FALSE,
    rate_multiplier  NUMERIC NOT NULL DEFAULT 1 CHECK (rate_multiplier >= 0),
    balance_usd      NUMERIC NOT NULL DEFAULT 0,
    -- bumped on every balance change, so that Redis keeps only the newest view
    balance_version  BIGINT NOT NULL DEFAULT 0,
    daily_alert_usd  NUMERIC,
    low_balance_usd  NUMERIC,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL DEFAULT '',
    prefix        TEXT NOT NULL,
    key_hash      BYTEA NOT NULL UNIQUE,
    rpm_limit     INTEGER,
    tpm_limit     INTEGER,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE providers (
    name          TEXT PRIMARY KEY,
    paused        BOOLEAN NOT NULL DEFAULT FALSE,
    paused_reason TEXT,
    paused_at     TIMESTAMPTZ,
    warn_usd      NUMERIC,
    stop_usd      NUMERIC,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO providers (name) VALUES ('openai'), ('anthropic');

CREATE TABLE provider_keys (
    id          BIGSERIAL PRIMARY KEY,
    provider    TEXT NOT NULL REFERENCES providers(name),
    name        TEXT NOT NULL DEFAULT '',
    prefix      TEXT NOT NULL,
    secret_enc  BYTEA NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    status_reason TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE usage_records (
    id                  BIGSERIAL PRIMARY KEY,
    request_id          TEXT NOT NULL UNIQUE,
    user_id             BIGINT NOT NULL REFERENCES users(id),
    api_key_id          BIGINT REFERENCES api_keys(id) ON DELETE SET NULL,
    provider_key_id     BIGINT REFERENCES provider_keys(id) ON DELETE SET NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    endpoint            TEXT NOT NULL,
    stream              BOOLEAN NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cache_read_tokens   BIGINT NOT NULL,
    cache_write_tokens  BIGINT NOT NULL,
    cache_write_1h_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd            NUMERIC NOT NULL,
    estimated           BOOLEAN NOT NULL DEFAULT FALSE,
    outcome             TEXT NOT NULL DEFAULT 'completed',
    status              TEXT NOT NULL DEFAULT 'settled',
    upstream_request_id TEXT,
    created_at          TIMESTAMPTZ NOT NULL,
    settled_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX usage_records_user_created ON usage_records (user_id, created_at DESC, id DESC);

-- Every balance change, signed: top-ups positive, charges negative.
CREATE TABLE ledger (
    id             BIGSERIAL PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users(id),
    kind           TEXT NOT NULL CHECK (kind IN ('topup', 'charge', 'adjustment')),
    amount_usd     NUMERIC NOT NULL,
    balance_after  NUMERIC NOT NULL,
    request_id     TEXT UNIQUE,
    note           TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_user ON ledger (user_id, id);
