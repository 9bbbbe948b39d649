-- Usage events the proxy could not enqueue (Redis unreachable): the worker
-- settles them from here. Settlement is idempotent by request id.
CREATE TABLE spooled_events (
    request_id  TEXT PRIMARY KEY,
    event       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Holds whose request never reported back (its proxy died): released by the
-- worker's reaper without a charge, and kept here for the operator.
CREATE TABLE orphaned_holds (
    request_id  TEXT PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users(id),
    held_usd    NUMERIC NOT NULL,
    released_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
