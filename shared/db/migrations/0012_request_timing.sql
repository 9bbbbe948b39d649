-- How long a billed request took, as the proxy measured it: from its arrival to
-- the end of its answer (a whole answer: when its body was ready to send; a
-- stream: its last byte), and to the first byte of the answer's body (a whole
-- answer: the same). Null on records settled before these columns existed.
ALTER TABLE usage_records
    ADD COLUMN duration_ms BIGINT CHECK (duration_ms >= 0),
    ADD COLUMN ttfb_ms BIGINT CHECK (ttfb_ms >= 0);

-- The worker's batch rows with the timings, as a new type: a worker of the
-- release before keeps inserting `settle_usage_row` (which this leaves as it
-- is) until it is restarted, so workers of both releases settle side by side
-- during a rolling upgrade.
CREATE TYPE settle_usage_row_v2 AS (
    request_id            TEXT,
    user_id               BIGINT,
    api_key_id            BIGINT,
    provider_key_id       BIGINT,
    provider              TEXT,
    model                 TEXT,
    endpoint              TEXT,
    stream                BOOLEAN,
    input_tokens          BIGINT,
    output_tokens         BIGINT,
    cache_read_tokens     BIGINT,
    cache_write_tokens    BIGINT,
    cache_write_1h_tokens BIGINT,
    cost_usd              TEXT,
    estimated             BOOLEAN,
    outcome               TEXT,
    upstream_request_id   TEXT,
    created_at            TIMESTAMPTZ,
    web_search_calls      BIGINT,
    service_tier          TEXT,
    duration_ms           BIGINT,
    ttfb_ms               BIGINT
);
