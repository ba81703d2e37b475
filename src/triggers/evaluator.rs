//! Per-conversation trigger evaluation: armed entries fire once, when all their conditions hold.
//!
//! CONTRACT.md §3, as implemented here:
//!
//! | condition | holds when | latches |
//! |---|---|---|
//! | keyword | a final customer utterance contained the phrase (whole words, normalized); with a threshold, one such utterance had confidence ≥ it | yes |
//! | sentiment | the latest overall score s (−1…1): negative s ≤ −t, positive s ≥ t, neutral −t < s < t; no score yet → not held | no |
//! | duration | now ≥ agent connected time + seconds (time never runs backwards: the latest `now` seen counts) | yes |
//! | confidence | the latest final customer utterance's confidence ≥ threshold; no confidence on it → not held | no |
//!
//! Agent and other-channel speech and partial utterances never touch keyword or confidence
//! state. A conversation end expires every unfired entry and later events are ignored.
//!
//! State is kept small so hundreds of thousands of live conversations fit in memory: a
//! handful of scalars, the phrases actually heard (sorted, with their best confidence), and
//! the armed entries, whose compiled conditions are shared (`Arc`) between conversations
//! armed by the same rule. [`ConversationState::approx_bytes`] reports the footprint.

use std::sync::Arc;

use super::events::{Channel, Event};
use super::keywords::{KeywordIndex, PhraseId};
use super::normalize::Normalizer;
use super::TriggerError;
use crate::contract::payload::{Polarity, TriggerCondition};

/// The caller's handle for an armed entry (an injection, or a rule on a conversation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArmedId(pub u64);

/// A [`TriggerCondition`] compiled against a [`KeywordIndex`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Keyword {
        phrase: PhraseId,
        threshold: Option<f64>,
    },
    Sentiment {
        polarity: Polarity,
        threshold: f64,
    },
    /// Milliseconds since the agent connected.
    Duration {
        ms: i64,
    },
    Confidence {
        threshold: f64,
    },
}

/// Compiles validated conditions; every keyword phrase must already be in `index`.
pub fn compile(index: &KeywordIndex, conditions: &[TriggerCondition]) -> Result<Arc<[Condition]>, TriggerError> {
    conditions
        .iter()
        .map(|c| {
            Ok(match c {
                TriggerCondition::Keyword { phrase, threshold } => Condition::Keyword {
                    phrase: index
                        .lookup(phrase)
                        .ok_or_else(|| TriggerError::UnknownPhrase { phrase: phrase.clone() })?,
                    threshold: *threshold,
                },
                TriggerCondition::Sentiment { polarity, threshold } => {
                    Condition::Sentiment { polarity: *polarity, threshold: *threshold }
                }
                TriggerCondition::Duration { seconds } => Condition::Duration { ms: i64::from(*seconds) * 1000 },
                TriggerCondition::Confidence { threshold } => Condition::Confidence { threshold: *threshold },
            })
        })
        .collect()
}

/// An entry waiting for its conditions.
#[derive(Debug, Clone)]
pub struct Armed {
    pub id: ArmedId,
    pub conditions: Arc<[Condition]>,
}

/// What happened to an armed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All its conditions hold: hand it to admission.
    Fired(ArmedId),
    /// The conversation ended first.
    Expired(ArmedId),
}

/// What the evaluator remembers about one live conversation.
#[derive(Debug, Clone, Default)]
pub struct ConversationState {
    agent_connected_at_ms: Option<i64>,
    sentiment: Option<f64>,
    /// Confidence of the latest final customer utterance; `Some(None)` when it had none.
    last_customer_confidence: Option<Option<f64>>,
    /// Phrases heard in final customer utterances, sorted by id, with the best confidence of
    /// an utterance that contained them (−∞ when none carried a confidence).
    heard: Vec<(PhraseId, f64)>,
    armed: Vec<Armed>,
    now_ms: i64,
    ended: bool,
}

impl ConversationState {
    pub fn new() -> ConversationState {
        ConversationState { now_ms: i64::MIN, ..ConversationState::default() }
    }

    /// Arms an entry. Arming is not an event, but an entry whose conditions already hold
    /// (say a keyword heard earlier) fires at once rather than waiting for the next event;
    /// on an ended conversation it expires at once. Otherwise it waits and `None` is returned.
    pub fn arm(&mut self, armed: Armed, now_ms: i64) -> Option<Outcome> {
        if self.ended {
            return Some(Outcome::Expired(armed.id));
        }
        self.advance(now_ms);
        if self.all_hold(&armed.conditions) {
            return Some(Outcome::Fired(armed.id));
        }
        self.armed.push(armed);
        None
    }

    /// Removes an unfired entry (its injection was cancelled); `false` if it is not armed.
    pub fn disarm(&mut self, id: ArmedId) -> bool {
        let before = self.armed.len();
        self.armed.retain(|a| a.id != id);
        self.armed.len() != before
    }

    /// The ids still waiting, in arming order.
    pub fn armed_ids(&self) -> impl Iterator<Item = ArmedId> + '_ {
        self.armed.iter().map(|a| a.id)
    }

    pub fn agent_connected_at_ms(&self) -> Option<i64> {
        self.agent_connected_at_ms
    }

    pub fn sentiment(&self) -> Option<f64> {
        self.sentiment
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The earliest future moment at which a waiting entry's duration condition becomes
    /// true, so a timer can call [`Evaluator::on_tick`] exactly then. `None` when the agent
    /// is not connected yet or no waiting duration lies in the future.
    pub fn next_deadline(&self) -> Option<i64> {
        let at = self.agent_connected_at_ms?;
        self.armed
            .iter()
            .flat_map(|a| a.conditions.iter())
            .filter_map(|c| match c {
                Condition::Duration { ms } => Some(at.saturating_add(*ms)),
                _ => None,
            })
            .filter(|d| *d > self.now_ms)
            .min()
    }

    /// Approximate memory of this state in bytes, heap included (compiled conditions are
    /// counted in full even though they may be shared).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<ConversationState>()
            + self.heard.capacity() * std::mem::size_of::<(PhraseId, f64)>()
            + self.armed.capacity() * std::mem::size_of::<Armed>()
            + self.armed.iter().map(|a| a.conditions.len() * std::mem::size_of::<Condition>()).sum::<usize>()
    }

    fn advance(&mut self, now_ms: i64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn heard_confidence(&self, phrase: PhraseId) -> Option<f64> {
        self.heard.binary_search_by_key(&phrase, |(p, _)| *p).ok().map(|i| self.heard[i].1)
    }

    fn hear(&mut self, phrase: PhraseId, confidence: Option<f64>) {
        let c = confidence.unwrap_or(f64::NEG_INFINITY);
        match self.heard.binary_search_by_key(&phrase, |(p, _)| *p) {
            Ok(i) => self.heard[i].1 = self.heard[i].1.max(c),
            Err(i) => self.heard.insert(i, (phrase, c)),
        }
    }

    fn holds(&self, c: &Condition) -> bool {
        match *c {
            Condition::Keyword { phrase, threshold } => {
                self.heard_confidence(phrase).is_some_and(|best| threshold.is_none_or(|t| best >= t))
            }
            Condition::Sentiment { polarity, threshold: t } => self.sentiment.is_some_and(|s| match polarity {
                Polarity::Negative => s <= -t,
                Polarity::Positive => s >= t,
                Polarity::Neutral => s > -t && s < t,
            }),
            Condition::Duration { ms } => {
                self.agent_connected_at_ms.is_some_and(|at| self.now_ms >= at.saturating_add(ms))
            }
            Condition::Confidence { threshold } => {
                self.last_customer_confidence.flatten().is_some_and(|c| c >= threshold)
            }
        }
    }

    fn all_hold(&self, conditions: &[Condition]) -> bool {
        conditions.iter().all(|c| self.holds(c))
    }

    /// Fires (and removes) every waiting entry whose conditions all hold, in arming order.
    fn fire_ready(&mut self) -> Vec<Outcome> {
        let mut fired = Vec::new();
        let mut i = 0;
        while i < self.armed.len() {
            if self.all_hold(&self.armed[i].conditions) {
                fired.push(Outcome::Fired(self.armed.remove(i).id));
            } else {
                i += 1;
            }
        }
        fired
    }
}

/// Applies events to conversation states. Holds the shared keyword index and a scratch
/// buffer for normalization, so evaluating allocates only for the returned outcomes.
#[derive(Debug, Clone)]
pub struct Evaluator {
    index: Arc<KeywordIndex>,
    normalizer: Normalizer,
}

impl Evaluator {
    pub fn new(index: Arc<KeywordIndex>) -> Evaluator {
        Evaluator { index, normalizer: Normalizer::new() }
    }

    pub fn index(&self) -> &KeywordIndex {
        &self.index
    }

    /// Compiles conditions against this evaluator's index.
    pub fn compile(&self, conditions: &[TriggerCondition]) -> Result<Arc<[Condition]>, TriggerError> {
        compile(&self.index, conditions)
    }

    /// Applies one event that arrived at `now_ms` and returns the entries that fired (or, on
    /// conversation end, expired).
    pub fn on_event(&mut self, state: &mut ConversationState, event: &Event, now_ms: i64) -> Vec<Outcome> {
        if state.ended {
            return Vec::new();
        }
        state.advance(now_ms);
        match event {
            Event::ConversationEnded => {
                state.ended = true;
                return std::mem::take(&mut state.armed).into_iter().map(|a| Outcome::Expired(a.id)).collect();
            }
            Event::AgentConnected { at_ms } => {
                // Snapshots repeat the connection; the first one starts the clock.
                state.agent_connected_at_ms.get_or_insert(*at_ms);
            }
            Event::Sentiment { score } => state.sentiment = Some(*score),
            Event::Utterance(u) => {
                if !u.is_final || u.channel != Channel::Customer {
                    return Vec::new();
                }
                state.last_customer_confidence = Some(u.confidence);
                let text = self.normalizer.normalize(&u.text);
                for phrase in self.index.matches(text) {
                    state.hear(phrase, u.confidence);
                }
            }
        }
        state.fire_ready()
    }

    /// Re-evaluates at `now_ms` with no new event: call it at [`ConversationState::next_deadline`].
    pub fn on_tick(&self, state: &mut ConversationState, now_ms: i64) -> Vec<Outcome> {
        if state.ended {
            return Vec::new();
        }
        state.advance(now_ms);
        state.fire_ready()
    }
}
