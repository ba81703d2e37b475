//! Rules files (CONTRACT.md §3): the typed rule set that arms prompts on every conversation
//! of chosen queues.

use uuid::Uuid;

use crate::contract::payload::{DisplaySettings, Priority, PromptContent, TriggerCondition};

/// The display settings of a rule that leaves `displaySettings` out: the shortest delay the
/// contract allows, the most prompts at once (so the rule does not lower the limit of the
/// prompts already shown), and half a minute on screen.
pub const DEFAULT_DISPLAY: DisplaySettings =
    DisplaySettings { delay_ms: 500, max_concurrent_prompts: 3, auto_dismiss_ms: 30_000 };

/// What a rule shows when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum RulePrompt {
    /// A prompt of the catalogue, by its id (`promptId`).
    Catalogue(Uuid),
    /// Content written in the rule itself (`prompt: {title, body, url?}`).
    Inline(PromptContent),
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique within its file; counters of live conversations follow it across reloads.
    pub id: String,
    /// Queue ids or names; empty means every queue.
    pub queues: Vec<String>,
    pub prompt: RulePrompt,
    /// All must hold (CONTRACT.md §3); empty fires when the conversation starts.
    pub conditions: Vec<TriggerCondition>,
    pub display: DisplaySettings,
    /// After a fire the rule waits this long before it can fire again.
    pub cooldown_seconds: u32,
    /// At least 1.
    pub max_per_conversation: u32,
    pub priority: Priority,
    pub enabled: bool,
    /// Evaluated and recorded, never shown.
    pub shadow: bool,
}

impl Rule {
    /// A rule with the file format's defaults: every queue, no cooldown, one fire per
    /// conversation, normal priority, enabled, not shadow.
    pub fn new(id: impl Into<String>, prompt: RulePrompt, conditions: Vec<TriggerCondition>) -> Rule {
        Rule {
            id: id.into(),
            queues: Vec::new(),
            prompt,
            conditions,
            display: DEFAULT_DISPLAY,
            cooldown_seconds: 0,
            max_per_conversation: 1,
            priority: Priority::Normal,
            enabled: true,
            shadow: false,
        }
    }
}

/// The rules of one file, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleSet {
    /// Where the rules came from (a path, or a name given to [`RuleSet::parse`]).
    pub origin: String,
    pub rules: Vec<Rule>,
}
