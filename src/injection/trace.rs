//! Opt-in stage timings of each prompt delivery, for the live benchmark's per-stage
//! breakdown of trigger → panel: when the prompt fell due, when the timer woke for it, when
//! its "delivered" write was submitted and committed, when it was published on the panel.
//!
//! Off by default and then costs one relaxed atomic load per delivery; a benchmark turns it
//! on with [`DeliveryTraces::enable`] and takes the records with [`DeliveryTraces::take`].
//! Instants are monotonic (`std::time::Instant`), so stages subtract exactly; only the due
//! instant is derived from the service's clock (see [`DeliveryTrace::due`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

/// The stages of one prompt's way to the panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryTrace {
    pub injection_id: Uuid,
    pub conversation_id: Uuid,
    /// When the request or notification that created it arrived (`AcceptMeta::received_at`).
    pub received: Option<Instant>,
    /// When its accepting write committed.
    pub admitted: Option<Instant>,
    /// When it fell due (its show instant; the clock's epoch time mapped onto `Instant`
    /// when the timer woke, so good to the clock's resolution).
    pub due: Instant,
    /// When the timer took it off its heap.
    pub woke: Instant,
    /// When its "delivered" write went to the store.
    pub submitted: Instant,
    /// When that write was durable.
    pub committed: Instant,
    /// When it was on the conversation's panel stream.
    pub published: Instant,
    /// Prompts shown by the same store write (1 when each has its own).
    pub batch: usize,
}

/// The trace sink of one service.
#[derive(Debug, Default)]
pub struct DeliveryTraces {
    on: AtomicBool,
    /// Injection → (received, admitted), until it is delivered.
    admitted: Mutex<HashMap<Uuid, (Instant, Instant)>>,
    done: Mutex<Vec<DeliveryTrace>>,
}

impl DeliveryTraces {
    /// Starts recording (from the next accept on).
    pub fn enable(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Takes the deliveries recorded so far.
    pub fn take(&self) -> Vec<DeliveryTrace> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn note_admitted(&self, id: Uuid, received: Instant, admitted: Instant) {
        if self.is_on() {
            self.admitted.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (received, admitted));
        }
    }

    /// Records a delivery, completing it with what [`Self::note_admitted`] kept.
    pub(crate) fn push(&self, mut t: DeliveryTrace) {
        if !self.is_on() {
            return;
        }
        if let Some((received, admitted)) =
            self.admitted.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.injection_id)
        {
            t.received = Some(received);
            t.admitted = Some(admitted);
        }
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push(t);
    }
}
