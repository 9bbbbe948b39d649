-- Providers as configuration (contract section 5): a provider row says what
-- kind of API it speaks and where; built-ins keep their base URL in settings
-- (NULL here). `removed_at` stops routing; keys, thresholds and records stay.
ALTER TABLE providers
    ADD COLUMN kind        TEXT,
    ADD COLUMN base_url    TEXT,
    ADD COLUMN auth_header TEXT,
    ADD COLUMN headers     JSONB NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN builtin     BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN removed_at  TIMESTAMPTZ;

UPDATE providers SET kind = name, builtin = TRUE WHERE name IN ('openai', 'anthropic');
INSERT INTO providers (name, kind, builtin) VALUES ('gemini', 'gemini', TRUE)
    ON CONFLICT (name) DO UPDATE SET kind = 'gemini', builtin = TRUE;
UPDATE providers SET kind = 'openai' WHERE kind IS NULL;

ALTER TABLE providers
    ALTER COLUMN kind SET NOT NULL,
    ADD CONSTRAINT providers_kind CHECK (kind IN ('openai', 'anthropic', 'gemini'));
