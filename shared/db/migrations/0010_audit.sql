-- The audit log (contract section 9): every operator action from the CLI or
-- the dashboard, with who (`cli:<os user>` or the operator's email), when and
-- what changed. `before` / `after` never hold a secret (proxy key, provider
-- secret, code, password); `reason` is what the operator typed, where asked.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    before JSONB,
    after JSONB,
    reason TEXT
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_subject ON audit_log (subject, at DESC);
