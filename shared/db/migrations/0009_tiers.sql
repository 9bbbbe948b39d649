-- Usage records name the service tier the provider reported (null: none) and
-- count the paid web-search calls of the request (contract section 5).
ALTER TABLE usage_records
    ADD COLUMN web_search_calls INTEGER NOT NULL DEFAULT 0 CHECK (web_search_calls >= 0),
    ADD COLUMN service_tier TEXT;
ALTER TYPE settle_usage_row
    ADD ATTRIBUTE web_search_calls BIGINT,
    ADD ATTRIBUTE service_tier TEXT;
