-- API-key controls (CONTRACT.md section 6): a budget per UTC calendar period,
-- a models allowlist and an expiry. NULL everywhere means "no limit".
ALTER TABLE api_keys
    ADD COLUMN budget_usd    NUMERIC CHECK (budget_usd >= 0),
    ADD COLUMN budget_period TEXT CHECK (budget_period IN ('day', 'week', 'month', 'total')),
    -- NULL: every catalog model; otherwise a non-empty list of model ids
    ADD COLUMN models        TEXT[] CHECK (models IS NULL OR cardinality(models) > 0),
    -- NULL: never expires
    ADD COLUMN expires_at    TIMESTAMPTZ;

-- A budget always has a period (month when none is given); no budget, no period.
CREATE FUNCTION api_keys_budget_period() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.budget_usd IS NULL THEN
        NEW.budget_period := NULL;
    ELSIF NEW.budget_period IS NULL THEN
        NEW.budget_period := 'month';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER api_keys_budget_period
    BEFORE INSERT OR UPDATE OF budget_usd, budget_period ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_budget_period();
ALTER TABLE api_keys ADD CONSTRAINT api_keys_budget_has_period
    CHECK ((budget_usd IS NULL) = (budget_period IS NULL));

-- A key's spend in a period (spend_in_period, the Redis counter's rebuild).
CREATE INDEX IF NOT EXISTS usage_records_key_created ON usage_records (api_key_id, created_at);
