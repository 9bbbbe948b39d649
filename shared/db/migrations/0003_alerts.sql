-- Alerts: each rule fires at most once a day per subject (a user, a provider,
-- a provider key). Rows are written first and mailed by the worker after, so
-- an SMTP outage delays an email but never loses the alert.
CREATE TABLE alerts (
    id          BIGSERIAL PRIMARY KEY,
    rule        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    day         DATE NOT NULL,
    occurrence  INTEGER NOT NULL DEFAULT 0,
    message     TEXT NOT NULL,
    recipients  TEXT[] NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    emailed_at  TIMESTAMPTZ,
    email_error TEXT,
    UNIQUE (rule, subject, day, occurrence)
);
CREATE INDEX alerts_unsent ON alerts (id) WHERE emailed_at IS NULL;

ALTER TABLE users ALTER COLUMN low_balance_usd SET DEFAULT 1;
