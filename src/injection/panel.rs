//! The panel channel: an in-process event stream per conversation that the agent's prompt
//! panel reads over SSE.
//!
//! Each conversation has its own monotonic event id and a small ring buffer of recent events,
//! so a client that reconnects with `Last-Event-ID` gets exactly what it missed (as long as
//! it is still in the ring). Ids restart at 1 when the process restarts; a client that
//! presents an id newer than anything known gets the whole ring, which it applies in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many recent events per conversation a reconnecting client can catch up on.
pub const RING: usize = 64;

/// One event on a conversation's panel stream.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelEvent {
    /// Monotonic per conversation, from 1.
    pub id: u64,
    /// `prompt` (show it) or `remove` (take it off the screen).
    pub kind: &'static str,
    pub data: Value,
}

struct ConvStream {
    next_id: u64,
    ring: VecDeque<PanelEvent>,
    tx: broadcast::Sender<PanelEvent>,
}

impl ConvStream {
    fn new() -> ConvStream {
        ConvStream { next_id: 1, ring: VecDeque::with_capacity(RING), tx: broadcast::channel(RING).0 }
    }
}

/// Every conversation's panel stream. Clones share the streams.
#[derive(Clone, Default)]
pub struct PanelHub {
    convs: Arc<Mutex<HashMap<Uuid, ConvStream>>>,
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
    pub fn new() -> PanelHub {
        PanelHub::default()
    }

    /// Appends an event to the conversation's stream and wakes its subscribers.
    pub fn publish(&self, conversation_id: Uuid, kind: &'static str, data: Value) -> u64 {
        let mut convs = self.convs.lock().unwrap_or_else(|p| p.into_inner());
        let s = convs.entry(conversation_id).or_insert_with(ConvStream::new);
        let ev = PanelEvent { id: s.next_id, kind, data };
        s.next_id += 1;
        if s.ring.len() == RING {
            s.ring.pop_front();
        }
        s.ring.push_back(ev.clone());
        // No subscriber is not an error: the ring keeps the event for the next one.
        let _ = s.tx.send(ev);
        s.next_id - 1
    }

    /// Subscribes to a conversation: the backlog is every ring event after `last_event_id`
    /// (all of them without one, or when the id is unknown). Backlog and feed are taken under
    /// one lock, so no event falls between them.
    pub fn subscribe(&self, conversation_id: Uuid, last_event_id: Option<u64>) -> Subscription {
        let mut convs = self.convs.lock().unwrap_or_else(|p| p.into_inner());
        let s = convs.entry(conversation_id).or_insert_with(ConvStream::new);
        let after = match last_event_id {
            Some(id) if id < s.next_id => id,
            _ => 0,
        };
        let backlog = s.ring.iter().filter(|e| e.id > after).cloned().collect();
        Subscription { backlog, live: s.tx.subscribe() }
    }

    /// Drops a conversation's stream (it ended); its subscribers' feeds close.
    pub fn forget(&self, conversation_id: Uuid) {
        self.convs.lock().unwrap_or_else(|p| p.into_inner()).remove(&conversation_id);
    }

    /// Conversations with a stream (a gauge of memory held).
    pub fn len(&self) -> usize {
        self.convs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shown-prompt event (`prompt`).
    pub fn prompt_data(
        injection_id: Uuid,
        content: &crate::contract::PromptContent,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_after_last_event_id() {
        let hub = PanelHub::new();
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
        let hub = PanelHub::new();
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
}
