-- Engagement events for adoption (CONTRACT.md §6), and who/where an injection belongs to.
--
-- One row per thing that happened to a prompt on screen: shown, viewed (visible >= 1 s),
-- clicked, dismissed, expired (left on its own), feedback (thumbs up/down). Rows are
-- denormalized (prompt, rule, queue, agent copied in) so adoption folds over one table in
-- one pass; `shown_at` rides along so time-to-click needs no join. Written in the same
-- transaction as the status change that caused it. Not part of the audit chain, and not
-- purged with it: adoption figures keep their history.

-- The queue the conversation was routed through and the agent it was shown to, when known
-- (rules know the queue from the conversation event; the panel session knows the agent).
ALTER TABLE injections ADD COLUMN queue_id TEXT;
ALTER TABLE injections ADD COLUMN agent_id TEXT;

CREATE TABLE engagement_events (
    id              INTEGER PRIMARY KEY,
    injection_id    TEXT    NOT NULL,
    conversation_id TEXT    NOT NULL,
    prompt_id       TEXT    NOT NULL,
    rule_id         TEXT,
    queue_id        TEXT,
    agent_id        TEXT,
    kind            TEXT    NOT NULL CHECK (kind IN ('shown', 'viewed', 'clicked', 'dismissed', 'expired', 'feedback')),
    at              INTEGER NOT NULL,              -- epoch ms
    shown_at        INTEGER,                       -- epoch ms the prompt was shown, when it was
    rating          INTEGER CHECK (rating IS NULL OR rating IN (-1, 1))
);

-- Adoption reads intervals in time order.
CREATE INDEX engagement_events_at ON engagement_events (at);
