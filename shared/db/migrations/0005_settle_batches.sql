-- Daily counters are claimed per settled batch, not per record: the batch's
-- new usage records carry its id in `count_batch`, and its row here lives from
-- the settlement commit until a worker claims the batch for counting (by
-- deleting the row). A usage record is no longer rewritten after its insert.
-- Records of a batch are inserted with `counted` = true; `counted` = false
-- still marks a record (settled before this migration) that a redelivery of its
-- event must count.
ALTER TABLE usage_records ADD COLUMN count_batch BIGINT;
CREATE TABLE uncounted_batches (
    id           BIGSERIAL PRIMARY KEY,
    first_record BIGINT NOT NULL,  -- usage_records.id range of the batch
    last_record  BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Row types of the worker's batch inserts: asyncpg sends one array of rows
-- with about half the CPU (client and server) of one array per column. Money
-- travels as text (exact) and is cast to NUMERIC by the statement.
CREATE TYPE settle_usage_row AS (
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
    created_at            TIMESTAMPTZ
);
CREATE TYPE settle_ledger_row AS (
    user_id       BIGINT,
    amount_usd    TEXT,
    balance_after TEXT,
    request_id    TEXT
);
