//! Replaying recorded calls over the notification websockets (genesys-api.md §10 item 6,
//! shared/data/calls/README.md): each line goes, `recordedAt` removed, to every channel
//! subscribed to its `topicName`, paced by the gaps between `recordedAt` values divided by
//! the speed (`0` = as fast as possible, for benchmarks).
//!
//! What a subscriber sees is what Genesys would send: only subscribed topics receive
//! anything, so a client that subscribes a conversation's transcription topic after the
//! agent-connected snapshot sees only the later lines. Several calls replay concurrently,
//! one task each. Queue-conversation snapshots also update the emulator's conversation
//! state, so `GET /api/v2/conversations/{id}` follows the replay.
//!
//! Copies and loops need distinct conversations: every copy after the first, and every
//! round after the first, gets a fresh conversation id (written into each line's topic and
//! body), registered in the conversation store like the original.
//!
//! Faults that act on a replay: [`burst`] (the next N lines of each running call go out at
//! once, without waiting for their time); dropped sockets and channel expiry are in
//! `faults`/`notifications` (see `notifications::publish_raw` for the reconnect grace).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;

use super::calls::{self, RecordedCall};
use super::conversations::ConversationState;
use super::notifications;
use super::state::{lock, State};
use super::EmulatorError;

/// Most copies of each call one replay may make.
pub const MAX_COPIES: u32 = 10_000;

/// The slowest replay accepted (a thousandth of real time).
pub const MIN_SPEED: f64 = 0.001;

/// How fast to replay: a multiple of real time, or as fast as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// `recordedAt` gaps divided by this factor (> 0).
    Times(f64),
    /// No waiting at all (`0` or `"max"`).
    Max,
}

impl Speed {
    /// Parse `--speed`/`speed`: a positive number, `0` or `max`.
    pub fn parse(text: &str) -> Result<Speed, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        let x: f64 = t.parse().map_err(|_| {
            format!("speed must be a number (1 = real time, 10 = ten times faster) or `max`, not {t:?}")
        })?;
        Speed::from_factor(x)
    }

    /// A factor: 0 means as fast as possible; negative or non-finite is an error.
    pub fn from_factor(x: f64) -> Result<Speed, String> {
        if !x.is_finite() || x < 0.0 || (x > 0.0 && x < MIN_SPEED) {
            return Err(format!("speed must be 0 (as fast as possible) or a number from {MIN_SPEED} up, not {x}"));
        }
        Ok(if x == 0.0 { Speed::Max } else { Speed::Times(x) })
    }
}

impl Default for Speed {
    fn default() -> Self {
        Speed::Times(1.0)
    }
}

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplaySpec {
    /// Load calls from this folder first (calls.json + JSONL) and add them to the
    /// conversation store; `None` replays the calls the emulator loaded at start.
    pub calls_dir: Option<PathBuf>,
    /// Only these conversations (of the chosen set); empty = all.
    pub conversation_ids: Vec<String>,
    pub speed: Speed,
    /// Replay again and again (fresh conversation ids each round) until stopped.
    pub looped: bool,
    /// Replay each call this many times concurrently (fresh ids after the first); 0 counts as 1.
    pub copies: u32,
}

/// `POST /__emulator/replay` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReplayRequest {
    pub calls_dir: Option<PathBuf>,
    pub conversation_ids: Vec<String>,
    /// A number (0 = as fast as possible) or `"max"`; default 1 (real time).
    pub speed: Option<Value>,
    #[serde(rename = "loop")]
    pub looped: bool,
    pub copies: Option<u32>,
}

impl ReplayRequest {
    pub fn into_spec(self) -> Result<ReplaySpec, String> {
        let speed = match self.speed {
            None => Speed::default(),
            Some(Value::Number(n)) => Speed::from_factor(n.as_f64().unwrap_or(f64::NAN))?,
            Some(Value::String(s)) => Speed::parse(&s)?,
            Some(other) => return Err(format!("speed must be a number or \"max\", not {other}")),
        };
        Ok(ReplaySpec {
            calls_dir: self.calls_dir,
            conversation_ids: self.conversation_ids,
            speed,
            looped: self.looped,
            copies: self.copies.unwrap_or(1),
        })
    }
}

/// A replay that was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayStarted {
    pub replay_id: u64,
    /// Conversation ids of the first round, in order.
    pub conversation_ids: Vec<String>,
}

/// Progress of one replay (`GET /__emulator/replay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayStatus {
    pub replay_id: u64,
    pub calls: usize,
    pub lines_sent: u64,
    /// Messages that reached at least one subscriber (socket or reconnect grace queue).
    pub lines_delivered: u64,
    pub rounds_done: u64,
    pub done: bool,
}

struct Running {
    calls: usize,
    progress: Arc<Progress>,
    task: tokio::task::AbortHandle,
}

#[derive(Default)]
struct Progress {
    lines_sent: AtomicU64,
    lines_delivered: AtomicU64,
    rounds_done: AtomicU64,
    done: AtomicBool,
}

/// Every replay started on this emulator, and the armed burst.
#[derive(Default)]
pub(crate) struct Replays {
    next_id: u64,
    running: HashMap<u64, Running>,
}

/// Lines still to be sent without waiting (the burst fault), shared by all replays.
#[derive(Debug, Default)]
pub(crate) struct Burst(AtomicU32);

impl Burst {
    fn take(&self) -> bool {
        self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
}

/// Arm a burst: the next `lines` lines (across running replays) go out at once.
pub(crate) fn burst(state: &State, lines: u32) {
    state.burst.0.store(lines, Ordering::Release);
}

/// Start a replay; it runs in the background until its calls end (or forever when looped).
pub(crate) fn start(state: &Arc<State>, spec: ReplaySpec) -> Result<ReplayStarted, EmulatorError> {
    let invalid = |message: String| EmulatorError::Replay { message };
    if spec.copies > MAX_COPIES {
        return Err(invalid(format!("copies must be at most {MAX_COPIES}, not {}", spec.copies)));
    }
    let chosen: Vec<Arc<RecordedCall>> = match &spec.calls_dir {
        Some(dir) => {
            let loaded = calls::load_dir(dir)?;
            let mut convs = lock(&state.conversations);
            loaded
                .calls
                .into_iter()
                .map(|call| {
                    let call = Arc::new(call);
                    convs.insert(fresh_state(&call));
                    call
                })
                .collect()
        }
        None => {
            let convs = lock(&state.conversations);
            convs.ids().iter().filter_map(|id| convs.get(id).and_then(|c| c.recorded.clone())).collect()
        }
    };
    let chosen: Vec<Arc<RecordedCall>> = if spec.conversation_ids.is_empty() {
        chosen
    } else {
        let mut out = Vec::new();
        for id in &spec.conversation_ids {
            match chosen.iter().find(|c| &c.info.conversation_id == id) {
                Some(c) => out.push(c.clone()),
                None => {
                    return Err(invalid(format!(
                    "conversation {id} is not a recorded call of this emulator; list them with GET /__emulator/calls"
                )))
                }
            }
        }
        out
    };
    if chosen.is_empty() {
        return Err(invalid(
            "no recorded calls to replay: start the emulator with calls (--calls DIR) or pass callsDir".into(),
        ));
    }
    let copies = spec.copies.max(1);
    let first_round = instances(state, &chosen, copies, true);
    let conversation_ids = first_round.iter().map(|c| c.info.conversation_id.clone()).collect();
    let progress = Arc::new(Progress::default());
    let task = tokio::spawn(run(state.clone(), chosen.clone(), first_round, spec, progress.clone()));
    let mut r = lock(&state.replays);
    r.next_id += 1;
    let replay_id = r.next_id;
    r.running.retain(|_, run| !run.progress.done.load(Ordering::Acquire));
    r.running.insert(replay_id, Running { calls: chosen.len() * copies as usize, progress, task: task.abort_handle() });
    Ok(ReplayStarted { replay_id, conversation_ids })
}

/// Progress of every replay started and not yet cleared.
pub(crate) fn status(state: &State) -> Vec<ReplayStatus> {
    let r = lock(&state.replays);
    let mut list: Vec<ReplayStatus> = r
        .running
        .iter()
        .map(|(id, run)| ReplayStatus {
            replay_id: *id,
            calls: run.calls,
            lines_sent: run.progress.lines_sent.load(Ordering::Acquire),
            lines_delivered: run.progress.lines_delivered.load(Ordering::Acquire),
            rounds_done: run.progress.rounds_done.load(Ordering::Acquire),
            done: run.progress.done.load(Ordering::Acquire),
        })
        .collect();
    list.sort_by_key(|s| s.replay_id);
    list
}

/// Stop every replay; returns how many were still running.
pub(crate) fn stop_all(state: &State) -> usize {
    let mut r = lock(&state.replays);
    let mut stopped = 0;
    for run in r.running.values() {
        if !run.progress.done.swap(true, Ordering::AcqRel) {
            run.task.abort();
            stopped += 1;
        }
    }
    r.running.clear();
    stopped
}

/// The conversation as it stands before its replay: at the agent-connected snapshot.
fn fresh_state(call: &Arc<RecordedCall>) -> ConversationState {
    ConversationState {
        info: call.info.clone(),
        snapshot: call.connected_snapshot.clone(),
        patched: HashMap::new(),
        ended: false,
        recorded: Some(call.clone()),
    }
}

/// The calls of one round: the originals (when `keep_first`) and fresh-id copies, each
/// registered in the conversation store in its starting state.
fn instances(state: &State, calls: &[Arc<RecordedCall>], copies: u32, keep_first: bool) -> Vec<Arc<RecordedCall>> {
    let mut out = Vec::with_capacity(calls.len() * copies as usize);
    let mut convs = lock(&state.conversations);
    for copy in 0..copies {
        for call in calls {
            let inst = if copy == 0 && keep_first {
                call.clone()
            } else {
                let new_id = uuid::Uuid::new_v4().to_string();
                Arc::new(with_conversation_id(call, &new_id))
            };
            match convs.get_mut(&inst.info.conversation_id) {
                // A conversation replayed again starts over (attributes patched meanwhile stay).
                Some(c) => {
                    c.snapshot = inst.connected_snapshot.clone();
                    c.ended = false;
                }
                None => convs.insert(fresh_state(&inst)),
            }
            out.push(inst);
        }
    }
    out
}

/// A copy of `call` under another conversation id (topics and bodies rewritten).
fn with_conversation_id(call: &RecordedCall, new_id: &str) -> RecordedCall {
    let old = call.info.conversation_id.as_str();
    let swap_value = |v: &Value| -> Value {
        serde_json::to_string(v)
            .ok()
            .and_then(|s| serde_json::from_str(&s.replace(old, new_id)).ok())
            .unwrap_or_else(|| v.clone())
    };
    let mut info = call.info.clone();
    info.conversation_id = new_id.to_string();
    RecordedCall {
        info,
        lines: call
            .lines
            .iter()
            .map(|l| calls::RecordedLine {
                at: l.at,
                topic: l.topic.replace(old, new_id),
                message: l.message.replace(old, new_id),
            })
            .collect(),
        connected_line: call.connected_line,
        connected_snapshot: swap_value(&call.connected_snapshot),
        final_snapshot: swap_value(&call.final_snapshot),
    }
}

async fn run(
    state: Arc<State>,
    originals: Vec<Arc<RecordedCall>>,
    mut round: Vec<Arc<RecordedCall>>,
    spec: ReplaySpec,
    progress: Arc<Progress>,
) {
    loop {
        let mut set = JoinSet::new();
        for call in round {
            set.spawn(play(state.clone(), call, spec.speed, progress.clone()));
        }
        while set.join_next().await.is_some() {}
        progress.rounds_done.fetch_add(1, Ordering::AcqRel);
        if !spec.looped || progress.done.load(Ordering::Acquire) {
            break;
        }
        round = instances(&state, &originals, spec.copies.max(1), false);
    }
    progress.done.store(true, Ordering::Release);
}

/// Replay one call's lines at their times.
async fn play(state: Arc<State>, call: Arc<RecordedCall>, speed: Speed, progress: Arc<Progress>) {
    let Some(first) = call.lines.first() else { return };
    let t0 = first.at;
    let start = tokio::time::Instant::now();
    let last_snapshot = call.lines.iter().rposition(|l| is_snapshot(&l.topic));
    for (i, line) in call.lines.iter().enumerate() {
        if progress.done.load(Ordering::Acquire) {
            return;
        }
        match speed {
            Speed::Times(factor) => {
                let gap_ms = (line.at - t0).num_milliseconds().max(0) as f64 / factor;
                // Saturating: a long recording at a slow speed waits "forever", never panics.
                let due = start
                    .checked_add(Duration::from_micros((gap_ms * 1000.0) as u64))
                    .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365));
                if !state.burst.take() {
                    tokio::time::sleep_until(due).await;
                }
            }
            // Let other calls and the sockets run now and then.
            Speed::Max if i % 32 == 31 => tokio::task::yield_now().await,
            Speed::Max => {}
        }
        if is_snapshot(&line.topic) {
            update_conversation(&state, &call.info.conversation_id, &line.message, Some(i) == last_snapshot);
        }
        let got = notifications::publish_raw(&state, &line.topic, &line.message);
        progress.lines_sent.fetch_add(1, Ordering::AcqRel);
        if got > 0 {
            progress.lines_delivered.fetch_add(1, Ordering::AcqRel);
        }
    }
}

fn is_snapshot(topic: &str) -> bool {
    topic.starts_with("v2.routing.queues.") && topic.ends_with(".conversations")
}

/// Keep the REST view in step with the replayed snapshots; the last one ends the conversation.
fn update_conversation(state: &State, conversation_id: &str, message: &str, last: bool) {
    let Ok(mut envelope) = serde_json::from_str::<Value>(message) else { return };
    let Some(body) = envelope.get_mut("eventBody").map(Value::take) else { return };
    let mut convs = lock(&state.conversations);
    if let Some(c) = convs.get_mut(conversation_id) {
        c.snapshot = body;
        c.ended = last;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse() {
        assert_eq!(Speed::parse("max"), Ok(Speed::Max));
        assert_eq!(Speed::parse("0"), Ok(Speed::Max));
        assert_eq!(Speed::parse(" 20 "), Ok(Speed::Times(20.0)));
        assert_eq!(Speed::parse("0.5"), Ok(Speed::Times(0.5)));
        for bad in ["-1", "fast", "", "NaN", "inf", "1e-300"] {
            assert!(Speed::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_become_specs() {
        let r: ReplayRequest = serde_json::from_str(r#"{"speed":"max","loop":true,"copies":3}"#).expect("parses");
        let s = r.into_spec().expect("valid");
        assert_eq!((s.speed, s.looped, s.copies), (Speed::Max, true, 3));
        let r: ReplayRequest = serde_json::from_str(r#"{"speed":-2}"#).expect("parses");
        assert!(r.into_spec().is_err());
        assert!(serde_json::from_str::<ReplayRequest>(r#"{"sped":2}"#).is_err());
    }

    #[test]
    fn copies_rewrite_the_conversation_id_everywhere() {
        let loaded = calls::load_embedded().expect("embedded calls");
        let call = &loaded.calls[0];
        let copy = with_conversation_id(call, "11111111-2222-4333-8444-555555555555");
        let old = &call.info.conversation_id;
        assert_eq!(copy.lines.len(), call.lines.len());
        assert!(copy.lines.iter().all(|l| !l.message.contains(old.as_str()) && !l.topic.contains(old.as_str())));
        assert!(copy.lines.iter().any(|l| l.topic.contains("11111111-2222-4333-8444-555555555555")));
        assert!(!copy.connected_snapshot.to_string().contains(old.as_str()));
    }

    #[test]
    fn a_burst_is_consumed_line_by_line() {
        let b = Burst::default();
        b.0.store(2, Ordering::Release);
        assert!(b.take() && b.take());
        assert!(!b.take());
    }
}
