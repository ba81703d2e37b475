//! The panel channel: an in-process event stream per conversation that the agent's prompt
//! panel reads over SSE.
//!
//! Each conversation has a small ring buffer of recent events, so a client that reconnects
//! with `Last-Event-ID` gets exactly what it missed (as long as it is still in the ring).
//!
//! Event ids come from one hub-wide counter seeded from the clock (microseconds since the
//! Unix epoch at start-up), so they increase within a conversation and stay unique across
//! restarts: a browser presenting an id from before a restart is behind every new id and
//! gets the whole new ring, never a skipped event. (A later run starts above every id an
//! earlier run issued unless that run issued more than a million events per second of its
//! life.) Ids stay below 2^53, so the page can hold them as JavaScript numbers. A client that
//! presents an id newer than anything issued (a clock set back) also gets the whole ring; the
//! page drops prompts it already shows by injection id, so a replay never duplicates.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many recent events per conversation a reconnecting client can catch up on.
pub const RING: usize = 64;

/// One event on a conversation's panel stream.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelEvent {
    /// Increasing per conversation and unique across restarts (see the module docs).
    pub id: u64,
    /// `prompt` (show it) or `remove` (take it off the screen).
    pub kind: &'static str,
    /// The event's JSON, serialized once when published: what the SSE stream sends. Held as
    /// text, not a `Value`, because every live conversation keeps its recent events, and a
    /// prompt event as a `Value` (an ordered map) takes several times its text's size.
    pub data: Arc<str>,
}

struct ConvStream {
    ring: VecDeque<PanelEvent>,
    /// Made when the first subscriber comes and dropped when the last one has gone.
    tx: Option<broadcast::Sender<PanelEvent>>,
}

/// Live subscribers lagging this far behind resynchronise from the ring instead.
const LIVE_BUFFER: usize = 16;

impl ConvStream {
    // Memory matters here: every live conversation has one, watched or not (goal: a few KiB
    // per conversation). The ring grows only as events arrive; the broadcast channel exists
    // only while someone watches, and its buffer is small because a lagging subscriber
    // catches up from the ring.
    fn new() -> ConvStream {
        // Most conversations see a prompt and its removal; the ring grows past that on demand.
        ConvStream { ring: VecDeque::with_capacity(2), tx: None }
    }
}

struct Streams {
    /// The id the next event gets (hub-wide).
    next_id: u64,
    convs: HashMap<Uuid, ConvStream>,
}

/// Every conversation's panel stream. Clones share the streams.
#[derive(Clone)]
pub struct PanelHub {
    streams: Arc<Mutex<Streams>>,
}

impl Default for PanelHub {
    fn default() -> PanelHub {
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        PanelHub::with_first_id(u64::try_from(micros).unwrap_or(1))
    }
}

impl std::fmt::Debug for PanelHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanelHub").finish_non_exhaustive()
    }
}

/// A subscription: the events to replay first, then the live feed.
pub struct Subscription {
    pub backlog: Vec<PanelEvent>,
    pub live: broadcast::Receiver<PanelEvent>,
}

impl PanelHub {
    /// A hub whose event ids start from the clock (see the module docs).
    pub fn new() -> PanelHub {
        PanelHub::default()
    }

    /// A hub whose first event id is `first` (at least 1): tests pick ids to assert on.
    pub fn with_first_id(first: u64) -> PanelHub {
        PanelHub { streams: Arc::new(Mutex::new(Streams { next_id: first.max(1), convs: HashMap::new() })) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event to the conversation's stream and wakes its subscribers.
    pub fn publish(&self, conversation_id: Uuid, kind: &'static str, data: Value) -> u64 {
        let mut streams = self.lock();
        let id = streams.next_id;
        streams.next_id += 1;
        let s = streams.convs.entry(conversation_id).or_insert_with(ConvStream::new);
        let ev = PanelEvent { id, kind, data: Arc::from(data.to_string()) };
        if s.ring.len() == RING {
            s.ring.pop_front();
        }
        s.ring.push_back(ev.clone());
        // No subscriber is not an error: the ring keeps the event for the next one.
        if let Some(tx) = &s.tx {
            if tx.send(ev).is_err() {
                s.tx = None;
            }
        }
        id
    }

    /// Subscribes to a conversation: the backlog is every ring event after `last_event_id`
    /// (all of them without one, or when the id is unknown). Backlog and feed are taken under
    /// one lock, so no event falls between them.
    pub fn subscribe(&self, conversation_id: Uuid, last_event_id: Option<u64>) -> Subscription {
        let mut streams = self.lock();
        let next_id = streams.next_id;
        let s = streams.convs.entry(conversation_id).or_insert_with(ConvStream::new);
        let after = match last_event_id {
            Some(id) if id < next_id => id,
            _ => 0,
        };
        let backlog = s.ring.iter().filter(|e| e.id > after).cloned().collect();
        let live = s.tx.get_or_insert_with(|| broadcast::channel(LIVE_BUFFER).0).subscribe();
        Subscription { backlog, live }
    }

    /// Drops a conversation's stream (it ended); its subscribers' feeds close.
    pub fn forget(&self, conversation_id: Uuid) {
        self.lock().convs.remove(&conversation_id);
    }

    /// Conversations with a stream (a gauge of memory held).
    pub fn len(&self) -> usize {
        self.lock().convs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shown-prompt event (`prompt`). The display limits travel with it so the page can
    /// apply the same rules on screen (CONTRACT §4; the service stays the authority).
    pub fn prompt_data(
        injection_id: Uuid,
        content: &crate::contract::PromptContent,
        display: crate::contract::DisplaySettings,
        shown_at: &str,
        expires_at: &str,
    ) -> Value {
        json!({
            "injectionId": injection_id,
            "title": content.title,
            "body": content.body,
            "url": content.url.as_ref().map(|u| u.to_string()),
            "priority": content.priority.as_str(),
            "shownAt": shown_at,
            "expiresAt": expires_at,
            "maxConcurrentPrompts": display.max_concurrent_prompts,
            "autoDismissMs": display.auto_dismiss_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_after_last_event_id() {
        let hub = PanelHub::with_first_id(1);
        let c = Uuid::from_u128(1);
        for n in 0..5 {
            hub.publish(c, "prompt", json!({ "n": n }));
        }
        let ids = |s: Subscription| s.backlog.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(hub.subscribe(c, Some(3))), vec![4, 5]);
        assert_eq!(ids(hub.subscribe(c, None)), vec![1, 2, 3, 4, 5]);
        // An id from before a restart (newer than anything known) replays everything.
        assert_eq!(ids(hub.subscribe(c, Some(99))), vec![1, 2, 3, 4, 5]);
        assert!(ids(hub.subscribe(Uuid::from_u128(2), None)).is_empty());
    }

    #[test]
    fn ring_is_bounded_and_live_feed_follows_backlog() {
        let hub = PanelHub::with_first_id(1);
        let c = Uuid::from_u128(1);
        for n in 0..(RING as u64 + 10) {
            hub.publish(c, "prompt", json!({ "n": n }));
        }
        let mut sub = hub.subscribe(c, Some(5));
        assert_eq!(sub.backlog.len(), RING);
        assert_eq!(sub.backlog[0].id, 11);
        hub.publish(c, "remove", json!({}));
        let ev = sub.live.try_recv().unwrap();
        assert_eq!((ev.id, ev.kind), (RING as u64 + 11, "remove"));
    }

    #[test]
    fn ids_survive_a_restart() {
        let c = Uuid::from_u128(1);
        let before = PanelHub::new();
        let old: Vec<u64> = (0..3).map(|n| before.publish(c, "prompt", json!({ "n": n }))).collect();
        assert!(old.windows(2).all(|w| w[0] < w[1]));
        assert!(old[2] < (1 << 53), "ids fit a JavaScript number");
        // A new process: its ids are above the old ones, so the old Last-Event-ID replays
        // every new event instead of skipping the first ones.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = PanelHub::new();
        let first_new = after.publish(c, "prompt", json!({ "n": "new" }));
        assert!(first_new > old[2]);
        let sub = after.subscribe(c, Some(old[2]));
        assert_eq!(sub.backlog.iter().map(|e| e.id).collect::<Vec<_>>(), vec![first_new]);
        // Ids are hub-wide, so two conversations never share one.
        let other = after.publish(Uuid::from_u128(2), "prompt", json!({}));
        assert_ne!(other, first_new);
    }
}
