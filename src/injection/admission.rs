//! Admission: the pure per-conversation capacity ledger (CONTRACT §4).
//!
//! A [`Ledger`] holds one conversation's prompts that occupy display slots and the candidates
//! queued for one. It does no I/O and reads no clock: every call takes `now_ms` (milliseconds
//! on any monotonic clock the caller chooses) and returns the [`Effect`]s the caller must act
//! on (deliver, expire, promote, time out). The service keeps one ledger per live
//! conversation, so conversations are independent by construction.
//!
//! # Rules it guarantees
//!
//! - **Slots.** At most `limit` prompts occupy slots at once, where `limit` is the lowest
//!   `max_concurrent` among the occupying prompts and the candidate (a value of 0 is read as
//!   1, so a candidate can always eventually be admitted).
//! - **A scheduled prompt holds its slot.** A prompt occupies its slot from the moment it is
//!   admitted, *while its `delay_ms` runs*, not only once shown. The contract speaks of shown
//!   prompts; counting scheduled ones too is the stricter reading and the only safe one:
//!   otherwise a burst of admissions inside one delay window would all be "free" and then
//!   appear on screen together, overshooting the limit the agent was promised.
//! - **Show and expiry.** A prompt admitted at `t` is shown at `t + delay_ms` ([`Effect::Shown`])
//!   and frees its slot at `t + delay_ms + auto_dismiss_ms` ([`Effect::Expired`]) unless it is
//!   released earlier (dismissed, clicked, withdrawn) or cancelled.
//! - **Queue.** A candidate that cannot take a slot now waits in the queue, ordered by
//!   `priority_rank` (higher first), then `seq` (arrival order), until `now + queue_timeout_ms`
//!   ([`Effect::QueueTimedOut`]); with `reject_when_full` (the contract's `onCapacity: reject`)
//!   it is refused instead, with `retry_after_ms` = when it would next be admitted if no
//!   prompt were released early and nobody else arrived.
//! - **No overtaking.** A new candidate is admitted at once only if it fits *and* no queued
//!   candidate is ahead of it (same or higher priority). The queue head blocks the queue while
//!   it does not fit (head-of-line): skipping it for smaller-limit candidates behind could
//!   starve a `max_concurrent = 1` prompt forever.
//! - **Promotion.** When a slot frees at `t`, the queue head is admitted *at `t`*: its delay
//!   starts then ([`Effect::Promoted`]), even if the caller only notices later.
//! - **Late calls are exact.** A call at `now` first replays, in time order, every event due
//!   at or before `now` (shows, expiries, promotions, timeouts) with its own timestamp, so a
//!   late timer gives the same outcome as a punctual one. At one instant, expiries are
//!   applied before queue timeouts: a slot freeing exactly at a queued candidate's deadline
//!   goes to that candidate.
//! - **Time never runs backwards.** A `now_ms` earlier than one already seen is read as the
//!   latest time seen.
//! - **Bounded memory.** The queue holds at most [`Limits::max_queued`] candidates; beyond it
//!   a candidate is rejected ([`RejectReason::QueueFull`]) whatever its `reject_when_full`.

use thiserror::Error;
use uuid::Uuid;

/// Why a ledger call could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdmissionError {
    #[error("prompt {0} is already in this conversation's ledger; admit each injection once")]
    AlreadyPresent(Uuid),
    #[error("prompt {0} is not in this conversation's ledger (already released, expired or never admitted)")]
    NotFound(Uuid),
    #[error("prompt {0} is queued, not occupying a slot; cancel it instead of releasing it")]
    NotOccupying(Uuid),
}

/// A prompt asking for a display slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: Uuid,
    /// Higher is more urgent; the service maps the contract's priority onto it.
    pub priority_rank: u8,
    /// The payload's `displaySettings.maxConcurrentPrompts` (1–3 after validation).
    pub max_concurrent: u8,
    pub delay_ms: u64,
    pub auto_dismiss_ms: u64,
    /// The payload's `onCapacity: reject`.
    pub reject_when_full: bool,
    pub queue_timeout_ms: u64,
    /// Arrival order; breaks priority ties (lower first).
    pub seq: u64,
}

impl Candidate {
    fn limit(&self) -> usize {
        usize::from(self.max_concurrent.max(1))
    }
}

/// The answer to [`Ledger::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Holds a slot now; shown at `show_at_ms`, expires at `expires_at_ms`.
    Scheduled { show_at_ms: u64, expires_at_ms: u64 },
    /// Waiting for a slot; `position` 1 is next in line; times out at `deadline_ms`.
    Queued { position: usize, deadline_ms: u64 },
    /// Refused; trying again after `retry_after_ms` would succeed if nothing else changed.
    Rejected { retry_after_ms: u64, reason: RejectReason },
}

/// Why a candidate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// No free slot (or a queue ahead of it) and the candidate asked not to wait.
    Full,
    /// The queue is at [`Limits::max_queued`].
    QueueFull,
}

/// Why an occupying prompt gave its slot back early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Dismissed,
    Clicked,
    Withdrawn,
}

/// Something the caller must act on, stamped with the instant it logically happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The delay elapsed: deliver the prompt now.
    Shown { id: Uuid, at_ms: u64, expires_at_ms: u64 },
    /// `auto_dismiss_ms` elapsed after showing: the prompt left the screen, its slot is free.
    Expired { id: Uuid, at_ms: u64 },
    /// The queued candidate waited `queue_timeout_ms` without getting a slot; it is gone.
    QueueTimedOut { id: Uuid, at_ms: u64 },
    /// The queued candidate got a slot at `at_ms`; its delay started then.
    Promoted { id: Uuid, at_ms: u64, show_at_ms: u64, expires_at_ms: u64 },
}

/// What [`Ledger::admit`] decided, and what became due meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub decision: Admit,
    pub effects: Vec<Effect>,
}

/// Where a cancelled prompt was when it was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Was {
    Queued,
    /// Held a slot, not yet shown.
    Scheduled,
    /// On screen: the cancel is a withdrawal.
    Shown,
}

/// What [`Ledger::cancel`] found, and what became due meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub was: Was,
    pub effects: Vec<Effect>,
}

/// Bounds on one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_queued: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // Far more than an agent could ever be shown; it only bounds memory per conversation.
        Limits { max_queued: 64 }
    }
}

/// A prompt holding a slot (scheduled or shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    pub id: Uuid,
    pub max_concurrent: u8,
    pub admitted_at_ms: u64,
    pub show_at_ms: u64,
    pub expires_at_ms: u64,
    pub shown: bool,
}

/// A candidate waiting for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub candidate: Candidate,
    pub queued_at_ms: u64,
    pub deadline_ms: u64,
}

/// One conversation's capacity ledger. See the module docs for the rules.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    limits: Limits,
    /// The latest instant seen; events up to it have been applied.
    clock: u64,
    /// In admission order (so effects at one instant come out in a stable order).
    occupants: Vec<Occupant>,
    /// Sorted: priority_rank descending, then seq ascending.
    queue: Vec<Waiting>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(limits: Limits) -> Self {
        Ledger { limits, ..Self::default() }
    }

    /// Asks for a slot for `c` at `now_ms`.
    pub fn admit(&mut self, c: Candidate, now_ms: u64) -> Result<Admitted, AdmissionError> {
        if self.contains(c.id) {
            return Err(AdmissionError::AlreadyPresent(c.id));
        }
        let mut effects = Vec::new();
        self.run(now_ms, &mut effects);
        let now = self.clock;

        let decision = if self.admissible_now(&c) {
            let (show_at_ms, expires_at_ms) = self.occupy(&c, now);
            // A zero delay is shown by this very call.
            self.run(now, &mut effects);
            Admit::Scheduled { show_at_ms, expires_at_ms }
        } else if self.queue.len() >= self.limits.max_queued {
            let retry_after_ms = self.retry_after(|l| l.queue.len() < l.limits.max_queued);
            Admit::Rejected { retry_after_ms, reason: RejectReason::QueueFull }
        } else if c.reject_when_full {
            let retry_after_ms = self.retry_after(|l| l.admissible_now(&c));
            Admit::Rejected { retry_after_ms, reason: RejectReason::Full }
        } else {
            let deadline_ms = now.saturating_add(c.queue_timeout_ms);
            let at = self.queue.partition_point(|w| ahead_of(&w.candidate, &c));
            self.queue.insert(at, Waiting { candidate: c, queued_at_ms: now, deadline_ms });
            // A zero timeout lapses at once; report that rather than hold it silently.
            self.run(now, &mut effects);
            Admit::Queued { position: at + 1, deadline_ms }
        };
        Ok(Admitted { decision, effects })
    }

    /// Gives back the slot of an occupying prompt (dismissed, clicked or withdrawn) at `now_ms`.
    pub fn release(&mut self, id: Uuid, why: Release, now_ms: u64) -> Result<Vec<Effect>, AdmissionError> {
        let _ = why; // Every early release frees the slot alike; the reason matters to the caller's records.
        let mut effects = Vec::new();
        self.run(now_ms, &mut effects);
        match self.occupants.iter().position(|o| o.id == id) {
            Some(i) => {
                self.occupants.remove(i);
            }
            None if self.queue.iter().any(|w| w.candidate.id == id) => return Err(AdmissionError::NotOccupying(id)),
            None => return Err(AdmissionError::NotFound(id)),
        }
        self.run(now_ms, &mut effects);
        Ok(effects)
    }

    /// Removes a prompt wherever it is (queued, scheduled or shown) at `now_ms`.
    pub fn cancel(&mut self, id: Uuid, now_ms: u64) -> Result<Cancelled, AdmissionError> {
        let mut effects = Vec::new();
        self.run(now_ms, &mut effects);
        let was = if let Some(i) = self.occupants.iter().position(|o| o.id == id) {
            let o = self.occupants.remove(i);
            if o.shown {
                Was::Shown
            } else {
                Was::Scheduled
            }
        } else if let Some(i) = self.queue.iter().position(|w| w.candidate.id == id) {
            self.queue.remove(i);
            Was::Queued
        } else {
            return Err(AdmissionError::NotFound(id));
        };
        self.run(now_ms, &mut effects);
        Ok(Cancelled { was, effects })
    }

    /// Applies everything due at or before `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.run(now_ms, &mut effects);
        effects
    }

    /// The next instant at which [`Ledger::tick`] would produce an effect, for a timer.
    pub fn next_deadline(&self) -> Option<u64> {
        let slots = self.occupants.iter().map(|o| if o.shown { o.expires_at_ms } else { o.show_at_ms });
        let queue = self.queue.iter().map(|w| w.deadline_ms);
        slots.chain(queue).min()
    }

    /// Prompts on screen now.
    pub fn shown(&self) -> impl Iterator<Item = &Occupant> {
        self.occupants.iter().filter(|o| o.shown)
    }

    /// Prompts holding a slot while their delay runs.
    pub fn scheduled(&self) -> impl Iterator<Item = &Occupant> {
        self.occupants.iter().filter(|o| !o.shown)
    }

    /// Candidates waiting, next in line first.
    pub fn queued(&self) -> impl Iterator<Item = &Waiting> {
        self.queue.iter()
    }

    /// Slots in use (scheduled + shown).
    pub fn occupancy(&self) -> usize {
        self.occupants.len()
    }

    /// Nothing held or waiting: the service may drop this ledger.
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty() && self.queue.is_empty()
    }

    fn contains(&self, id: Uuid) -> bool {
        self.occupants.iter().any(|o| o.id == id) || self.queue.iter().any(|w| w.candidate.id == id)
    }

    /// The effective slot limit if `c` joined the current occupants.
    fn fits(&self, c: &Candidate) -> bool {
        let limit = self.occupants.iter().map(|o| usize::from(o.max_concurrent.max(1))).fold(c.limit(), usize::min);
        self.occupants.len() < limit
    }

    /// `c` may take a slot now: it fits and no queued candidate is ahead of it.
    fn admissible_now(&self, c: &Candidate) -> bool {
        self.fits(c) && !self.queue.iter().any(|w| ahead_of(&w.candidate, c))
    }

    fn occupy(&mut self, c: &Candidate, at: u64) -> (u64, u64) {
        let show_at_ms = at.saturating_add(c.delay_ms);
        let expires_at_ms = show_at_ms.saturating_add(c.auto_dismiss_ms);
        self.occupants.push(Occupant {
            id: c.id,
            max_concurrent: c.max_concurrent,
            admitted_at_ms: at,
            show_at_ms,
            expires_at_ms,
            shown: false,
        });
        (show_at_ms, expires_at_ms)
    }

    /// Advances the ledger to `now`, replaying due events in time order.
    fn run(&mut self, now: u64, out: &mut Vec<Effect>) {
        let now = now.max(self.clock);
        loop {
            self.promote(out);
            let Some(t) = self.next_deadline().filter(|&t| t <= now) else { break };
            self.clock = self.clock.max(t);
            for o in self.occupants.iter_mut().filter(|o| !o.shown && o.show_at_ms <= t) {
                o.shown = true;
                out.push(Effect::Shown { id: o.id, at_ms: o.show_at_ms, expires_at_ms: o.expires_at_ms });
            }
            self.occupants.retain(|o| {
                let gone = o.shown && o.expires_at_ms <= t;
                if gone {
                    out.push(Effect::Expired { id: o.id, at_ms: o.expires_at_ms });
                }
                !gone
            });
            // Freed slots go to the queue before anyone's deadline is judged at this instant.
            self.promote(out);
            self.queue.retain(|w| {
                let gone = w.deadline_ms <= t;
                if gone {
                    out.push(Effect::QueueTimedOut { id: w.candidate.id, at_ms: w.deadline_ms });
                }
                !gone
            });
        }
        self.clock = now;
    }

    /// Admits queue heads at the current clock while they fit.
    fn promote(&mut self, out: &mut Vec<Effect>) {
        while let Some(head) = self.queue.first() {
            if !self.fits(&head.candidate) {
                break;
            }
            let w = self.queue.remove(0);
            let at = self.clock;
            let (show_at_ms, expires_at_ms) = self.occupy(&w.candidate, at);
            out.push(Effect::Promoted { id: w.candidate.id, at_ms: at, show_at_ms, expires_at_ms });
        }
    }

    /// How long until `ready` holds, if nothing is released early and nobody else arrives:
    /// replays a copy of the ledger forward from event to event.
    fn retry_after(&self, ready: impl Fn(&Ledger) -> bool) -> u64 {
        let start = self.clock;
        let mut sim = self.clone();
        let mut sink = Vec::new();
        // Every step applies at least one event, and there are finitely many, so this ends.
        while let Some(t) = sim.next_deadline() {
            sim.run(t, &mut sink);
            sink.clear();
            if ready(&sim) {
                return t.saturating_sub(start).max(1);
            }
        }
        // Unreachable in practice: an empty ledger admits anyone and has room in its queue.
        sim.clock.saturating_sub(start).max(1)
    }
}

/// Whether queued `w` goes before newcomer-or-queued `c`: higher priority, then earlier arrival.
fn ahead_of(w: &Candidate, c: &Candidate) -> bool {
    (w.priority_rank, std::cmp::Reverse(w.seq)) > (c.priority_rank, std::cmp::Reverse(c.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// A candidate with `n` as id and arrival order, the contract's smallest timings scaled
    /// to readable numbers: delay 500, auto-dismiss 10 000, queue timeout 120 000.
    fn cand(n: u128, max: u8) -> Candidate {
        Candidate {
            id: id(n),
            priority_rank: 1,
            max_concurrent: max,
            delay_ms: 500,
            auto_dismiss_ms: 10_000,
            reject_when_full: false,
            queue_timeout_ms: 120_000,
            seq: n as u64,
        }
    }

    fn decision(l: &mut Ledger, c: Candidate, now: u64) -> Admit {
        l.admit(c, now).unwrap().decision
    }

    fn sched(at: u64, c: &Candidate) -> Admit {
        Admit::Scheduled { show_at_ms: at + c.delay_ms, expires_at_ms: at + c.delay_ms + c.auto_dismiss_ms }
    }

    #[test]
    fn slots_one_two_three() {
        for max in 1..=3u8 {
            let mut l = Ledger::new();
            for n in 0..u128::from(max) {
                let c = cand(n, max);
                assert_eq!(decision(&mut l, c.clone(), 0), sched(0, &c), "max {max}, prompt {n}");
            }
            let extra = cand(10, max);
            assert_eq!(
                decision(&mut l, extra, 0),
                Admit::Queued { position: 1, deadline_ms: 120_000 },
                "max {max}: one more must queue"
            );
            assert_eq!(l.occupancy(), usize::from(max));
        }
    }

    #[test]
    fn lowest_max_applies() {
        // (existing maxes, candidate max, admitted?)
        type Row = (&'static [u8], u8, bool);
        let table: &[Row] = &[
            (&[3, 3], 3, true),
            (&[3, 3], 2, false), // candidate's own limit is 2 and two are held
            (&[3, 1], 3, false), // an occupant allows only itself
            (&[2], 3, true),
            (&[2, 2], 3, false), // occupants' limit is 2
            (&[3], 1, false),
            (&[], 1, true),
            (&[], 0, true), // 0 reads as 1
            (&[0], 3, false),
        ];
        for (i, (held, max, ok)) in table.iter().enumerate() {
            let mut l = Ledger::new();
            for (n, m) in held.iter().enumerate() {
                let c = cand(n as u128, *m);
                // Fill regardless of limits by admitting into an otherwise roomy ledger.
                l.occupy(&c, 0);
            }
            let got = decision(&mut l, cand(99, *max), 0);
            assert_eq!(matches!(got, Admit::Scheduled { .. }), *ok, "row {i}: {got:?}");
        }
    }

    #[test]
    fn delay_then_show_then_expire() {
        let mut l = Ledger::new();
        let c = Candidate { delay_ms: 1_500, auto_dismiss_ms: 20_000, ..cand(1, 1) };
        assert_eq!(decision(&mut l, c, 1_000), Admit::Scheduled { show_at_ms: 2_500, expires_at_ms: 22_500 });
        assert_eq!(l.next_deadline(), Some(2_500));
        assert!(l.tick(2_499).is_empty());
        assert_eq!(l.scheduled().count(), 1);
        assert_eq!(l.tick(2_500), vec![Effect::Shown { id: id(1), at_ms: 2_500, expires_at_ms: 22_500 }]);
        assert_eq!(l.shown().count(), 1);
        assert_eq!(l.next_deadline(), Some(22_500));
        assert!(l.tick(22_499).is_empty());
        assert_eq!(l.tick(22_500), vec![Effect::Expired { id: id(1), at_ms: 22_500 }]);
        assert!(l.is_empty());
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn zero_delay_is_shown_by_the_admit_call() {
        let mut l = Ledger::new();
        let out = l.admit(Candidate { delay_ms: 0, ..cand(1, 1) }, 7).unwrap();
        assert_eq!(out.effects, vec![Effect::Shown { id: id(1), at_ms: 7, expires_at_ms: 10_007 }]);
    }

    #[test]
    fn scheduled_prompt_holds_its_slot() {
        // A burst inside one delay window must not all be admitted.
        let mut l = Ledger::new();
        assert!(matches!(decision(&mut l, cand(1, 2), 0), Admit::Scheduled { .. }));
        assert!(matches!(decision(&mut l, cand(2, 2), 100), Admit::Scheduled { .. }));
        assert!(matches!(decision(&mut l, cand(3, 2), 200), Admit::Queued { .. }));
        assert_eq!(l.shown().count(), 0);
        assert_eq!(l.occupancy(), 2);
    }

    #[test]
    fn auto_dismiss_frees_a_slot_and_promotes_at_that_instant() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 1), 0); // shown 500, expires 10 500
        let out = l.admit(cand(2, 1), 1_000).unwrap();
        assert_eq!(out.decision, Admit::Queued { position: 1, deadline_ms: 121_000 });
        // What fell due before the admission is reported by the admission.
        assert_eq!(out.effects, vec![Effect::Shown { id: id(1), at_ms: 500, expires_at_ms: 10_500 }]);
        // The caller's timer is late (20 000): the promotion still happens at 10 500 and its
        // own show (11 000) is replayed; its expiry (21 000) is not yet due.
        let fx = l.tick(20_000);
        assert_eq!(
            fx,
            vec![
                Effect::Expired { id: id(1), at_ms: 10_500 },
                Effect::Promoted { id: id(2), at_ms: 10_500, show_at_ms: 11_000, expires_at_ms: 21_000 },
                Effect::Shown { id: id(2), at_ms: 11_000, expires_at_ms: 21_000 },
            ]
        );
        assert_eq!(l.next_deadline(), Some(21_000));
    }

    #[test]
    fn dismiss_click_and_withdraw_free_the_slot() {
        for why in [Release::Dismissed, Release::Clicked, Release::Withdrawn] {
            let mut l = Ledger::new();
            decision(&mut l, cand(1, 1), 0);
            decision(&mut l, cand(2, 1), 0);
            let fx = l.release(id(1), why, 3_000).unwrap();
            assert_eq!(
                fx,
                vec![
                    Effect::Shown { id: id(1), at_ms: 500, expires_at_ms: 10_500 },
                    Effect::Promoted { id: id(2), at_ms: 3_000, show_at_ms: 3_500, expires_at_ms: 13_500 },
                ],
                "{why:?}"
            );
            assert_eq!(l.release(id(1), why, 3_001), Err(AdmissionError::NotFound(id(1))));
        }
    }

    #[test]
    fn release_of_queued_is_refused() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 1), 0);
        decision(&mut l, cand(2, 1), 0);
        assert_eq!(l.release(id(2), Release::Dismissed, 1), Err(AdmissionError::NotOccupying(id(2))));
    }

    #[test]
    fn queue_orders_by_priority_then_arrival() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 1), 0);
        // (id, rank) arriving in id order; expected queue position at arrival.
        let arrivals = [(10, 1, 1), (11, 3, 1), (12, 1, 3), (13, 3, 2), (14, 2, 3), (15, 0, 6)];
        for (n, rank, pos) in arrivals {
            let c = Candidate { priority_rank: rank, ..cand(n, 1) };
            match decision(&mut l, c, 1) {
                Admit::Queued { position, .. } => assert_eq!(position, pos, "candidate {n}"),
                other => panic!("candidate {n}: {other:?}"),
            }
        }
        let order: Vec<u128> = l.queued().map(|w| w.candidate.id.as_u128()).collect();
        assert_eq!(order, vec![11, 13, 14, 10, 12, 15]);
        // Promotions follow that order, one per freed slot.
        let mut promoted = Vec::new();
        let mut current = 1u128;
        for t in 1..=6u64 {
            for e in l.release(id(current), Release::Clicked, t * 1_000).unwrap() {
                if let Effect::Promoted { id, .. } = e {
                    promoted.push(id.as_u128());
                    current = id.as_u128();
                }
            }
        }
        assert_eq!(promoted, vec![11, 13, 14, 10, 12, 15]);
    }

    #[test]
    fn newcomer_does_not_overtake_the_queue() {
        let mut l = Ledger::new();
        // Two held under max 3; a max-1 candidate is queued at the head and blocks.
        decision(&mut l, cand(1, 3), 0);
        decision(&mut l, cand(2, 3), 0);
        assert!(matches!(decision(&mut l, cand(3, 1), 0), Admit::Queued { position: 1, .. }));
        // A max-3 newcomer of the same priority would fit a slot but must wait its turn.
        assert!(matches!(decision(&mut l, cand(4, 3), 0), Admit::Queued { position: 2, .. }));
        // A more urgent newcomer goes first, and fits.
        let urgent = Candidate { priority_rank: 9, ..cand(5, 3) };
        assert!(matches!(decision(&mut l, urgent, 0), Admit::Scheduled { .. }));
    }

    #[test]
    fn queue_timeout() {
        let mut l = Ledger::new();
        decision(&mut l, Candidate { auto_dismiss_ms: 60_000, ..cand(1, 1) }, 0);
        let c = Candidate { queue_timeout_ms: 5_000, ..cand(2, 1) };
        assert_eq!(decision(&mut l, c, 1_000), Admit::Queued { position: 1, deadline_ms: 6_000 });
        assert_eq!(l.next_deadline(), Some(6_000));
        assert!(l.tick(5_999).is_empty());
        assert_eq!(l.tick(6_000), vec![Effect::QueueTimedOut { id: id(2), at_ms: 6_000 }]);
        assert_eq!(l.queued().count(), 0);
    }

    #[test]
    fn slot_freeing_at_the_deadline_goes_to_the_waiter() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 1), 0); // expires 10 500
        let c = Candidate { queue_timeout_ms: 10_500, ..cand(2, 1) };
        decision(&mut l, c, 0);
        let fx = l.tick(10_500);
        assert!(fx.contains(&Effect::Promoted { id: id(2), at_ms: 10_500, show_at_ms: 11_000, expires_at_ms: 21_000 }));
        assert!(!fx.iter().any(|e| matches!(e, Effect::QueueTimedOut { .. })));
    }

    #[test]
    fn zero_queue_timeout_lapses_at_once() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 1), 0);
        let out = l.admit(Candidate { queue_timeout_ms: 0, ..cand(2, 1) }, 10).unwrap();
        assert_eq!(out.decision, Admit::Queued { position: 1, deadline_ms: 10 });
        assert_eq!(out.effects, vec![Effect::QueueTimedOut { id: id(2), at_ms: 10 }]);
    }

    #[test]
    fn reject_gives_retry_after_when_the_slot_frees() {
        // (occupants as (max, admitted_at), candidate max, now, expected retry_after)
        type Row = (&'static [(u8, u64)], u8, u64, u64);
        let table: &[Row] = &[
            (&[(1, 0)], 1, 1_000, 9_500),                          // frees at 10 500
            (&[(2, 0), (2, 2_000)], 2, 3_000, 7_500),              // earliest frees at 10 500
            (&[(3, 0), (3, 1_000), (3, 2_000)], 1, 2_000, 10_500), // needs all three gone: 12 500
            (&[(3, 0), (3, 1_000)], 1, 2_000, 9_500),              // needs both gone: 11 500
        ];
        for (i, (held, max, now, want)) in table.iter().enumerate() {
            let mut l = Ledger::new();
            for (n, (m, at)) in held.iter().enumerate() {
                decision(&mut l, cand(n as u128, *m), *at);
            }
            let c = Candidate { reject_when_full: true, ..cand(50, *max) };
            assert_eq!(
                decision(&mut l, c, *now),
                Admit::Rejected { retry_after_ms: *want, reason: RejectReason::Full },
                "row {i}"
            );
            // A rejection leaves no trace.
            assert_eq!(l.queued().count(), 0, "row {i}");
        }
    }

    #[test]
    fn reject_behind_a_queue_waits_for_the_queue() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 1), 0); // expires 10 500
        decision(&mut l, cand(2, 1), 0); // promoted 10 500, expires 21 000
        let c = Candidate { reject_when_full: true, ..cand(3, 1) };
        assert_eq!(decision(&mut l, c, 0), Admit::Rejected { retry_after_ms: 21_000, reason: RejectReason::Full });
    }

    #[test]
    fn queue_full_is_rejected_even_when_willing_to_wait() {
        let mut l = Ledger::with_limits(Limits { max_queued: 2 });
        decision(&mut l, cand(1, 1), 0);
        decision(&mut l, cand(2, 1), 0);
        decision(&mut l, cand(3, 1), 0);
        // The queue gains room when 2 is promoted at 10 500.
        assert_eq!(
            decision(&mut l, cand(4, 1), 500),
            Admit::Rejected { retry_after_ms: 10_000, reason: RejectReason::QueueFull }
        );
    }

    #[test]
    fn cancel_queued_scheduled_and_shown() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 2), 0);
        decision(&mut l, cand(2, 2), 0);
        decision(&mut l, cand(3, 2), 0);
        decision(&mut l, cand(4, 2), 0);
        // Cancel a queued one: no slot changes.
        let c = l.cancel(id(4), 100).unwrap();
        assert_eq!((c.was, c.effects), (Was::Queued, vec![]));
        // Cancel a scheduled one: its slot goes to the queue head at once.
        let c = l.cancel(id(2), 200).unwrap();
        assert_eq!(c.was, Was::Scheduled);
        assert_eq!(c.effects, vec![Effect::Promoted { id: id(3), at_ms: 200, show_at_ms: 700, expires_at_ms: 10_700 }]);
        // Cancel a shown one: a withdrawal.
        let c = l.cancel(id(1), 600).unwrap();
        assert_eq!(c.was, Was::Shown);
        assert_eq!(c.effects, vec![Effect::Shown { id: id(1), at_ms: 500, expires_at_ms: 10_500 }]);
        let ids: Vec<u128> = l.scheduled().map(|o| o.id.as_u128()).collect();
        assert_eq!(ids, vec![3]);
        assert_eq!(l.cancel(id(1), 700).map(|c| c.was), Err(AdmissionError::NotFound(id(1))));
    }

    #[test]
    fn promotion_timing_uses_the_promoted_prompts_own_delay() {
        let mut l = Ledger::new();
        decision(&mut l, Candidate { delay_ms: 500, auto_dismiss_ms: 10_000, ..cand(1, 1) }, 0);
        decision(&mut l, Candidate { delay_ms: 4_000, auto_dismiss_ms: 30_000, ..cand(2, 1) }, 100);
        let fx = l.tick(10_500);
        assert_eq!(
            fx.last(),
            Some(&Effect::Promoted { id: id(2), at_ms: 10_500, show_at_ms: 14_500, expires_at_ms: 44_500 })
        );
        assert_eq!(l.next_deadline(), Some(14_500));
    }

    #[test]
    fn duplicate_admit_is_refused() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 1), 0);
        assert_eq!(l.admit(cand(1, 1), 1), Err(AdmissionError::AlreadyPresent(id(1))));
        decision(&mut l, cand(2, 1), 0);
        assert_eq!(l.admit(cand(2, 1), 1), Err(AdmissionError::AlreadyPresent(id(2))));
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut l = Ledger::new();
        decision(&mut l, cand(1, 1), 10_000);
        l.tick(10_500);
        // A stale clock reading is read as 10 500: the slot is still held.
        assert!(matches!(decision(&mut l, cand(2, 1), 0), Admit::Queued { deadline_ms: 130_500, .. }));
    }

    #[test]
    fn conversations_are_independent() {
        let mut a = Ledger::new();
        let mut b = Ledger::new();
        decision(&mut a, cand(1, 1), 0);
        assert!(matches!(decision(&mut a, cand(2, 1), 0), Admit::Queued { .. }));
        assert!(matches!(decision(&mut b, cand(3, 1), 0), Admit::Scheduled { .. }));
        assert!(a.release(id(3), Release::Clicked, 1).is_err());
        assert!(b.tick(10_500).iter().any(|e| matches!(e, Effect::Expired { .. })));
        assert_eq!(a.occupancy(), 1);
        assert_eq!(a.queued().count(), 1);
    }

    #[test]
    fn never_over_the_limit_under_a_random_workload() {
        // A deterministic pseudo-random stream of admits, releases and ticks: the limit holds
        // after every call, and everything admitted is eventually accounted for.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut l = Ledger::new();
        let mut now = 0u64;
        for n in 0..2_000u128 {
            now += next() % 3_000;
            let r = next();
            match r % 4 {
                0 | 1 => {
                    let c = Candidate {
                        priority_rank: (r >> 8) as u8 % 4,
                        max_concurrent: 1 + (r >> 16) as u8 % 3,
                        reject_when_full: (r >> 24) & 1 == 1,
                        queue_timeout_ms: 1_000 + (r >> 32) % 30_000,
                        ..cand(n, 1)
                    };
                    l.admit(c, now).unwrap();
                }
                2 => {
                    l.tick(now);
                    if let Some(o) = l.occupants.first().map(|o| o.id) {
                        l.release(o, Release::Dismissed, now).unwrap();
                    }
                }
                _ => {
                    l.tick(now);
                }
            }
            let limit = l.occupants.iter().map(|o| usize::from(o.max_concurrent)).min().unwrap_or(3);
            assert!(l.occupancy() <= limit, "step {n}: {} held under limit {limit}", l.occupancy());
            if let Some(head) = l.queue.first() {
                assert!(!l.fits(&head.candidate), "step {n}: a fitting head was left waiting");
            }
        }
        l.tick(u64::MAX);
        assert!(l.is_empty());
    }
}
