-- Alert webhooks (contract section 9): every alert is also POSTed to
-- ALERT_WEBHOOK_URL, retried with backoff for up to 10 minutes from its first
-- attempt, across worker restarts (the state lives here), never again once
-- accepted. Workers lock pending rows with FOR UPDATE SKIP LOCKED, so two
-- workers never POST one alert twice.
--   webhook_state: pending (to POST), delivered (a 2xx accepted it), failed
--   (gave up after 10 minutes; webhook_error says why), none (no webhook was
--   configured, or the alert predates webhooks).
ALTER TABLE alerts
    ADD COLUMN webhook_state TEXT NOT NULL DEFAULT 'none',
    ADD COLUMN webhook_attempts INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN webhook_first_at TIMESTAMPTZ,
    ADD COLUMN webhook_next_at TIMESTAMPTZ,
    ADD COLUMN webhook_delivered_at TIMESTAMPTZ,
    ADD COLUMN webhook_error TEXT;
-- alerts recorded before this migration stay 'none'; new ones start pending
ALTER TABLE alerts ALTER COLUMN webhook_state SET DEFAULT 'pending';
CREATE INDEX alerts_webhook_pending ON alerts (id) WHERE webhook_state = 'pending';
