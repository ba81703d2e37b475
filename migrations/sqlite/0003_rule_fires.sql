-- Rule decisions of the live trigger runtime (triggers::live): shadow rules' would-fire
-- events (shown nothing, recorded here so shadow statistics can be read), live fires with
-- the injection they created, suppressions (cooldown, cap) and rules that expired unfired.
CREATE TABLE rule_fires (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT    NOT NULL,
    rule_id         TEXT    NOT NULL,
    -- fired | shadow | suppressed_cooldown | suppressed_cap | expired
    outcome         TEXT    NOT NULL,
    injection_id    TEXT,
    at              INTEGER NOT NULL
);
CREATE INDEX rule_fires_conversation ON rule_fires (conversation_id, id);
CREATE INDEX rule_fires_rule ON rule_fires (rule_id, at);
