-- Whether a usage record has been added to the daily counters in Redis: the
-- worker claims this flag before counting, so a retried batch counts each
-- record once, also when the first try died between its commit and the count.
ALTER TABLE usage_records ADD COLUMN counted BOOLEAN NOT NULL DEFAULT false;
UPDATE usage_records SET counted = true;
