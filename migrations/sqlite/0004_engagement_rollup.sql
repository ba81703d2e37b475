-- The engagement rollup: adoption counts per 15-minute UTC bucket, so a report reads
-- (buckets x groups) rows instead of scanning every engagement event (issue 6).
--
-- Buckets are 15 minutes (900,000 ms, floor of `at`): every fixed UTC offset is a multiple
-- of 15 minutes, so any offset's day boundaries fall on bucket edges. A report folds the raw
-- events only for the partial buckets at its two ends.
--
-- One row per (dimension, bucket, key), not per (prompt, rule, queue, agent) combination: a
-- report groups by each dimension on its own, and the combinations would hold nearly as many
-- rows as the events. dim: 0 = total (key ''), 1 = prompt, 2 = rule, 3 = queue, 4 = agent;
-- an unknown (or empty) rule, queue or agent is key ''. The writer keeps these tables in the
-- same transaction as the events (store::rollup), adding each batch's counts with an upsert.

CREATE TABLE engagement_rollup (
    dim             INTEGER NOT NULL,
    bucket          INTEGER NOT NULL,              -- epoch ms, a multiple of 900000
    key             TEXT    NOT NULL,
    shown           INTEGER NOT NULL,
    viewed          INTEGER NOT NULL,
    clicked         INTEGER NOT NULL,
    dismissed       INTEGER NOT NULL,
    expired         INTEGER NOT NULL,
    feedback        INTEGER NOT NULL,
    quick_dismissed INTEGER NOT NULL,              -- dismissed within 2 s of being shown
    feedback_up     INTEGER NOT NULL,
    feedback_down   INTEGER NOT NULL,
    -- Key before bucket: a report sums each key over its buckets in one index-ordered pass.
    PRIMARY KEY (dim, key, bucket)
) WITHOUT ROWID;

-- Time to click as a log-scale histogram: `slot` per store::rollup::click_slot (0..31 exact
-- ms, then 16 slots per doubling), one row per non-empty slot of a cell.
CREATE TABLE engagement_rollup_clicks (
    dim    INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    key    TEXT    NOT NULL,
    slot   INTEGER NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (dim, key, slot, bucket)
) WITHOUT ROWID;

-- The slots' lower bounds (ms), so SQL can bucket click times as Rust does (a test holds
-- both equal): slot s < 32 starts at s; above, 16 slots per power of two.
CREATE TABLE engagement_click_slots (
    lo   INTEGER PRIMARY KEY,
    slot INTEGER NOT NULL
);
WITH RECURSIVE s(slot) AS (SELECT 0 UNION ALL SELECT slot + 1 FROM s WHERE slot < 959)
INSERT INTO engagement_click_slots (lo, slot)
SELECT CASE WHEN slot < 32 THEN slot ELSE (16 + (slot - 32) % 16) << (1 + (slot - 32) / 16) END, slot FROM s;

-- backfill (store::rollup rebuilds the rollup with the statements from here on)
DELETE FROM engagement_rollup;
DELETE FROM engagement_rollup_clicks;
WITH e AS (
    SELECT at - ((at % 900000) + 900000) % 900000 AS b, prompt_id AS p, COALESCE(rule_id, '') AS r,
        COALESCE(queue_id, '') AS q, COALESCE(agent_id, '') AS a, kind = 'shown' AS k0, kind = 'viewed' AS k1,
        kind = 'clicked' AS k2, kind = 'dismissed' AS k3, kind = 'expired' AS k4, kind = 'feedback' AS k5,
        kind = 'dismissed' AND shown_at IS NOT NULL AND at >= shown_at AND at - shown_at <= 2000 AS qd,
        kind = 'feedback' AND rating > 0 AS up, kind = 'feedback' AND rating < 0 AS down
    FROM engagement_events
)
INSERT INTO engagement_rollup (dim, bucket, key, shown, viewed, clicked, dismissed, expired, feedback,
    quick_dismissed, feedback_up, feedback_down)
SELECT 0, b, '', sum(k0), sum(k1), sum(k2), sum(k3), sum(k4), sum(k5), sum(qd), sum(up), sum(down) FROM e GROUP BY b
UNION ALL
SELECT 1, b, p, sum(k0), sum(k1), sum(k2), sum(k3), sum(k4), sum(k5), sum(qd), sum(up), sum(down) FROM e GROUP BY b, p
UNION ALL
SELECT 2, b, r, sum(k0), sum(k1), sum(k2), sum(k3), sum(k4), sum(k5), sum(qd), sum(up), sum(down) FROM e GROUP BY b, r
UNION ALL
SELECT 3, b, q, sum(k0), sum(k1), sum(k2), sum(k3), sum(k4), sum(k5), sum(qd), sum(up), sum(down) FROM e GROUP BY b, q
UNION ALL
SELECT 4, b, a, sum(k0), sum(k1), sum(k2), sum(k3), sum(k4), sum(k5), sum(qd), sum(up), sum(down) FROM e GROUP BY b, a;
WITH c AS (
    SELECT at - ((at % 900000) + 900000) % 900000 AS b, prompt_id AS p, COALESCE(rule_id, '') AS r,
        COALESCE(queue_id, '') AS q, COALESCE(agent_id, '') AS a,
        (SELECT slot FROM engagement_click_slots WHERE lo <= at - shown_at ORDER BY lo DESC LIMIT 1) AS s
    FROM engagement_events WHERE kind = 'clicked' AND shown_at IS NOT NULL AND at >= shown_at
)
INSERT INTO engagement_rollup_clicks (dim, bucket, key, slot, n)
SELECT 0, b, '', s, count(*) FROM c GROUP BY b, s
UNION ALL
SELECT 1, b, p, s, count(*) FROM c GROUP BY b, p, s
UNION ALL
SELECT 2, b, r, s, count(*) FROM c GROUP BY b, r, s
UNION ALL
SELECT 3, b, q, s, count(*) FROM c GROUP BY b, q, s
UNION ALL
SELECT 4, b, a, s, count(*) FROM c GROUP BY b, a, s;
