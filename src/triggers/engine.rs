//! The per-conversation rule engine: a rule set compiled once ([`CompiledRules`]) and one
//! [`ConversationEngine`] per live conversation that turns events into [`Decision`]s. Pure:
//! no I/O, no clock (time is epoch milliseconds passed in), so the live runtime and
//! `gc-assist replay` run exactly the same code.
//!
//! # Compiling
//!
//! [`CompiledRules::compile`] keeps the *enabled* rules in file order (`rule_index` in a
//! [`Decision`] is a position in [`CompiledRules::rules`]) and puts the phrases of all of them
//! in one [`KeywordIndex`]. Given the previous index, the new one starts with its phrases in
//! the same order ([`KeywordIndexBuilder::extending`]), so every [`PhraseId`](super::keywords::PhraseId) a live
//! conversation already heard keeps its meaning; the index only grows (a phrase of a removed
//! rule stays, unused). [`CompiledRules::with_phrases`] adds phrases the same way for
//! API-armed entries (a payload's keyword that no rule uses); a phrase counts from the moment
//! it joins the index, earlier utterances are not searched again.
//!
//! # Semantics
//!
//! Conditions hold as in [`super::evaluator`] (CONTRACT.md §3). On top of that, per rule and
//! conversation:
//!
//! - **Arming.** [`ConversationEngine::start`] arms the rules whose `queues` list is empty or
//!   names the conversation's queue (ids and names compare ASCII-case-insensitively). A rule
//!   with no conditions fires at once, and only then (no re-arming, no suppressions). A rule armed later (start after events, or a reload
//!   adding it) counts keywords heard earlier in the conversation, like an API arm does.
//! - **Firing.** An armed rule fires at the first event (or tick) after which all its
//!   conditions hold: [`Decision::Fire`]. Shadow rules fire the same way with `shadow: true`
//!   and count towards their cooldown and cap, so shadow statistics predict live behaviour.
//! - **Cooldown and re-arming.** After a fire the rule *cools down* for `cooldownSeconds`; at
//!   `fire + cooldown` (a deadline, see [`ConversationEngine::next_deadline`]) it re-arms if it
//!   has fired fewer than `maxPerConversation` times. Latching evidence does not carry over a
//!   fire: a keyword must be heard again in a final customer utterance at or after the re-arm
//!   (else a latched keyword would re-fire at once). Sentiment and confidence are current
//!   values and count as they are. A duration condition is a fact about the call, not
//!   evidence, but it latches too, so it restarts with the window: after a fire it counts
//!   from the fire, after a re-arm from the re-arm (a duration-only rule of 10 s with a
//!   cooldown of 20 s fires at 10 s, 40 s, 70 s … into the call, up to its cap).
//! - **Suppressions.** While cooling down, the rule keeps collecting evidence from its last
//!   fire; the first time its conditions hold in a window it records
//!   [`Decision::Suppressed`] with [`SuppressReason::Cooldown`], or [`SuppressReason::Cap`] when
//!   it has already fired `maxPerConversation` times. A capped rule keeps the same rhythm: a
//!   hold outside a window records `Cap` and opens a new window of `cooldownSeconds` in which
//!   further holds are not counted. So each reason counts at most once per cooldown window,
//!   and each count needs evidence newer than the previous fire or count (a keyword said
//!   again, a duration elapsed again); with `cooldownSeconds: 0` the window ends at the next
//!   event, so a rule on current values alone (sentiment, confidence) counts at every event
//!   after which they still hold.
//! - **Priority.** Decisions of one call come API decisions first (explicit requests, in
//!   arming order), then rule decisions by the rule's priority (critical first), then rule
//!   order.
//! - **End.** A conversation end yields [`Decision::Expired`] for every rule that is armed and
//!   never fired in it, and [`Decision::ApiExpired`] for every waiting API entry; later events
//!   are ignored.
//! - **Hot reload.** Pass the new [`CompiledRules`] to the next call (or to
//!   [`ConversationEngine::reload`]). Counters (fires, cooldown window) follow the rule `id`:
//!   a kept rule keeps them, and its collected keyword evidence too when its conditions are
//!   unchanged; a rule whose conditions changed restarts its evidence (from the whole
//!   conversation if it never fired, else from the reload). Newly added rules are armed on the
//!   live conversation if their queues match; removed or disabled rules are disarmed but
//!   their counters are kept, so removing and restoring a rule does not reset its cap.
//! - **API entries.** [`ConversationEngine::arm`] arms an injection's conditions through the
//!   evaluator's one-shot semantics (fires once, no cooldown): [`Decision::ApiFired`] /
//!   [`Decision::ApiExpired`]. One object per conversation holds both.
//!
//! # Cost
//!
//! Per event only the rules the event can affect are checked: the rules using a phrase the
//! utterance contained, the sentiment rules on a sentiment event, the confidence rules on a
//! final customer utterance, the duration rules when the clock moved, and rules whose
//! cooldown ended. With thousands of keyword rules an utterance costs one automaton pass plus
//! the rules of the phrases it said.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::evaluator::{compile, Armed, ArmedId, Condition, ConversationState, Outcome};
use super::events::{Channel, Event};
use super::keywords::{KeywordIndex, KeywordIndexBuilder};
use super::normalize::Normalizer;
use super::rules::{Rule, RuleSet};
use super::TriggerError;
use crate::contract::payload::{Priority, TriggerCondition};

/// Most conditions a rule may have here: evidence is one bit per condition. Validation
/// allows far fewer (CONTRACT.md §1: 5).
const MAX_RULE_CONDITIONS: usize = 32;

/// One enabled rule, compiled.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub rule: Arc<Rule>,
    /// The rule id, shared with every decision about it.
    pub id: Arc<str>,
    pub conditions: Arc<[Condition]>,
    pub cooldown_ms: i64,
}

/// A rule set compiled against one keyword index; shared by every conversation.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    rules: Vec<CompiledRule>,
    index: Arc<KeywordIndex>,
    /// Which compiled set this is: conversations notice a reload by a new value.
    generation: u64,
    /// Per phrase id: (rule index, condition index) of the keyword conditions using it.
    by_phrase: Vec<Vec<(u32, u8)>>,
    sentiment_rules: Vec<u32>,
    confidence_rules: Vec<u32>,
    duration_rules: Vec<u32>,
    /// Each rule's id and conditions, in rule order: what a conversation's slots are
    /// aligned with. Conversations share it (one pointer each) instead of every slot holding
    /// its own two (memory: a slot per rule and live conversation).
    keys: Arc<[SlotKey]>,
}

/// A rule's id and compiled conditions, as a conversation's slots were synced to them.
type SlotKey = (Arc<str>, Arc<[Condition]>);

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl CompiledRules {
    /// Compiles the enabled rules of `set`. With `base`, the new index extends it so phrase
    /// ids stay stable (see the module docs); pass the live index on every reload.
    pub fn compile(set: &RuleSet, base: Option<&KeywordIndex>) -> Result<CompiledRules, TriggerError> {
        let mut builder = base.map_or_else(KeywordIndexBuilder::new, KeywordIndexBuilder::extending);
        let enabled: Vec<&Rule> = set.rules.iter().filter(|r| r.enabled).collect();
        for rule in &enabled {
            if rule.conditions.len() > MAX_RULE_CONDITIONS {
                return Err(TriggerError::Malformed {
                    what: format!("rule {:?}", rule.id),
                    reason: format!("at most {MAX_RULE_CONDITIONS} conditions per rule"),
                });
            }
            for c in &rule.conditions {
                if let TriggerCondition::Keyword { phrase, .. } = c {
                    builder.add(phrase)?;
                }
            }
        }
        let index = builder.build()?;
        let rules = enabled
            .into_iter()
            .map(|r| {
                Ok(CompiledRule {
                    id: Arc::from(r.id.as_str()),
                    conditions: compile(&index, &r.conditions)?,
                    cooldown_ms: i64::from(r.cooldown_seconds) * 1000,
                    rule: Arc::new(r.clone()),
                })
            })
            .collect::<Result<Vec<_>, TriggerError>>()?;
        Ok(CompiledRules::assemble(rules, Arc::new(index), GENERATION.fetch_add(1, Ordering::Relaxed)))
    }

    /// The same rules over an index extended with `phrases` (for API-armed entries whose
    /// keywords no rule uses). Rule conditions and phrase ids are unchanged, so live
    /// conversations carry on without noticing; returns `self` unchanged in content when
    /// every phrase is already indexed.
    pub fn with_phrases<'p>(&self, phrases: impl IntoIterator<Item = &'p str>) -> Result<CompiledRules, TriggerError> {
        let mut builder = KeywordIndexBuilder::extending(&self.index);
        for p in phrases {
            builder.add(p)?;
        }
        let index = builder.build()?;
        Ok(CompiledRules::assemble(self.rules.clone(), Arc::new(index), self.generation))
    }

    fn assemble(rules: Vec<CompiledRule>, index: Arc<KeywordIndex>, generation: u64) -> CompiledRules {
        let mut by_phrase: Vec<Vec<(u32, u8)>> = vec![Vec::new(); index.len()];
        let (mut sentiment_rules, mut confidence_rules, mut duration_rules) = (Vec::new(), Vec::new(), Vec::new());
        for (r, rule) in rules.iter().enumerate() {
            // Rule counts fit u32 (a rules file is far smaller), condition counts fit u8
            // (checked in `compile`).
            let r = r as u32;
            let mut has = [false; 3];
            for (ci, c) in rule.conditions.iter().enumerate() {
                match c {
                    Condition::Keyword { phrase, .. } => {
                        if let Some(list) = by_phrase.get_mut(phrase.0 as usize) {
                            list.push((r, ci as u8));
                        }
                    }
                    Condition::Sentiment { .. } => has[0] = true,
                    Condition::Confidence { .. } => has[1] = true,
                    Condition::Duration { .. } => has[2] = true,
                }
            }
            for (flag, list) in has.into_iter().zip([&mut sentiment_rules, &mut confidence_rules, &mut duration_rules])
            {
                if flag {
                    list.push(r);
                }
            }
        }
        let keys = rules.iter().map(|r| (r.id.clone(), r.conditions.clone())).collect();
        CompiledRules { rules, index, generation, by_phrase, sentiment_rules, confidence_rules, duration_rules, keys }
    }

    /// The enabled rules, in file order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// The keyword index every conversation evaluated with these rules matches against.
    pub fn index(&self) -> &Arc<KeywordIndex> {
        &self.index
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Position of a rule by id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|r| &*r.id == id)
    }

    /// Compiles an API entry's conditions against this index; a keyword not in it is
    /// [`TriggerError::UnknownPhrase`] (extend with [`CompiledRules::with_phrases`] first).
    pub fn compile_conditions(&self, conditions: &[TriggerCondition]) -> Result<Arc<[Condition]>, TriggerError> {
        compile(&self.index, conditions)
    }
}

/// Why a rule whose conditions held did not fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuppressReason {
    /// Inside the cooldown after its last fire.
    Cooldown,
    /// It already fired `maxPerConversation` times.
    Cap,
}

impl SuppressReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Cooldown => "cooldown",
            SuppressReason::Cap => "cap",
        }
    }
}

/// What the engine decided at one event or tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The rule's conditions hold: show its prompt (or, `shadow`, only record it).
    Fire { rule_index: usize, rule_id: Arc<str>, shadow: bool, at_ms: i64 },
    /// The conditions held but the rule is cooling down or capped.
    Suppressed { rule_index: usize, rule_id: Arc<str>, reason: SuppressReason, at_ms: i64 },
    /// The conversation ended while the rule was armed and had never fired.
    Expired { rule_index: usize, rule_id: Arc<str>, at_ms: i64 },
    /// An API-armed entry's conditions hold.
    ApiFired { id: ArmedId, at_ms: i64 },
    /// The conversation ended before an API-armed entry fired.
    ApiExpired { id: ArmedId, at_ms: i64 },
}

impl Decision {
    /// The rule id, for rule decisions.
    pub fn rule_id(&self) -> Option<&str> {
        match self {
            Decision::Fire { rule_id, .. }
            | Decision::Suppressed { rule_id, .. }
            | Decision::Expired { rule_id, .. } => Some(rule_id),
            Decision::ApiFired { .. } | Decision::ApiExpired { .. } => None,
        }
    }

    pub fn at_ms(&self) -> i64 {
        match self {
            Decision::Fire { at_ms, .. }
            | Decision::Suppressed { at_ms, .. }
            | Decision::Expired { at_ms, .. }
            | Decision::ApiFired { at_ms, .. }
            | Decision::ApiExpired { at_ms, .. } => *at_ms,
        }
    }
}

/// Where a rule stands on one conversation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Not armed here: its queues do not match, or it left the rule set.
    Off,
    /// Waiting for its conditions.
    Armed,
    /// After a fire (or a counted cap suppression) until `until`; `noted` once this window
    /// recorded its suppression.
    Cooling { until: i64, noted: bool },
}

/// Per rule and conversation. Kept by rule id across reloads. Its rule's id and conditions
/// are the conversation's `keys` at the same index (or kept beside it once retired).
#[derive(Debug, Clone)]
struct Slot {
    phase: Phase,
    fires: u32,
    /// Bit i: keyword condition i has evidence in the current window.
    evidence: u32,
    /// Start of the current evidence window: `i64::MIN` (the whole conversation) until the
    /// rule first fires, then the last fire, counted suppression or re-arm. Duration
    /// conditions count from the later of this and the agent's connection.
    since: i64,
}

thread_local! {
    /// Normalization scratch, one per thread rather than one per conversation (memory).
    static NORMALIZER: RefCell<Normalizer> = RefCell::new(Normalizer::new());
}

/// One conversation's evaluator state, rule counters and API-armed entries.
#[derive(Debug, Clone)]
pub struct ConversationEngine {
    state: ConversationState,
    /// Aligned with the rules of `generation`.
    slots: Vec<Slot>,
    /// The id and conditions of each slot's rule (the evidence was collected for those
    /// conditions: it is kept across a reload only if they are equal).
    keys: Arc<[SlotKey]>,
    /// Rules no longer in the set, kept for their counters.
    retired: Vec<(SlotKey, Slot)>,
    generation: u64,
    /// The queue given to `start` (for arming rules added by a reload); `None` before start.
    queue: Option<Queue>,
    /// Earliest cooldown end among the slots (`i64::MAX` when none), so events skip the scan.
    next_rearm: i64,
    /// Slots currently cooling down, so re-arming never scans every rule.
    cooling: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Queue {
    id: Option<Box<str>>,
    name: Option<Box<str>>,
}

impl Queue {
    fn admits(&self, rule: &Rule) -> bool {
        rule.queues.is_empty()
            || rule.queues.iter().any(|q| {
                self.id.as_deref().is_some_and(|id| id.eq_ignore_ascii_case(q))
                    || self.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(q))
            })
    }
}

impl Default for ConversationEngine {
    fn default() -> ConversationEngine {
        ConversationEngine::new()
    }
}

impl ConversationEngine {
    /// A conversation with nothing armed. Events before [`ConversationEngine::start`] update
    /// its state (what was said, sentiment) but fire no rule.
    pub fn new() -> ConversationEngine {
        ConversationEngine {
            state: ConversationState::new(),
            slots: Vec::new(),
            keys: Arc::from(Vec::new()),
            retired: Vec::new(),
            generation: 0,
            queue: None,
            next_rearm: i64::MAX,
            cooling: Vec::new(),
        }
    }

    /// The evaluator state (sentiment, agent connection, end).
    pub fn state(&self) -> &ConversationState {
        &self.state
    }

    pub fn is_ended(&self) -> bool {
        self.state.is_ended()
    }

    /// Arms the rules of `rules` whose queues match (`queue_id` and, when known, the queue's
    /// name); rules that already hold (no conditions, keywords heard before) fire at once.
    /// Calling it again changes nothing.
    pub fn start(
        &mut self,
        rules: &CompiledRules,
        queue_id: Option<&str>,
        queue_name: Option<&str>,
        now_ms: i64,
    ) -> Vec<Decision> {
        if self.queue.is_some() {
            return Vec::new();
        }
        self.queue = Some(Queue { id: queue_id.map(Box::from), name: queue_name.map(Box::from) });
        self.state.advance(now_ms);
        if self.state.is_ended() {
            return Vec::new();
        }
        // Force a resync: every rule is new to this conversation.
        self.generation = 0;
        let mut out = Vec::new();
        self.sync(rules, &mut out);
        Self::finish(rules, out)
    }

    /// Applies a (possibly) new rule set at once rather than at the next event.
    pub fn reload(&mut self, rules: &CompiledRules, now_ms: i64) -> Vec<Decision> {
        if self.state.is_ended() {
            return Vec::new();
        }
        self.state.advance(now_ms);
        let mut out = Vec::new();
        // Sync first: a reload realigns the slots, and the re-armed indices must be the new ones.
        self.sync(rules, &mut out);
        let due = self.rearm_due();
        self.check(rules, due, self.state.now_ms(), &mut out);
        Self::finish(rules, out)
    }

    /// Arms an API entry (an injection's conditions, compiled by
    /// [`CompiledRules::compile_conditions`]). `Some` when it fires at once or the
    /// conversation has ended; else it waits.
    pub fn arm(&mut self, id: ArmedId, conditions: Arc<[Condition]>, now_ms: i64) -> Option<Decision> {
        let at_ms = self.state.now_ms().max(now_ms);
        self.state.arm(Armed { id, conditions }, now_ms).map(|o| api_decision(o, at_ms))
    }

    /// Removes a waiting API entry; `false` if it is not armed.
    pub fn disarm(&mut self, id: ArmedId) -> bool {
        self.state.disarm(id)
    }

    /// Applies one event that arrived at `now_ms`.
    pub fn on_event(&mut self, rules: &CompiledRules, event: &Event, now_ms: i64) -> Vec<Decision> {
        if self.state.is_ended() {
            return Vec::new();
        }
        self.state.advance(now_ms);
        let now = self.state.now_ms();
        let mut out = Vec::new();
        self.sync(rules, &mut out);
        // Cooldowns that ended by now re-arm before the event: its evidence is newer than
        // them. They are checked with the other candidates, after the event is applied.
        let mut candidates = self.rearm_due();
        let slots = &mut self.slots;
        let ended = NORMALIZER.with(|n| {
            let mut n = n.borrow_mut();
            self.state.observe(&rules.index, &mut n, event, now, |phrase, confidence| {
                let Some(users) = rules.by_phrase.get(phrase.0 as usize) else { return };
                for &(r, ci) in users {
                    let (Some(slot), Some(rule)) = (slots.get_mut(r as usize), rules.rules.get(r as usize)) else {
                        continue;
                    };
                    if slot.phase == Phase::Off {
                        continue;
                    }
                    if let Some(Condition::Keyword { threshold, .. }) = rule.conditions.get(ci as usize) {
                        let c = confidence.unwrap_or(f64::NEG_INFINITY);
                        if threshold.is_none_or(|t| c >= t) {
                            slot.evidence |= 1 << ci;
                            candidates.push(r);
                        }
                    }
                }
            })
        });
        if ended {
            for outcome in self.state.take_expired() {
                out.push(api_decision(outcome, now));
            }
            for (i, (slot, (id, _))) in self.slots.iter_mut().zip(self.keys.iter()).enumerate() {
                if slot.phase == Phase::Armed && slot.fires == 0 {
                    out.push(Decision::Expired { rule_index: i, rule_id: id.clone(), at_ms: now });
                }
                slot.phase = Phase::Off;
            }
            self.next_rearm = i64::MAX;
            self.cooling.clear();
            return Self::finish(rules, out);
        }
        match event {
            Event::Sentiment { .. } => candidates.extend_from_slice(&rules.sentiment_rules),
            Event::Utterance(u) if u.is_final && u.channel == Channel::Customer => {
                candidates.extend_from_slice(&rules.confidence_rules)
            }
            _ => {}
        }
        if self.state.agent_connected_at_ms().is_some() {
            candidates.extend_from_slice(&rules.duration_rules);
        }
        self.check(rules, candidates, now, &mut out);
        for outcome in self.state.fire_ready() {
            out.push(api_decision(outcome, now));
        }
        Self::finish(rules, out)
    }

    /// Re-evaluates at `now_ms` with no new event: call it at
    /// [`ConversationEngine::next_deadline`] (durations reached, cooldowns ended).
    pub fn on_tick(&mut self, rules: &CompiledRules, now_ms: i64) -> Vec<Decision> {
        if self.state.is_ended() {
            return Vec::new();
        }
        self.state.advance(now_ms);
        let now = self.state.now_ms();
        let mut out = Vec::new();
        self.sync(rules, &mut out);
        let mut candidates = self.rearm_due();
        if self.state.agent_connected_at_ms().is_some() {
            candidates.extend_from_slice(&rules.duration_rules);
        }
        self.check(rules, candidates, now, &mut out);
        for outcome in self.state.fire_ready() {
            out.push(api_decision(outcome, now));
        }
        Self::finish(rules, out)
    }

    /// The earliest future moment something can happen without an event: a duration
    /// condition of an armed rule or API entry is reached, or a cooldown ends. `None` when
    /// nothing is pending.
    pub fn next_deadline(&self, rules: &CompiledRules) -> Option<i64> {
        if self.state.is_ended() {
            return None;
        }
        let now = self.state.now_ms();
        let mut best = self.state.next_deadline();
        let mut consider = |d: i64| {
            if d > now {
                best = Some(best.map_or(d, |b: i64| b.min(d)));
            }
        };
        if self.next_rearm != i64::MAX {
            consider(self.next_rearm);
        }
        if let Some(at) = self.state.agent_connected_at_ms() {
            for &r in &rules.duration_rules {
                // A window that already counted its suppression waits for its end instead.
                let Some(slot) = self
                    .slots
                    .get(r as usize)
                    .filter(|s| matches!(s.phase, Phase::Armed | Phase::Cooling { noted: false, .. }))
                else {
                    continue;
                };
                let Some(rule) = rules.rules.get(r as usize) else { continue };
                for c in rule.conditions.iter() {
                    if let Condition::Duration { ms } = c {
                        consider(at.max(slot.since).saturating_add(*ms));
                    }
                }
            }
        }
        best
    }

    /// How many times rule `id` fired in this conversation.
    pub fn fires(&self, id: &str) -> u32 {
        let live = self.slots.iter().zip(self.keys.iter()).map(|(s, (k, _))| (k, s));
        live.chain(self.retired.iter().map(|((k, _), s)| (k, s))).find(|(k, _)| &***k == id).map_or(0, |(_, s)| s.fires)
    }

    /// Approximate memory of this conversation in bytes (shared conditions counted once per
    /// slot pointer, not in full).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<ConversationEngine>() + self.state.approx_bytes() - std::mem::size_of::<ConversationState>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.retired.capacity() * std::mem::size_of::<(SlotKey, Slot)>()
    }

    /// Brings the slots in line with `rules` when it is a different compiled set.
    fn sync(&mut self, rules: &CompiledRules, out: &mut Vec<Decision>) {
        if self.generation == rules.generation {
            return;
        }
        self.generation = rules.generation;
        let Some(queue) = self.queue.clone() else {
            return;
        };
        let keys = std::mem::replace(&mut self.keys, rules.keys.clone());
        let current = self.slots.drain(..).zip(keys.iter().cloned()).map(|(s, k)| (k, s));
        let mut old: HashMap<Arc<str>, (Arc<[Condition]>, Slot)> =
            current.chain(self.retired.drain(..)).map(|((id, conditions), s)| (id, (conditions, s))).collect();
        let mut new_slots = Vec::with_capacity(rules.rules.len());
        let mut fresh = Vec::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            let admitted = queue.admits(&rule.rule);
            let slot = match old.remove(&rule.id) {
                Some((conditions, mut s)) => {
                    let same = *conditions == *rule.conditions;
                    if !admitted {
                        s.phase = Phase::Off;
                        s.evidence = 0;
                    } else if s.phase == Phase::Off || !same {
                        if s.phase == Phase::Off {
                            s.phase = Phase::Armed;
                        }
                        (s.evidence, s.since) =
                            if s.fires == 0 { (self.seed(rule), i64::MIN) } else { (0, self.state.now_ms()) };
                        fresh.push(i as u32);
                    }
                    s
                }
                None => {
                    let phase = if admitted { Phase::Armed } else { Phase::Off };
                    let evidence = if admitted { self.seed(rule) } else { 0 };
                    if admitted {
                        fresh.push(i as u32);
                    }
                    Slot { phase, fires: 0, evidence, since: i64::MIN }
                }
            };
            new_slots.push(slot);
        }
        self.slots = new_slots;
        self.retired = old
            .into_iter()
            .map(|(id, (conditions, mut s))| {
                s.phase = Phase::Off;
                s.evidence = 0;
                ((id, conditions), s)
            })
            .collect();
        self.cooling = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.phase, Phase::Cooling { .. }))
            .map(|(i, _)| i as u32)
            .collect();
        self.next_rearm = self.earliest_rearm();
        let now = self.state.now_ms();
        self.check(rules, fresh, now, out);
    }

    /// Keyword evidence from the whole conversation so far, for a rule armed now.
    fn seed(&self, rule: &CompiledRule) -> u32 {
        let mut bits = 0;
        for (ci, c) in rule.conditions.iter().enumerate() {
            if let Condition::Keyword { phrase, threshold } = c {
                if self.state.heard_confidence(*phrase).is_some_and(|best| threshold.is_none_or(|t| best >= t)) {
                    bits |= 1 << ci;
                }
            }
        }
        bits
    }

    fn earliest_rearm(&self) -> i64 {
        self.cooling
            .iter()
            .filter_map(|&i| match self.slots.get(i as usize)?.phase {
                Phase::Cooling { until, .. } => Some(until),
                _ => None,
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Ends every cooldown due by now: the rule re-arms with no keyword evidence. Returns the
    /// re-armed rules, which the caller checks once the current event is applied (a
    /// sentiment- or duration-only rule may hold at once).
    fn rearm_due(&mut self) -> Vec<u32> {
        let now = self.state.now_ms();
        let mut due = Vec::new();
        if now < self.next_rearm {
            return due;
        }
        let slots = &mut self.slots;
        self.cooling.retain(|&i| {
            let Some(s) = slots.get_mut(i as usize) else { return false };
            match s.phase {
                Phase::Cooling { until, .. } if until <= now => {
                    s.phase = Phase::Armed;
                    s.evidence = 0;
                    s.since = until;
                    due.push(i);
                    false
                }
                Phase::Cooling { .. } => true,
                _ => false,
            }
        });
        self.next_rearm = self.earliest_rearm();
        due
    }

    /// Checks the candidate rules (any order, duplicates allowed) and records decisions.
    fn check(&mut self, rules: &CompiledRules, mut candidates: Vec<u32>, now: i64, out: &mut Vec<Decision>) {
        if candidates.is_empty() {
            return;
        }
        candidates.sort_unstable();
        candidates.dedup();
        for r in candidates {
            let i = r as usize;
            let (Some(slot), Some(rule)) = (self.slots.get(i), rules.rules.get(i)) else { continue };
            if slot.phase == Phase::Off || !self.all_hold(rule, slot) {
                continue;
            }
            let max = rule.rule.max_per_conversation.max(1);
            let until = now.saturating_add(rule.cooldown_ms);
            let Some(slot) = self.slots.get_mut(i) else { continue };
            match slot.phase {
                Phase::Off => {}
                Phase::Armed if slot.fires < max => {
                    slot.fires += 1;
                    slot.phase = Phase::Cooling { until, noted: false };
                    slot.evidence = 0;
                    slot.since = now;
                    self.next_rearm = self.next_rearm.min(until);
                    self.cooling.push(r);
                    out.push(Decision::Fire {
                        rule_index: i,
                        rule_id: rule.id.clone(),
                        shadow: rule.rule.shadow,
                        at_ms: now,
                    });
                }
                Phase::Armed => {
                    slot.phase = Phase::Cooling { until, noted: true };
                    slot.evidence = 0;
                    slot.since = now;
                    self.next_rearm = self.next_rearm.min(until);
                    self.cooling.push(r);
                    out.push(Decision::Suppressed {
                        rule_index: i,
                        rule_id: rule.id.clone(),
                        reason: SuppressReason::Cap,
                        at_ms: now,
                    });
                }
                Phase::Cooling { noted: true, .. } => {}
                Phase::Cooling { until, noted: false } => {
                    slot.phase = Phase::Cooling { until, noted: true };
                    let reason = if slot.fires >= max { SuppressReason::Cap } else { SuppressReason::Cooldown };
                    out.push(Decision::Suppressed { rule_index: i, rule_id: rule.id.clone(), reason, at_ms: now });
                }
            }
        }
    }

    fn all_hold(&self, rule: &CompiledRule, slot: &Slot) -> bool {
        // No conditions: the only evidence is being armed on the conversation, once.
        if rule.conditions.is_empty() {
            return slot.since == i64::MIN;
        }
        rule.conditions.iter().enumerate().all(|(ci, c)| match *c {
            Condition::Keyword { .. } => slot.evidence & (1 << ci) != 0,
            Condition::Duration { ms } => self
                .state
                .agent_connected_at_ms()
                .is_some_and(|at| self.state.now_ms() >= at.max(slot.since).saturating_add(ms)),
            ref other => self.state.holds(other),
        })
    }

    /// Orders one call's decisions: API first (in arming order), then rules by priority
    /// (critical first) and rule order.
    fn finish(rules: &CompiledRules, mut out: Vec<Decision>) -> Vec<Decision> {
        if out.len() > 1 {
            out.sort_by_key(|d| match d {
                Decision::ApiFired { .. } | Decision::ApiExpired { .. } => (0, Reverse(Priority::Critical), 0),
                Decision::Fire { rule_index, .. }
                | Decision::Suppressed { rule_index, .. }
                | Decision::Expired { rule_index, .. } => {
                    let priority = rules.rules.get(*rule_index).map_or(Priority::Normal, |r| r.rule.priority);
                    (1, Reverse(priority), *rule_index)
                }
            });
        }
        out
    }
}

fn api_decision(o: Outcome, at_ms: i64) -> Decision {
    match o {
        Outcome::Fired(id) => Decision::ApiFired { id, at_ms },
        Outcome::Expired(id) => Decision::ApiExpired { id, at_ms },
    }
}

#[cfg(test)]
mod tests {
    use super::super::events::Utterance;
    use super::super::rules::RulePrompt;
    use super::*;
    use crate::contract::payload::Polarity;

    fn kw(phrase: &str) -> TriggerCondition {
        TriggerCondition::Keyword { phrase: phrase.into(), threshold: None }
    }

    fn kwt(phrase: &str, t: f64) -> TriggerCondition {
        TriggerCondition::Keyword { phrase: phrase.into(), threshold: Some(t) }
    }

    fn senti(polarity: Polarity, threshold: f64) -> TriggerCondition {
        TriggerCondition::Sentiment { polarity, threshold }
    }

    fn dur(seconds: u32) -> TriggerCondition {
        TriggerCondition::Duration { seconds }
    }

    fn conf(threshold: f64) -> TriggerCondition {
        TriggerCondition::Confidence { threshold }
    }

    fn rule(id: &str, conditions: Vec<TriggerCondition>) -> Rule {
        Rule::new(id, RulePrompt::Catalogue(uuid::Uuid::nil()), conditions)
    }

    fn with(mut r: Rule, f: impl FnOnce(&mut Rule)) -> Rule {
        f(&mut r);
        r
    }

    fn utt(channel: Channel, is_final: bool, text: &str, confidence: f64) -> Event {
        Event::Utterance(Utterance {
            is_final,
            channel,
            text: text.into(),
            confidence: Some(confidence),
            utterance_id: None,
        })
    }

    fn cust(text: &str) -> Event {
        utt(Channel::Customer, true, text, 0.9)
    }

    fn set(rules: Vec<Rule>) -> RuleSet {
        RuleSet { origin: "test".into(), rules }
    }

    fn label(d: &Decision) -> String {
        match d {
            Decision::Fire { rule_id, shadow: false, .. } => format!("fire {rule_id}"),
            Decision::Fire { rule_id, shadow: true, .. } => format!("shadow {rule_id}"),
            Decision::Suppressed { rule_id, reason, .. } => format!("{} {rule_id}", reason.as_str()),
            Decision::Expired { rule_id, .. } => format!("expired {rule_id}"),
            Decision::ApiFired { id, .. } => format!("api {}", id.0),
            Decision::ApiExpired { id, .. } => format!("api-expired {}", id.0),
        }
    }

    /// Starts a conversation in queue `q1` at t = 0, then feeds `(seconds, event)` pairs,
    /// ticking at every deadline on the way as the live timer would. Returns
    /// "seconds: decision" lines (ticks included), sorted by time then decision order.
    fn run(rules: &CompiledRules, events: &[(i64, Event)]) -> Vec<String> {
        let mut e = ConversationEngine::new();
        let mut out: Vec<String> =
            e.start(rules, Some("q1"), Some("Billing"), 0).iter().map(|d| format!("0: {}", label(d))).collect();
        for (secs, event) in events {
            let now = secs * 1000;
            while let Some(d) = e.next_deadline(rules).filter(|d| *d <= now) {
                let decided = e.on_tick(rules, d);
                out.extend(decided.iter().map(|x| format!("{}: {}", d / 1000, label(x))));
            }
            let decided = e.on_event(rules, event, now);
            out.extend(decided.iter().map(|x| format!("{secs}: {}", label(x))));
        }
        out
    }

    fn compiled(rules: Vec<Rule>) -> CompiledRules {
        CompiledRules::compile(&set(rules), None).expect("compile")
    }

    /// (name, rules, events as (seconds, event), expected "seconds: decision" lines).
    type Case = (&'static str, Vec<Rule>, Vec<(i64, Event)>, Vec<&'static str>);

    #[test]
    fn semantics_table() {
        use Polarity::*;
        let connected = Event::AgentConnected { at_ms: 0 };
        let end = Event::ConversationEnded;
        let cases: Vec<Case> = vec![
            (
                "keyword fires",
                vec![rule("r", vec![kw("refund")])],
                vec![(1, cust("I want a refund"))],
                vec!["1: fire r"],
            ),
            (
                "latching: keyword then sentiment",
                vec![rule("r", vec![kw("refund"), senti(Negative, 0.5)])],
                vec![(1, cust("refund please")), (2, cust("ok")), (3, Event::Sentiment { score: -0.6 })],
                vec!["3: fire r"],
            ),
            (
                "agent speech ignored",
                vec![rule("r", vec![kw("refund")])],
                vec![(1, utt(Channel::Agent, true, "a refund", 0.9)), (2, end.clone())],
                vec!["2: expired r"],
            ),
            (
                "partials ignored",
                vec![rule("r", vec![kw("refund")])],
                vec![(1, utt(Channel::Customer, false, "refund", 0.9)), (2, cust("re fun"))],
                vec![],
            ),
            (
                "accents and case",
                vec![rule("r", vec![kw("café")])],
                vec![(1, cust("The CAFE\u{301}!"))],
                vec!["1: fire r"],
            ),
            (
                "multi-word phrase",
                vec![rule("r", vec![kw("cancel my account")])],
                vec![(1, cust("cancel, then my account")), (2, cust("Please CANCEL my account."))],
                vec!["2: fire r"],
            ),
            (
                "punctuation and whole words",
                vec![rule("r", vec![kw("refund")])],
                vec![(1, cust("refunding")), (2, cust("re-fund")), (3, cust("\"refund\"?"))],
                vec!["3: fire r"],
            ),
            (
                "sentiment boundaries",
                vec![
                    rule("neg", vec![senti(Negative, 0.5)]),
                    rule("pos", vec![senti(Positive, 0.5)]),
                    rule("neu", vec![senti(Neutral, 0.5)]),
                ],
                vec![
                    (1, Event::Sentiment { score: 0.5 }),
                    (2, Event::Sentiment { score: 0.49 }),
                    (3, Event::Sentiment { score: -0.5 }),
                ],
                vec!["1: fire pos", "2: fire neu", "3: fire neg"],
            ),
            (
                "duration fires on the tick at the boundary",
                vec![rule("r", vec![dur(30)])],
                vec![(1, connected.clone()), (40, cust("hi"))],
                vec!["30: fire r"],
            ),
            (
                "duration needs the agent",
                vec![rule("r", vec![dur(1)])],
                vec![(5, cust("hi")), (6, end.clone())],
                vec!["6: expired r"],
            ),
            (
                "confidence gate on the latest customer utterance",
                vec![rule("r", vec![conf(0.8)])],
                vec![(1, utt(Channel::Customer, true, "hmm", 0.7)), (2, utt(Channel::Customer, true, "yes", 0.8))],
                vec!["2: fire r"],
            ),
            (
                "keyword threshold",
                vec![rule("r", vec![kwt("refund", 0.8)])],
                vec![
                    (1, utt(Channel::Customer, true, "refund", 0.79)),
                    (2, utt(Channel::Customer, true, "refund", 0.81)),
                ],
                vec!["2: fire r"],
            ),
            (
                "max per conversation 1: later holds are capped, once per window",
                vec![rule("r", vec![kw("refund")])],
                vec![(1, cust("refund")), (2, cust("refund")), (3, cust("refund"))],
                vec!["1: fire r", "2: cap r", "3: cap r"],
            ),
            (
                "cooldown: re-arm needs the keyword again",
                vec![with(rule("r", vec![kw("refund")]), |r| {
                    r.cooldown_seconds = 10;
                    r.max_per_conversation = 3;
                })],
                vec![
                    (1, cust("refund")),
                    (5, cust("refund")),
                    (6, cust("refund")),
                    (12, cust("hello")),
                    (13, cust("refund")),
                ],
                vec!["1: fire r", "5: cooldown r", "13: fire r"],
            ),
            (
                "cap after cooldown",
                vec![with(rule("r", vec![kw("refund")]), |r| {
                    r.cooldown_seconds = 10;
                    r.max_per_conversation = 2;
                })],
                vec![
                    (1, cust("refund")),
                    (12, cust("refund")),
                    (15, cust("refund")),
                    (18, cust("refund")),
                    (30, cust("refund")),
                ],
                vec!["1: fire r", "12: fire r", "15: cap r", "30: cap r"],
            ),
            (
                "duration-only rule repeats after each re-arm until its cap",
                vec![with(rule("r", vec![dur(10)]), |r| {
                    r.cooldown_seconds = 20;
                    r.max_per_conversation = 3;
                })],
                vec![(0, connected.clone()), (100, end.clone())],
                // Durations restart with each window: 10 s after the fire (a cooldown
                // suppression), 10 s after the re-arm at 30 s (a fire), …
                vec![
                    "10: fire r",
                    "20: cooldown r",
                    "40: fire r",
                    "50: cooldown r",
                    "70: fire r",
                    "80: cap r",
                    "100: cap r",
                ],
            ),
            (
                "priority then rule order",
                vec![
                    rule("a", vec![kw("fraud")]),
                    with(rule("b", vec![kw("fraud")]), |r| r.priority = Priority::Critical),
                    with(rule("c", vec![kw("fraud")]), |r| r.priority = Priority::Low),
                    rule("d", vec![kw("fraud")]),
                ],
                vec![(1, cust("fraud"))],
                vec!["1: fire b", "1: fire a", "1: fire d", "1: fire c"],
            ),
            (
                "shadow fires are marked",
                vec![with(rule("r", vec![kw("refund")]), |r| r.shadow = true)],
                vec![(1, cust("refund"))],
                vec!["1: shadow r"],
            ),
            (
                "queues: other queue not armed",
                vec![
                    with(rule("mine", vec![kw("refund")]), |r| r.queues = vec!["BILLING".into()]),
                    with(rule("other", vec![kw("refund")]), |r| r.queues = vec!["q2".into()]),
                ],
                vec![(1, cust("refund")), (2, end.clone())],
                vec!["1: fire mine"],
            ),
            ("no conditions fires at start", vec![rule("r", vec![])], vec![(1, cust("refund"))], vec!["0: fire r"]),
            (
                "end expires unfired rules only, then nothing",
                vec![rule("a", vec![kw("refund")]), rule("b", vec![kw("fraud")])],
                vec![(1, cust("refund")), (2, end.clone()), (3, cust("fraud"))],
                vec!["1: fire a", "2: expired b"],
            ),
            (
                "disabled rules do nothing",
                vec![with(rule("r", vec![kw("refund")]), |r| r.enabled = false)],
                vec![(1, cust("refund")), (2, end.clone())],
                vec![],
            ),
        ];
        for (name, rules, events, want) in cases {
            let compiled = compiled(rules);
            assert_eq!(run(&compiled, &events), want, "case: {name}");
        }
    }

    #[test]
    fn reload_keeps_counters_arms_new_rules_and_disarms_removed_ones() {
        let v1 = compiled(vec![rule("a", vec![kw("refund")]), rule("b", vec![kw("fraud")])]);
        let mut e = ConversationEngine::new();
        assert!(e.start(&v1, Some("q1"), None, 0).is_empty());
        assert_eq!(e.on_event(&v1, &cust("refund and cancel"), 1000).iter().map(label).collect::<Vec<_>>(), ["fire a"]);
        // v2: `a` kept (its counter too), `b` removed, `c` new and already satisfied by the
        // "refund" said before the reload ("cancel" was not in the index then, so it was not
        // heard: phrases count from when they join the index).
        let v2 = CompiledRules::compile(
            &set(vec![rule("a", vec![kw("refund")]), rule("c", vec![kw("refund")]), rule("d", vec![kw("cancel")])]),
            Some(v1.index()),
        )
        .expect("compile v2");
        assert_eq!(v2.index().lookup("refund"), v1.index().lookup("refund"), "phrase ids stay stable");
        assert_eq!(e.reload(&v2, 2000).iter().map(label).collect::<Vec<_>>(), ["fire c"]);
        assert_eq!(
            e.on_event(&v2, &cust("refund fraud"), 3000).iter().map(label).collect::<Vec<_>>(),
            ["cap a", "cap c"]
        );
        assert_eq!(e.fires("a"), 1);
        // v3 restores `b`: it was never fired, so it re-arms with the whole conversation's
        // evidence ("fraud" was said) and fires.
        let v3 = CompiledRules::compile(&set(vec![rule("b", vec![kw("fraud")])]), Some(v2.index())).expect("v3");
        assert_eq!(e.on_event(&v3, &cust("hello"), 4000).iter().map(label).collect::<Vec<_>>(), ["fire b"]);
        assert_eq!(e.fires("a"), 1, "a removed rule keeps its counter");
    }

    #[test]
    fn a_reload_that_reorders_rules_keeps_cooldowns() {
        let a = with(rule("a", vec![kw("refund")]), |r| {
            r.cooldown_seconds = 10;
            r.max_per_conversation = 2;
        });
        let v1 = compiled(vec![a.clone(), rule("b", vec![kw("fraud")])]);
        let mut e = ConversationEngine::new();
        e.start(&v1, None, None, 0);
        assert_eq!(e.on_event(&v1, &cust("refund"), 1000).iter().map(label).collect::<Vec<_>>(), ["fire a"]);
        let v2 = CompiledRules::compile(&set(vec![rule("b", vec![kw("fraud")]), a]), Some(v1.index())).expect("v2");
        assert_eq!(e.on_event(&v2, &cust("refund"), 5000).iter().map(label).collect::<Vec<_>>(), ["cooldown a"]);
        assert_eq!(e.next_deadline(&v2), Some(11_000));
        assert!(e.on_tick(&v2, 11_000).is_empty());
        let d = e.on_event(&v2, &cust("refund"), 12_000);
        assert_eq!(d, [Decision::Fire { rule_index: 1, rule_id: Arc::from("a"), shadow: false, at_ms: 12_000 }]);
    }

    #[test]
    fn api_entries_share_the_conversation() {
        let rules = compiled(vec![rule("r", vec![kw("refund")])]).with_phrases(["chargeback"]).expect("extend");
        let mut e = ConversationEngine::new();
        e.start(&rules, None, None, 0);
        let c = rules.compile_conditions(&[kw("chargeback")]).expect("compile");
        assert_eq!(e.arm(ArmedId(7), c.clone(), 0), None);
        assert_eq!(e.arm(ArmedId(8), rules.compile_conditions(&[kw("refund")]).expect("c"), 0), None);
        assert!(rules.compile_conditions(&[kw("unknown words")]).is_err());
        let d = e.on_event(&rules, &cust("a refund for this chargeback"), 1000);
        // API decisions come first, in arming order, then rules.
        assert_eq!(d.iter().map(label).collect::<Vec<_>>(), ["api 7", "api 8", "fire r"]);
        assert_eq!(e.arm(ArmedId(9), c, 1500), Some(Decision::ApiFired { id: ArmedId(9), at_ms: 1500 }));
        assert_eq!(
            e.arm(ArmedId(10), rules.compile_conditions(&[kw("refund")]).expect("c"), 1600),
            Some(Decision::ApiFired { id: ArmedId(10), at_ms: 1600 })
        );
        let d10 = rules.compile_conditions(&[dur(10)]).expect("c");
        assert_eq!(e.arm(ArmedId(11), d10, 1700), None);
        assert!(e.disarm(ArmedId(11)));
        let d = e.on_event(&rules, &Event::ConversationEnded, 2000);
        assert!(d.is_empty(), "{d:?}");
        assert!(e.is_ended());
    }

    #[test]
    fn one_conversation_with_many_rules_stays_small() {
        let rules: Vec<Rule> = (0..16).map(|i| rule(&format!("r{i}"), vec![kw(&format!("phrase{i}"))])).collect();
        let compiled = compiled(rules);
        let mut e = ConversationEngine::new();
        e.start(&compiled, Some("q1"), None, 0);
        for i in 0..40 {
            e.on_event(&compiled, &cust(&format!("about phrase{}", i % 20)), i * 1000);
        }
        assert!(e.approx_bytes() <= 4096, "{} bytes", e.approx_bytes());
    }
}
