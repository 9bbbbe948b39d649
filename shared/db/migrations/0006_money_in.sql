-- Money in (contract section 7): redemption codes, Stripe top-ups and refunds.
-- Every credit or debit they make is a ledger row naming its source in
-- `external_id` ('code:<id>', 'stripe_session:<cs_...>', 'stripe_refund:<re_...>'),
-- unique, so that no source is credited twice however often it arrives.

ALTER TABLE ledger ADD COLUMN external_id TEXT;
ALTER TABLE ledger ADD CONSTRAINT ledger_external_id_key UNIQUE (external_id);
ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check
    CHECK (kind IN ('topup', 'charge', 'adjustment', 'redemption', 'refund'));
CREATE INDEX ledger_user_created ON ledger (user_id, created_at, id);

-- Only a SHA-256 of each code is kept (codes carry 192 random bits).
CREATE TABLE redemption_codes (
    id           BIGSERIAL PRIMARY KEY,
    code_hash    BYTEA NOT NULL UNIQUE,
    amount_usd   NUMERIC NOT NULL CHECK (amount_usd > 0),
    expires_at   TIMESTAMPTZ,
    note         TEXT,
    created_by   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    redeemed_by  BIGINT REFERENCES users(id),
    redeemed_at  TIMESTAMPTZ,
    CHECK ((redeemed_by IS NULL) = (redeemed_at IS NULL))
);

-- Checkout Sessions credited, by Stripe's id; refunds find their user by the
-- session's payment intent.
CREATE TABLE stripe_payments (
    session_id      TEXT PRIMARY KEY,
    user_id         BIGINT NOT NULL REFERENCES users(id),
    payment_intent  TEXT,
    amount_usd      NUMERIC NOT NULL,
    event_id        TEXT,
    credited_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stripe_payments_intent ON stripe_payments (payment_intent);

CREATE TABLE stripe_refunds (
    refund_id   TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES stripe_payments(session_id),
    user_id     BIGINT NOT NULL REFERENCES users(id),
    charge_id   TEXT,
    amount_usd  NUMERIC NOT NULL,
    event_id    TEXT,
    debited_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
