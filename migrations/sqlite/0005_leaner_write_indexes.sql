-- Fewer B-trees per accepted injection (issue 3: durable append throughput).
--
-- Every index is one more B-tree that each insert descends and that each group commit
-- writes at least one page of to the WAL (and, later, the checkpoint to the database). The
-- three dropped here served no query that the remaining indexes cannot: each plan is held
-- by store::read's query-plan test.
--
-- (Tried and not kept: the outbox as a WITHOUT ROWID table keyed by its message id, one
-- B-tree fewer. Index B-trees split even when appended to, rowid tables do not, and the WAL
-- writes per injection went up, not down.)

-- Nothing reads the outbox by injection, and nothing deletes injections (the only reason
-- the foreign key's ON DELETE CASCADE would want it).
DROP INDEX IF EXISTS outbox_by_injection;

-- The restart recovery set (every live injection, once, at start) scans the live partial
-- index by conversation: it holds exactly the same rows; the sort was there already.
DROP INDEX IF EXISTS injections_live_by_status;

-- The backlog figures and listing by state are served by the poll's index, which now also
-- carries created_at, so the oldest pending message is found without reading the rows.
DROP INDEX IF EXISTS outbox_by_state;
DROP INDEX IF EXISTS outbox_due;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at, created_at);
