-- How long a billed request took, as the proxy measured it: from its arrival to
-- the end of its answer (a whole answer: when its body was ready to send; a
-- stream: its last byte), and to the first byte of the answer's body (a whole
-- answer: the same). Null on records settled before this column existed.
ALTER TABLE usage_records
    ADD COLUMN duration_ms INTEGER CHECK (duration_ms >= 0),
    ADD COLUMN ttfb_ms INTEGER CHECK (ttfb_ms >= 0);
ALTER TYPE settle_usage_row
    ADD ATTRIBUTE duration_ms BIGINT,
    ADD ATTRIBUTE ttfb_ms BIGINT;
