//! Trigger conditions (CONTRACT.md §3): the pure evaluation core.
//!
//! - [`normalize`]: the text normalization phrases and utterances share.
//! - [`keywords`]: every phrase in one Aho-Corasick automaton, whole-word matches.
//! - [`events`]: notification envelopes → typed conversation events.
//! - [`evaluator`]: per-conversation state, armed entries, firing and expiry.
//! - [`rules`]: rules files: parsing, validation with file:line messages, hot reload.
//! - [`live`]: the async runtime: notifications → engines → injections (the only I/O here).
//! - [`replay`]: backtesting rules over recorded calls, with precision and recall.
//! - [`recorded`]: replay's fast parse of recorded lines (typed, borrowed, topic-dispatched).
//! - [`replay_cache`]: replay's compiled calls, cached on disk between runs.
//! - [`engine`]: a rule set compiled once, and the per-conversation rule engine (cooldown,
//!   caps, priority, shadow, API-armed entries).
//!
//! Nothing here does I/O or reads a clock: time comes in as epoch milliseconds, so the same
//! code runs live (driven by the notifications websocket and a timer) and in replay.

pub mod engine;
pub mod evaluator;
pub mod events;
pub mod keywords;
pub mod live;
pub mod normalize;
pub mod recorded;
pub mod replay;
pub mod replay_cache;
pub mod rules;

pub use engine::{CompiledRule, CompiledRules, ConversationEngine, Decision, SuppressReason};
pub use evaluator::{compile, Armed, ArmedId, Condition, ConversationState, Evaluator, Outcome};
pub use events::{
    normalize_sentiment, parse_envelope, parse_notification, Channel, Event, Notification, Topic, Utterance,
};
pub use keywords::{KeywordIndex, KeywordIndexBuilder, PhraseId};
pub use normalize::{normalize, Normalizer};
pub use rules::{Rule, RulePrompt, RuleSet};

/// Everything that can go wrong in this module; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("keyword phrase {phrase:?} has no letters or digits; give a phrase with at least one word")]
    EmptyPhrase { phrase: String },
    #[error("too many keyword phrases for one index (more than 2^32)")]
    TooManyPhrases,
    #[error("could not build the keyword automaton: {0}")]
    Automaton(String),
    #[error("keyword phrase {phrase:?} is not in the keyword index; rebuild the index with it")]
    UnknownPhrase { phrase: String },
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{field} is not an RFC 3339 timestamp: {value:?}")]
    BadTime { field: String, value: String },
}

/// Recorded calls for the tests: the shared set beside the project when it is there, else
/// the project's own examples/calls (same format; the tests read their expectations from
/// the folder's calls.json), so a clone anywhere can run them.
#[cfg(test)]
pub(crate) fn calls_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/data/calls");
    if shared.join("calls.json").is_file() {
        shared
    } else {
        root.join("examples/calls")
    }
}
