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
//! State is kept small (goal: ≤ 4 KiB per live conversation with its armed entries): a
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
#[derive(Debug, Clone)]
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

impl Default for ConversationState {
    fn default() -> ConversationState {
        ConversationState::new()
    }
}

impl ConversationState {
    pub fn new() -> ConversationState {
        ConversationState {
            agent_connected_at_ms: None,
            sentiment: None,
            last_customer_confidence: None,
            heard: Vec::new(),
            armed: Vec::new(),
            now_ms: i64::MIN,
            ended: false,
        }
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

    /// The latest time seen (`i64::MIN` before any).
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub(crate) fn advance(&mut self, now_ms: i64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The best confidence of a final customer utterance that contained `phrase` (−∞ when
    /// none carried one), or `None` when it was never heard.
    pub(crate) fn heard_confidence(&self, phrase: PhraseId) -> Option<f64> {
        self.heard.binary_search_by_key(&phrase, |(p, _)| *p).ok().map(|i| self.heard[i].1)
    }

    fn hear(&mut self, phrase: PhraseId, confidence: Option<f64>) {
        let c = confidence.unwrap_or(f64::NEG_INFINITY);
        match self.heard.binary_search_by_key(&phrase, |(p, _)| *p) {
            Ok(i) => self.heard[i].1 = self.heard[i].1.max(c),
            Err(i) => self.heard.insert(i, (phrase, c)),
        }
    }

    /// Whether one condition holds now, keywords judged over the whole conversation.
    pub(crate) fn holds(&self, c: &Condition) -> bool {
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

    /// Records what `event` (arrived at `now_ms`) tells about the conversation, without
    /// firing anything: the clock, the agent's connection, sentiment, and for a final customer
    /// utterance its confidence and the phrases of `index` it contains (each reported to
    /// `on_phrase` with the utterance's confidence, once per occurrence). Returns `true` when
    /// the event ended the conversation. Shared by [`Evaluator`] and the rule engine, so both
    /// read events identically.
    pub(crate) fn observe(
        &mut self,
        index: &KeywordIndex,
        normalizer: &mut Normalizer,
        event: &Event,
        now_ms: i64,
        mut on_phrase: impl FnMut(PhraseId, Option<f64>),
    ) -> bool {
        if self.ended {
            return false;
        }
        self.advance(now_ms);
        match event {
            Event::ConversationEnded => {
                self.ended = true;
                return true;
            }
            Event::AgentConnected { at_ms } => {
                // Snapshots repeat the connection; the first one starts the clock.
                self.agent_connected_at_ms.get_or_insert(*at_ms);
            }
            Event::Sentiment { score } => self.sentiment = Some(*score),
            // Agent and other speech and partials change nothing, but still count as an event:
            // a duration reached since the last one fires there.
            Event::Utterance(u) if u.is_final && u.channel == Channel::Customer => {
                self.last_customer_confidence = Some(u.confidence);
                let text = normalizer.normalize(&u.text);
                index.for_each_match(text, |phrase| {
                    self.hear(phrase, u.confidence);
                    on_phrase(phrase, u.confidence);
                });
            }
            Event::Utterance(_) => {}
        }
        false
    }

    /// Removes every waiting entry as expired (the conversation ended).
    pub(crate) fn take_expired(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.armed).into_iter().map(|a| Outcome::Expired(a.id)).collect()
    }

    /// Fires (and removes) every waiting entry whose conditions all hold, in arming order.
    pub(crate) fn fire_ready(&mut self) -> Vec<Outcome> {
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
        if state.observe(&self.index, &mut self.normalizer, event, now_ms, |_, _| {}) {
            return state.take_expired();
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

#[cfg(test)]
mod tests {
    use super::super::calls_dir;
    use super::super::events::{parse_notification, Utterance};
    use super::*;

    const PHRASES: [&str; 5] = ["refund", "refund request", "café", "cancel my account", "fraud"];

    fn evaluator() -> Evaluator {
        Evaluator::new(Arc::new(KeywordIndex::from_phrases(PHRASES).expect("index")))
    }

    fn kw(phrase: &str, threshold: Option<f64>) -> TriggerCondition {
        TriggerCondition::Keyword { phrase: phrase.into(), threshold }
    }

    fn senti(polarity: Polarity, threshold: f64) -> TriggerCondition {
        TriggerCondition::Sentiment { polarity, threshold }
    }

    fn customer(text: &str, confidence: f64) -> Event {
        Event::Utterance(Utterance {
            is_final: true,
            channel: Channel::Customer,
            text: text.into(),
            confidence: Some(confidence),
            utterance_id: None,
        })
    }

    fn agent(text: &str) -> Event {
        Event::Utterance(Utterance {
            is_final: true,
            channel: Channel::Agent,
            text: text.into(),
            confidence: Some(0.99),
            utterance_id: None,
        })
    }

    fn partial(text: &str) -> Event {
        Event::Utterance(Utterance {
            is_final: false,
            channel: Channel::Customer,
            text: text.into(),
            confidence: Some(0.99),
            utterance_id: None,
        })
    }

    /// Arms one entry (id 1) with `conditions`, feeds `events` at 1 s intervals starting at
    /// t = 1000 ms, and returns the index of the event after which it fired, if any.
    fn fires_at(conditions: &[TriggerCondition], events: &[Event]) -> Option<usize> {
        let mut ev = evaluator();
        let mut state = ConversationState::new();
        let compiled = ev.compile(conditions).expect("compile");
        assert_eq!(state.arm(Armed { id: ArmedId(1), conditions: compiled }, 0), None, "fired on arming");
        let mut at = None;
        for (i, e) in events.iter().enumerate() {
            let out = ev.on_event(&mut state, e, 1000 * (i as i64 + 1));
            if out.contains(&Outcome::Fired(ArmedId(1))) {
                assert!(at.is_none(), "fired twice");
                at = Some(i);
            }
        }
        at
    }

    /// (name, conditions, events, index of the event after which it fires).
    type Case = (&'static str, Vec<TriggerCondition>, Vec<Event>, Option<usize>);

    #[test]
    fn semantics_table() {
        use Polarity::*;
        let connected = Event::AgentConnected { at_ms: 1000 };
        let cases: Vec<Case> = vec![
            (
                "keyword in a customer utterance",
                vec![kw("refund", None)],
                vec![customer("i want a refund", 0.9)],
                Some(0),
            ),
            (
                "keyword latches across later utterances",
                vec![kw("refund", None), senti(Negative, 0.5)],
                vec![customer("refund please", 0.9), customer("ok then", 0.9), Event::Sentiment { score: -0.6 }],
                Some(2),
            ),
            ("agent speech never counts", vec![kw("refund", None)], vec![agent("i can offer a refund")], None),
            ("partials never count", vec![kw("refund", None)], vec![partial("refund"), customer("re fun", 0.9)], None),
            ("accents and case", vec![kw("refund", None)], vec![customer("RÉFUND!", 0.9)], Some(0)),
            (
                "accented phrase, plain text",
                vec![kw("café", None)],
                vec![customer("the CAFE was closed", 0.9)],
                Some(0),
            ),
            ("plain phrase, decomposed accent", vec![kw("cafe", None)], vec![customer("Cafe\u{301}", 0.9)], Some(0)),
            (
                "multi-word phrase",
                vec![kw("cancel my account", None)],
                vec![customer("Please cancel my account.", 0.9)],
                Some(0),
            ),
            (
                "multi-word phrase split",
                vec![kw("cancel my account", None)],
                vec![customer("cancel, then my account", 0.9)],
                None,
            ),
            ("punctuation around a word", vec![kw("refund", None)], vec![customer("\"refund\"!", 0.9)], Some(0)),
            ("hyphen splits a word", vec![kw("refund", None)], vec![customer("re-fund", 0.9)], None),
            ("whole words only", vec![kw("refund", None)], vec![customer("refunding is slow", 0.9)], None),
            (
                "overlapping phrases",
                vec![kw("refund request", None), kw("refund", None)],
                vec![customer("a refund request", 0.9)],
                Some(0),
            ),
            ("negative at exactly -t", vec![senti(Negative, 0.5)], vec![Event::Sentiment { score: -0.5 }], Some(0)),
            ("0.49 is neutral", vec![senti(Neutral, 0.5)], vec![Event::Sentiment { score: 0.49 }], Some(0)),
            ("0.49 is not positive", vec![senti(Positive, 0.5)], vec![Event::Sentiment { score: 0.49 }], None),
            ("0.5 is not neutral", vec![senti(Neutral, 0.5)], vec![Event::Sentiment { score: 0.5 }], None),
            ("positive at exactly +t", vec![senti(Positive, 0.5)], vec![Event::Sentiment { score: 0.5 }], Some(0)),
            ("custom threshold", vec![senti(Negative, 0.2)], vec![Event::Sentiment { score: -0.25 }], Some(0)),
            ("no sentiment yet is not neutral", vec![senti(Neutral, 0.5)], vec![customer("hello", 0.9)], None),
            (
                "sentiment is the current value, not latched",
                vec![senti(Negative, 0.5), kw("refund", None)],
                vec![Event::Sentiment { score: -0.8 }, Event::Sentiment { score: 0.1 }, customer("refund", 0.9)],
                None,
            ),
            (
                "duration needs the agent",
                vec![TriggerCondition::Duration { seconds: 1 }],
                vec![customer("hi", 0.9)],
                None,
            ),
            (
                // Connected at 1000 ms; events at 1000, 2000, 3000: 2 s hold exactly at 3000.
                "duration exactly at the boundary",
                vec![TriggerCondition::Duration { seconds: 2 }],
                vec![connected.clone(), customer("hi", 0.9), customer("hello", 0.9)],
                Some(2),
            ),
            (
                "duration is evaluated on agent speech too",
                vec![TriggerCondition::Duration { seconds: 2 }],
                vec![connected.clone(), agent("one"), agent("two")],
                Some(2),
            ),
            (
                "duration is evaluated on partials too",
                vec![TriggerCondition::Duration { seconds: 1 }],
                vec![connected.clone(), partial("one")],
                Some(1),
            ),
            (
                "duration zero holds on connect",
                vec![TriggerCondition::Duration { seconds: 0 }],
                vec![connected.clone()],
                Some(0),
            ),
            (
                "confidence gate on the latest final customer utterance",
                vec![TriggerCondition::Confidence { threshold: 0.8 }],
                vec![customer("hmm", 0.7), agent("ok"), customer("yes", 0.8)],
                Some(2),
            ),
            (
                "confidence is not latched",
                vec![TriggerCondition::Confidence { threshold: 0.8 }, kw("fraud", None)],
                vec![customer("yes", 0.9), customer("fraud", 0.6)],
                None,
            ),
            (
                "low-confidence keyword does not latch",
                vec![kw("refund", Some(0.8))],
                vec![customer("refund", 0.79), customer("anyway", 0.95)],
                None,
            ),
            (
                "keyword threshold met by a later utterance",
                vec![kw("refund", Some(0.8))],
                vec![customer("refund", 0.7), customer("yes a refund", 0.85)],
                Some(1),
            ),
            (
                "keyword first, sentiment later fires at the sentiment event",
                vec![kw("refund", None), senti(Negative, 0.5)],
                vec![
                    Event::Sentiment { score: -0.2 },
                    customer("refund", 0.9),
                    Event::Sentiment { score: -0.4 },
                    Event::Sentiment { score: -0.7 },
                ],
                Some(3),
            ),
            (
                "nothing after the end",
                vec![kw("refund", None)],
                vec![Event::ConversationEnded, customer("refund", 0.9)],
                None,
            ),
        ];
        for (name, conditions, events, want) in cases {
            assert_eq!(fires_at(&conditions, &events), want, "case: {name}");
        }
    }

    #[test]
    fn fires_once_and_end_expires_the_rest() {
        let mut ev = evaluator();
        let mut state = ConversationState::new();
        let a = ev.compile(&[kw("refund", None)]).expect("compile");
        let b = ev.compile(&[kw("fraud", None)]).expect("compile");
        assert_eq!(state.arm(Armed { id: ArmedId(1), conditions: a }, 0), None);
        assert_eq!(state.arm(Armed { id: ArmedId(2), conditions: b.clone() }, 0), None);
        assert_eq!(state.arm(Armed { id: ArmedId(3), conditions: b }, 0), None);
        assert_eq!(ev.on_event(&mut state, &customer("refund", 0.9), 10), vec![Outcome::Fired(ArmedId(1))]);
        assert_eq!(ev.on_event(&mut state, &customer("refund again", 0.9), 20), vec![]);
        assert!(state.disarm(ArmedId(3)));
        assert!(!state.disarm(ArmedId(3)));
        assert_eq!(ev.on_event(&mut state, &Event::ConversationEnded, 30), vec![Outcome::Expired(ArmedId(2))]);
        assert!(state.is_ended());
        assert_eq!(ev.on_event(&mut state, &Event::ConversationEnded, 40), vec![]);
        let late = ev.compile(&[kw("refund", None)]).expect("compile");
        assert_eq!(state.arm(Armed { id: ArmedId(4), conditions: late }, 50), Some(Outcome::Expired(ArmedId(4))));
    }

    #[test]
    fn arming_after_the_keyword_was_heard_fires_at_once() {
        let mut ev = evaluator();
        let mut state = ConversationState::new();
        assert_eq!(ev.on_event(&mut state, &customer("I need a refund", 0.9), 10), vec![]);
        let c = ev.compile(&[kw("refund", None)]).expect("compile");
        assert_eq!(state.arm(Armed { id: ArmedId(7), conditions: c }, 20), Some(Outcome::Fired(ArmedId(7))));
    }

    #[test]
    fn unknown_phrase_is_an_error() {
        let ev = evaluator();
        assert!(matches!(ev.compile(&[kw("chargeback", None)]), Err(TriggerError::UnknownPhrase { .. })));
    }

    #[test]
    fn deadlines_and_ticks() {
        let mut ev = evaluator();
        let mut state = ConversationState::new();
        let d30 = ev.compile(&[TriggerCondition::Duration { seconds: 30 }]).expect("compile");
        let d10 = ev.compile(&[TriggerCondition::Duration { seconds: 10 }]).expect("compile");
        let d5_kw = ev.compile(&[TriggerCondition::Duration { seconds: 5 }, kw("fraud", None)]).expect("compile");
        state.arm(Armed { id: ArmedId(30), conditions: d30 }, 0);
        state.arm(Armed { id: ArmedId(10), conditions: d10 }, 0);
        state.arm(Armed { id: ArmedId(5), conditions: d5_kw }, 0);
        assert_eq!(state.next_deadline(), None, "no deadline before the agent connects");
        assert_eq!(ev.on_event(&mut state, &Event::AgentConnected { at_ms: 100_000 }, 100_500), vec![]);
        // A repeated snapshot does not move the start.
        assert_eq!(ev.on_event(&mut state, &Event::AgentConnected { at_ms: 101_000 }, 102_000), vec![]);
        assert_eq!(state.agent_connected_at_ms(), Some(100_000));
        assert_eq!(state.next_deadline(), Some(105_000));
        // The 5 s entry also needs a keyword: its deadline passes without firing.
        assert_eq!(ev.on_tick(&mut state, 105_000), vec![]);
        assert_eq!(state.next_deadline(), Some(110_000));
        assert_eq!(ev.on_tick(&mut state, 109_999), vec![]);
        assert_eq!(ev.on_tick(&mut state, 110_000), vec![Outcome::Fired(ArmedId(10))]);
        assert_eq!(state.next_deadline(), Some(130_000));
        // Time never runs backwards: a late, older timestamp does not undo the latch.
        assert_eq!(ev.on_event(&mut state, &customer("it was fraud", 0.9), 50_000), vec![Outcome::Fired(ArmedId(5))]);
        assert_eq!(ev.on_tick(&mut state, 200_000), vec![Outcome::Fired(ArmedId(30))]);
        assert_eq!(state.next_deadline(), None);
    }

    #[test]
    fn state_stays_small() {
        let phrases: Vec<String> = (0..1000).map(|i| format!("phrase{i}")).collect();
        let mut ev =
            Evaluator::new(Arc::new(KeywordIndex::from_phrases(phrases.iter().map(String::as_str)).expect("index")));
        let mut state = ConversationState::new();
        for i in 0..16 {
            let c = ev
                .compile(&[
                    kw(&phrases[i * 7], Some(0.6)),
                    senti(Polarity::Negative, 0.5),
                    TriggerCondition::Duration { seconds: 30 },
                ])
                .expect("compile");
            state.arm(Armed { id: ArmedId(i as u64), conditions: c }, 0);
        }
        // A long call that says 40 distinct phrases.
        for i in 0..40 {
            ev.on_event(&mut state, &customer(&format!("something about phrase{}", i * 3 + 1), 0.9), i);
        }
        let bytes = state.approx_bytes();
        assert!(bytes <= 4096, "{bytes} bytes");
    }

    fn ms(iso: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(iso).expect("recordedAt").timestamp_millis()
    }

    /// Replays one recorded call through `events` and the evaluator, ticking at deadlines
    /// the way the live timer would. Returns each outcome with the `recordedAt` and customer
    /// utterance id of the line that caused it.
    fn replay(file: &str, rules: &[(u64, Vec<TriggerCondition>)]) -> Vec<(Outcome, i64, Option<String>)> {
        let text = std::fs::read_to_string(calls_dir().join(file)).expect("read a recorded call");
        let mut ev = evaluator();
        let mut state = ConversationState::new();
        for (id, conditions) in rules {
            let c = ev.compile(conditions).expect("compile");
            assert_eq!(state.arm(Armed { id: ArmedId(*id), conditions: c }, 0), None);
        }
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let now = ms(v["recordedAt"].as_str().expect("recordedAt"));
            while let Some(d) = state.next_deadline().filter(|d| *d <= now) {
                out.extend(ev.on_tick(&mut state, d).into_iter().map(|o| (o, d, None)));
            }
            let n = parse_notification(line).expect("notification");
            for e in &n.events {
                let uid = match e {
                    Event::Utterance(u) => u.utterance_id.clone(),
                    _ => None,
                };
                out.extend(ev.on_event(&mut state, e, now).into_iter().map(|o| (o, now, uid.clone())));
            }
        }
        assert!(state.is_ended(), "{file}: the recording ends the conversation");
        out
    }

    #[test]
    fn replays_recorded_calls() {
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(calls_dir().join("calls.json")).expect("calls.json"))
                .expect("calls.json is JSON");
        let calls = index["calls"].as_array().expect("calls list");
        let mut refund_calls = 0;
        let mut agent_only_calls = 0;
        for call in calls {
            let file = call["file"].as_str().expect("file");
            let connected = ms(call["agentConnectedTime"].as_str().expect("agentConnectedTime"));
            let rules = vec![(1, vec![kw("refund", None)]), (2, vec![TriggerCondition::Duration { seconds: 20 }])];
            match call["scenario"].as_str() {
                Some("billing_refund") => {
                    refund_calls += 1;
                    let out = replay(file, &rules);
                    let fired: Vec<_> = out.iter().filter(|(o, _, _)| *o == Outcome::Fired(ArmedId(1))).collect();
                    assert_eq!(fired.len(), 1, "{file}: {out:?}");
                    // It fires on a labelled customer utterance itself, at that line's time. (Not
                    // always the first label: "refunded" is not the whole word "refund".)
                    let labels = call["labels"].as_array().expect("labels");
                    let label = labels
                        .iter()
                        .find(|l| l["customerUtteranceId"].as_str() == fired[0].2.as_deref())
                        .unwrap_or_else(|| panic!("{file}: fired off a labelled utterance: {fired:?}"));
                    assert_eq!(fired[0].1, ms(label["recordedAt"].as_str().expect("label time")), "{file}");
                    // The duration rule fires on the tick exactly 20 s after the agent connected.
                    assert!(out.contains(&(Outcome::Fired(ArmedId(2)), connected + 20_000, None)), "{file}: {out:?}");
                }
                Some("agent_only_keyword") => {
                    agent_only_calls += 1;
                    let out = replay(file, &rules);
                    assert!(!out.iter().any(|(o, _, _)| *o == Outcome::Fired(ArmedId(1))), "{file}: {out:?}");
                    assert!(out.iter().any(|(o, _, _)| *o == Outcome::Expired(ArmedId(1))), "{file}: {out:?}");
                }
                _ => {}
            }
        }
        assert!(refund_calls > 0 && agent_only_calls > 0, "calls.json lists both scenarios");
    }
}
