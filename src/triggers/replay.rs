//! Backtesting rules over recorded calls (`gc-assist replay`): the same [`ConversationEngine`]
//! the live service runs, driven by each line's `recordedAt`, with per-rule statistics and,
//! where the calls carry labels, precision and recall.
//!
//! # Loading
//!
//! [`load_calls`] reads every `*.jsonl` of a folder (sorted by name) and its `calls.json`
//! manifest when present (queue, labels). Each call is parsed once into timed events, so
//! [`replay`] measures evaluation alone. Files are parsed in parallel (one thread per core),
//! each line by the fast typed parse of [`super::recorded`], falling back per line to the
//! reference `Value` parse ([`parse_call_reference`]) for anything unusual, so results and
//! error messages are those of the reference.
//!
//! [`load_calls_with`] can keep each parsed call in a [`CallCache`] (compiled calls): a warm
//! run reads those instead of the JSON. The manifest is read on every run, so label edits
//! are never stale. A cache that cannot be used is a warning, and the run goes on without it.
//!
//! # Running a call
//!
//! The engine starts at the call's first line with the call's queue (id and name from the
//! manifest, else the id from the first queue topic). Before each line, pending deadlines up
//! to its `recordedAt` are ticked at their exact times, as the live timer would. [`replay`]
//! runs calls on every core (each call has its own engine) and counts their decisions in
//! call order, so the report does not depend on the number of threads.
//!
//! # Scoring against labels
//!
//! A rule scores against a label when its id *is* the label or starts with `label-` (for
//! example `refund_request-refunded`), else when its catalogue prompt (with `--catalogue`)
//! has the label among its tags. A fire (shadow fires included) is a **true positive** when
//! a label of that type in the same call has `recordedAt <= fire <= recordedAt + tolerance`
//! (default 15 s: keyword rules fire on the labelled line itself, sentiment arrives a
//! few lines later). **Precision** = true positives / fires. A **moment** is a label type
//! present in a call (repeats of a type in one call count once, since a latching rule
//! should fire on the first); **recall** = moments with a true-positive fire / moments,
//! per rule and per label over all its rules. A label with no rule shows recall 0. Without
//! a manifest there are no labels, and precision and recall are absent.
//!
//! "Time into call" is measured from the agent's connection (the first snapshot that has
//! it), else from the call's first line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::engine::{CompiledRules, ConversationEngine, Decision, SuppressReason};
use super::events::{parse_envelope, Event};
use super::recorded;
use super::replay_cache::{source_id, CallCache, Compiled, SourceKey};
use super::rules::RulePrompt;
use crate::contract::Catalogue;

/// What can go wrong loading calls.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("calls folder {0} does not exist or is not a folder")]
    MissingDir(PathBuf),
    #[error("no recorded calls (*.jsonl) in {0}")]
    NoCalls(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{file}:{line}: {reason}")]
    BadLine { file: String, line: usize, reason: String },
    #[error("{path} is not a valid calls manifest: {reason}")]
    BadManifest { path: PathBuf, reason: String },
}

/// Default tolerance for matching a fire to a label.
pub const DEFAULT_TOLERANCE_MS: i64 = 15_000;

/// One ground-truth moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub label: String,
    pub at_ms: i64,
}

/// One recorded call, parsed.
#[derive(Debug, Clone)]
pub struct Call {
    /// The file name.
    pub name: String,
    pub queue_id: Option<String>,
    pub queue_name: Option<String>,
    /// `None` when the folder has no manifest entry for this call (no ground truth).
    pub labels: Option<Vec<Label>>,
    /// Events with their `recordedAt` (epoch ms), in file order.
    pub steps: Vec<(i64, Event)>,
    /// Transcript utterances (every channel, partials included).
    pub utterances: u64,
    /// Lines read.
    pub lines: u64,
}

/// Calls of one folder, in file-name order.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    pub calls: Vec<Call>,
    /// The manifest's `labelVocabulary` (empty without a manifest).
    pub vocabulary: Vec<String>,
    /// Bytes of JSONL parsed.
    pub bytes: u64,
}

impl Calls {
    pub fn utterances(&self) -> u64 {
        self.calls.iter().map(|c| c.utterances).sum()
    }

    pub fn has_labels(&self) -> bool {
        self.calls.iter().any(|c| c.labels.is_some())
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Manifest {
    label_vocabulary: Vec<String>,
    calls: Vec<ManifestCall>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ManifestCall {
    file: String,
    queue_id: Option<String>,
    queue_name: Option<String>,
    labels: Vec<ManifestLabel>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ManifestLabel {
    label: String,
    recorded_at: String,
}

fn epoch_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// How [`load_calls_with`] reads the calls.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The compiled-calls cache directory; `None`: parse every file (no cache).
    pub cache: Option<PathBuf>,
    /// Parsing threads; 0: one per core.
    pub threads: usize,
}

/// How the calls were obtained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Calls read from the cache.
    pub cached: usize,
    /// Calls parsed from their JSONL (and, with a usable cache, compiled into it).
    pub parsed: usize,
    /// The cache directory in use, if any.
    pub cache_dir: Option<PathBuf>,
    /// Why the cache was not (fully) used; each message once.
    pub warnings: Vec<String>,
}

/// Reads every `*.jsonl` of `dir` and its `calls.json` when present, parsing every file
/// (no cache); `progress` is called after each file with (done, total).
pub fn load_calls(dir: &Path, progress: impl FnMut(usize, usize)) -> Result<Calls, ReplayError> {
    load_calls_with(dir, &LoadOptions::default(), progress).map(|(calls, _)| calls)
}

/// [`load_calls`] with a cache and a thread count: see the module docs.
pub fn load_calls_with(
    dir: &Path,
    options: &LoadOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Calls, LoadStats), ReplayError> {
    if !dir.is_dir() {
        return Err(ReplayError::MissingDir(dir.to_path_buf()));
    }
    let read_dir = std::fs::read_dir(dir).map_err(|source| ReplayError::Read { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = read_dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ReplayError::NoCalls(dir.to_path_buf()));
    }
    let manifest_path = dir.join("calls.json");
    let manifest: Option<Manifest> = if manifest_path.is_file() {
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|source| ReplayError::Read { path: manifest_path.clone(), source })?;
        Some(
            serde_json::from_str(&text)
                .map_err(|e| ReplayError::BadManifest { path: manifest_path.clone(), reason: e.to_string() })?,
        )
    } else {
        None
    };
    let mut by_file: HashMap<&str, &ManifestCall> = HashMap::new();
    if let Some(m) = &manifest {
        for c in &m.calls {
            by_file.insert(c.file.as_str(), c);
        }
    }
    let mut stats = LoadStats::default();
    let cache = options.cache.as_deref().and_then(|d| match CallCache::open(d) {
        Ok(c) => Some(c),
        Err(e) => {
            stats.warnings.push(format!("{e}; replaying without the cache"));
            None
        }
    });
    stats.cache_dir = cache.as_ref().map(|c| c.dir().to_path_buf());
    let canonical_dir = match &cache {
        Some(_) => {
            std::fs::canonicalize(dir).map_err(|source| ReplayError::Read { path: dir.to_path_buf(), source })?
        }
        None => dir.to_path_buf(),
    };
    let cache = cache.as_ref().map(|c| (c, canonical_dir.as_path()));
    let loaded = load_files(&files, cache, options.threads, &mut progress)?;
    let mut out = Calls {
        vocabulary: manifest.as_ref().map(|m| m.label_vocabulary.clone()).unwrap_or_default(),
        ..Calls::default()
    };
    for file in loaded {
        out.bytes += file.bytes;
        if file.cached {
            stats.cached += 1;
        } else {
            stats.parsed += 1;
        }
        for w in file.warnings {
            if !stats.warnings.contains(&w) {
                stats.warnings.push(w);
            }
        }
        let mut call = file.call;
        if let Some(m) = by_file.get(call.name.as_str()) {
            call.queue_id = m.queue_id.clone().or(call.queue_id);
            call.queue_name = m.queue_name.clone();
            let mut labels = Vec::with_capacity(m.labels.len());
            for l in &m.labels {
                let at_ms = epoch_ms(&l.recorded_at).ok_or_else(|| ReplayError::BadManifest {
                    path: manifest_path.clone(),
                    reason: format!(
                        "{}: label {:?} has a recordedAt that is not RFC 3339: {:?}",
                        call.name, l.label, l.recorded_at
                    ),
                })?;
                labels.push(Label { label: l.label.clone(), at_ms });
            }
            call.labels = Some(labels);
        }
        out.calls.push(call);
    }
    Ok((out, stats))
}

/// One call file, loaded.
struct Loaded {
    call: Call,
    bytes: u64,
    cached: bool,
    warnings: Vec<String>,
}

/// Loads `files` on `threads` threads, in order. Workers claim files in increasing order, so
/// when files fail, every file before the first failure has been loaded and the error
/// reported is the one a sequential run would report.
fn load_files(
    files: &[PathBuf],
    cache: Option<(&CallCache, &Path)>,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Loaded>, ReplayError> {
    let total = files.len();
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, total);
    let next = AtomicUsize::new(0);
    let first_error = AtomicUsize::new(usize::MAX);
    // After the first failed write, stop trying: the same error would repeat for every file.
    let writes_failed = AtomicBool::new(false);
    let mut slots: Vec<Option<Result<Loaded, ReplayError>>> = (0..total).map(|_| None).collect();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, first_error, writes_failed) = (&next, &first_error, &writes_failed);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || i > first_error.load(Ordering::Relaxed) {
                    break;
                }
                let result = load_file(&files[i], cache, writes_failed);
                if result.is_err() {
                    first_error.fetch_min(i, Ordering::Relaxed);
                }
                if tx.send((i, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, result) in rx {
            slots[i] = Some(result);
            done += 1;
            progress(done, total);
        }
    });
    let mut out = Vec::with_capacity(total);
    for slot in slots {
        match slot {
            Some(Ok(l)) => out.push(l),
            Some(Err(e)) => return Err(e),
            // Skipped after an earlier file failed; that error is returned first.
            None => break,
        }
    }
    Ok(out)
}

/// One file, from the cache (with `Some((cache, the folder's canonical path))`) or parsed.
fn load_file(
    path: &Path,
    cache: Option<(&CallCache, &Path)>,
    writes_failed: &AtomicBool,
) -> Result<Loaded, ReplayError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let id = cache.map(|(_, dir)| source_id(dir, &name)).unwrap_or_default();
    let cache = cache.map(|(c, _)| c);
    let read_err = |source| ReplayError::Read { path: path.to_path_buf(), source };
    let mut warnings = Vec::new();
    // The key is taken before reading: see replay_cache's docs.
    let key = match cache {
        Some(_) => Some(SourceKey::of(&std::fs::metadata(path).map_err(read_err)?)),
        None => None,
    };
    if let (Some(cache), Some(key)) = (cache, &key) {
        match cache.get(&id, key) {
            Ok(Some(c)) => {
                let call = Call {
                    name,
                    queue_id: c.queue_id,
                    queue_name: None,
                    labels: None,
                    steps: c.steps,
                    utterances: c.utterances,
                    lines: c.lines,
                };
                return Ok(Loaded { call, bytes: key.len, cached: true, warnings });
            }
            Ok(None) => {}
            Err(e) => warnings.push(format!("{e}; parsing the call instead")),
        }
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let call = parse_call(&name, &text)?;
    if let (Some(cache), Some(key)) = (cache, &key) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if !writes_failed.load(Ordering::Relaxed) && !key.is_racy(now) {
            let compiled = Compiled {
                queue_id: call.queue_id.clone(),
                steps: call.steps.clone(),
                utterances: call.utterances,
                lines: call.lines,
            };
            if let Err(e) = cache.put(&id, key, &compiled) {
                writes_failed.store(true, Ordering::Relaxed);
                warnings.push(format!("{e}; continuing without caching"));
            }
        }
    }
    Ok(Loaded { call, bytes: text.len() as u64, cached: false, warnings })
}

/// Parses one call's JSONL text (each line a notification envelope with `recordedAt`):
/// the fast typed parse, with the reference parse for any line it declines.
pub fn parse_call(name: &str, text: &str) -> Result<Call, ReplayError> {
    let mut call = empty_call(name);
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fast = recorded::parse_line(line, &mut events).and_then(|head| {
            let at = epoch_ms(head.recorded_at)?;
            Some((at, head.topic_name))
        });
        let Some((at, topic_name)) = fast else {
            reference_line(&mut call, name, n, line)?;
            continue;
        };
        call.lines += 1;
        if call.queue_id.is_none() {
            call.queue_id = queue_of_topic(topic_name);
        }
        for e in events.drain(..) {
            if matches!(e, Event::Utterance(_)) {
                call.utterances += 1;
            }
            call.steps.push((at, e));
        }
    }
    Ok(call)
}

/// Parses one call's JSONL text through a `serde_json::Value` per line: the reference
/// [`parse_call`] must agree with (and the baseline of the benchmarks).
pub fn parse_call_reference(name: &str, text: &str) -> Result<Call, ReplayError> {
    let mut call = empty_call(name);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        reference_line(&mut call, name, n, line)?;
    }
    Ok(call)
}

fn empty_call(name: &str) -> Call {
    Call {
        name: name.to_string(),
        queue_id: None,
        queue_name: None,
        labels: None,
        steps: Vec::new(),
        utterances: 0,
        lines: 0,
    }
}

/// Adds line `n` (0-based) to `call` by the reference parse.
fn reference_line(call: &mut Call, name: &str, n: usize, line: &str) -> Result<(), ReplayError> {
    let bad = |reason: String| ReplayError::BadLine { file: name.to_string(), line: n + 1, reason };
    call.lines += 1;
    let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let at = v
        .get("recordedAt")
        .and_then(Value::as_str)
        .and_then(epoch_ms)
        .ok_or_else(|| bad("no RFC 3339 `recordedAt` on the line".into()))?;
    if call.queue_id.is_none() {
        call.queue_id = queue_of_topic(v.get("topicName").and_then(Value::as_str).unwrap_or(""));
    }
    let notification = parse_envelope(&v).map_err(|e| bad(e.to_string()))?;
    for e in notification.events {
        if matches!(e, Event::Utterance(_)) {
            call.utterances += 1;
        }
        call.steps.push((at, e));
    }
    Ok(())
}

fn queue_of_topic(topic: &str) -> Option<String> {
    let rest = topic.strip_prefix("v2.routing.queues.")?;
    let id = rest.strip_suffix(".conversations")?;
    (!id.is_empty()).then(|| id.to_string())
}

/// Which label each rule scores against (see the module docs).
pub fn rule_labels(rules: &CompiledRules, vocabulary: &[String], catalogue: Option<&Catalogue>) -> Vec<Option<String>> {
    rules
        .rules()
        .iter()
        .map(|r| {
            let id = &*r.id;
            if let Some(l) = vocabulary
                .iter()
                .find(|l| id == l.as_str() || id.strip_prefix(l.as_str()).is_some_and(|rest| rest.starts_with('-')))
            {
                return Some(l.clone());
            }
            let (RulePrompt::Catalogue(pid), Some(c)) = (&r.rule.prompt, catalogue) else { return None };
            let entry = c.get(pid)?;
            entry.tags.iter().find(|t| vocabulary.contains(t)).cloned()
        })
        .collect()
}

/// One fire in one call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fire {
    pub rule_id: String,
    pub at_ms: i64,
    /// Milliseconds into the call.
    pub into_call_ms: i64,
    pub shadow: bool,
}

/// Per-rule statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStats {
    pub id: String,
    pub label: Option<String>,
    pub shadow: bool,
    /// Every fire, shadow ones included.
    pub fires: u64,
    pub shadow_fires: u64,
    pub calls_fired: u64,
    pub fires_per_call: f64,
    pub median_into_call_ms: Option<i64>,
    pub p90_into_call_ms: Option<i64>,
    pub suppressed_cooldown: u64,
    pub suppressed_cap: u64,
    pub expired: u64,
    pub true_positives: Option<u64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// Per-label recall over all the rules scoring against it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelStats {
    pub label: String,
    /// Calls with this label type.
    pub moments: u64,
    pub recalled: u64,
    pub recall: f64,
    pub rules: Vec<String>,
}

/// The result of replaying a rule set over calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub calls: u64,
    pub utterances: u64,
    pub events: u64,
    pub tolerance_ms: i64,
    pub labelled: bool,
    pub rules: Vec<RuleStats>,
    pub labels: Vec<LabelStats>,
    /// Per call (file name): its fires, in time order.
    pub fires_by_call: BTreeMap<String, Vec<Fire>>,
}

/// Decisions of one call, timed.
fn run_call(rules: &CompiledRules, call: &Call, out: &mut Vec<(i64, Decision)>) -> i64 {
    let mut engine = ConversationEngine::new();
    let start = call.steps.first().map_or(0, |s| s.0);
    let mut connected: Option<i64> = None;
    out.extend(
        engine
            .start(rules, call.queue_id.as_deref(), call.queue_name.as_deref(), start)
            .into_iter()
            .map(|d| (start, d)),
    );
    for (at, event) in &call.steps {
        while let Some(d) = engine.next_deadline(rules).filter(|d| d <= at) {
            out.extend(engine.on_tick(rules, d).into_iter().map(|x| (d, x)));
        }
        if let Event::AgentConnected { at_ms } = event {
            connected.get_or_insert(*at_ms);
        }
        out.extend(engine.on_event(rules, event, *at).into_iter().map(|x| (*at, x)));
    }
    connected.unwrap_or(start)
}

/// Runs only the evaluation (no statistics): the decision count, for throughput figures.
pub fn evaluate(rules: &CompiledRules, calls: &[Call]) -> usize {
    let mut buf = Vec::new();
    let mut n = 0;
    for call in calls {
        buf.clear();
        run_call(rules, call, &mut buf);
        n += buf.len();
    }
    n
}

/// One call's time zero (see [`run_call`]) and timed decisions.
type CallRun = (i64, Vec<(i64, Decision)>);

/// Each call's run, in call order, computed on every core.
fn run_calls(rules: &CompiledRules, calls: &[Call]) -> Vec<CallRun> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, calls.len().max(1));
    let one = |call: &Call| {
        let mut buf = Vec::new();
        let t0 = run_call(rules, call, &mut buf);
        (t0, buf)
    };
    if threads == 1 {
        return calls.iter().map(one).collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<CallRun>> = (0..calls.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (next, one) = (&next, &one);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(call) = calls.get(i) else { break };
                        done.push((i, one(call)));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            // A worker only panics if the engine does; re-raise it here rather than lose calls.
            let done = w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            for (i, r) in done {
                slots[i] = Some(r);
            }
        }
    });
    // Every index below calls.len() was claimed by exactly one worker.
    slots.into_iter().map(|s| s.unwrap_or_default()).collect()
}

/// Replays every call and computes the report; `labels` comes from [`rule_labels`].
pub fn replay(
    rules: &CompiledRules,
    calls: &Calls,
    labels: &[Option<String>],
    tolerance_ms: i64,
    mut progress: impl FnMut(usize, usize),
) -> Report {
    let n_rules = rules.rules().len();
    let mut fires = vec![0u64; n_rules];
    let mut shadow_fires = vec![0u64; n_rules];
    let mut calls_fired = vec![0u64; n_rules];
    let mut times: Vec<Vec<i64>> = vec![Vec::new(); n_rules];
    let mut cooldown = vec![0u64; n_rules];
    let mut cap = vec![0u64; n_rules];
    let mut expired = vec![0u64; n_rules];
    let mut tp = vec![0u64; n_rules];
    let mut rule_recalled = vec![0u64; n_rules];
    let mut moments: BTreeMap<String, u64> = BTreeMap::new();
    let mut label_recalled: BTreeMap<String, u64> = BTreeMap::new();
    let mut fires_by_call = BTreeMap::new();
    let mut events = 0u64;
    let total = calls.calls.len();
    // Calls are independent: their decisions are computed on every core, then counted here
    // in call order, so the report is the same as a sequential run's.
    let runs = run_calls(rules, &calls.calls);
    for (ci, (call, (t0, buf))) in calls.calls.iter().zip(runs).enumerate() {
        events += call.steps.len() as u64;
        let mut fired_here = vec![false; n_rules];
        let mut recalled_here: BTreeSet<(usize, String)> = BTreeSet::new();
        let mut call_fires = Vec::new();
        for (at, d) in &buf {
            match d {
                Decision::Fire { rule_index: i, rule_id, shadow, .. } => {
                    let i = *i;
                    fires[i] += 1;
                    if *shadow {
                        shadow_fires[i] += 1;
                    }
                    fired_here[i] = true;
                    times[i].push(at - t0);
                    call_fires.push(Fire {
                        rule_id: rule_id.to_string(),
                        at_ms: *at,
                        into_call_ms: at - t0,
                        shadow: *shadow,
                    });
                    if let (Some(want), Some(call_labels)) = (labels.get(i).and_then(Option::as_ref), &call.labels) {
                        let hit = call_labels
                            .iter()
                            .any(|l| &l.label == want && l.at_ms <= *at && *at <= l.at_ms + tolerance_ms);
                        if hit {
                            tp[i] += 1;
                            recalled_here.insert((i, want.clone()));
                        }
                    }
                }
                Decision::Suppressed { rule_index, reason: SuppressReason::Cooldown, .. } => cooldown[*rule_index] += 1,
                Decision::Suppressed { rule_index, reason: SuppressReason::Cap, .. } => cap[*rule_index] += 1,
                Decision::Expired { rule_index, .. } => expired[*rule_index] += 1,
                Decision::ApiFired { .. } | Decision::ApiExpired { .. } => {}
            }
        }
        for (i, f) in fired_here.iter().enumerate() {
            if *f {
                calls_fired[i] += 1;
            }
        }
        if let Some(call_labels) = &call.labels {
            let types: BTreeSet<&str> = call_labels.iter().map(|l| l.label.as_str()).collect();
            for t in &types {
                *moments.entry(t.to_string()).or_default() += 1;
            }
            let mut label_hit: BTreeSet<&str> = BTreeSet::new();
            for (i, l) in &recalled_here {
                rule_recalled[*i] += 1;
                label_hit.insert(l.as_str());
            }
            for l in label_hit {
                *label_recalled.entry(l.to_string()).or_default() += 1;
            }
        }
        fires_by_call.insert(call.name.clone(), call_fires);
        progress(ci + 1, total);
    }
    let labelled = calls.has_labels();
    let n_calls = calls.calls.len().max(1) as f64;
    let rule_stats = rules
        .rules()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let label = labels.get(i).cloned().flatten();
            let scored = labelled && label.is_some();
            let m = label.as_ref().and_then(|l| moments.get(l)).copied().unwrap_or(0);
            let mut t = std::mem::take(&mut times[i]);
            t.sort_unstable();
            RuleStats {
                id: r.id.to_string(),
                label: label.clone(),
                shadow: r.rule.shadow,
                fires: fires[i],
                shadow_fires: shadow_fires[i],
                calls_fired: calls_fired[i],
                fires_per_call: fires[i] as f64 / n_calls,
                median_into_call_ms: percentile(&t, 0.5),
                p90_into_call_ms: percentile(&t, 0.9),
                suppressed_cooldown: cooldown[i],
                suppressed_cap: cap[i],
                expired: expired[i],
                true_positives: scored.then_some(tp[i]),
                precision: (scored && fires[i] > 0).then(|| tp[i] as f64 / fires[i] as f64),
                recall: (scored && m > 0).then(|| rule_recalled[i] as f64 / m as f64),
            }
        })
        .collect::<Vec<_>>();
    let label_stats = moments
        .iter()
        .map(|(l, m)| {
            let recalled = label_recalled.get(l).copied().unwrap_or(0);
            LabelStats {
                label: l.clone(),
                moments: *m,
                recalled,
                recall: recalled as f64 / (*m).max(1) as f64,
                rules: rule_stats.iter().filter(|r| r.label.as_deref() == Some(l)).map(|r| r.id.clone()).collect(),
            }
        })
        .collect();
    Report {
        calls: calls.calls.len() as u64,
        utterances: calls.utterances(),
        events,
        tolerance_ms,
        labelled,
        rules: rule_stats,
        labels: label_stats,
        fires_by_call,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

/// One rule in a comparison of two rule versions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleChange {
    pub id: String,
    /// `None`: the rule is not in (or not enabled in) that version.
    pub old: Option<RuleStats>,
    pub new: Option<RuleStats>,
    /// Calls where this rule's fires (count or times) differ.
    pub changed_calls: Vec<String>,
}

/// What changes between two rule versions over the same calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    pub rules: Vec<RuleChange>,
    /// Calls whose firing changed in any rule.
    pub changed_calls: Vec<String>,
}

/// Compares two reports of the same calls, rule by rule (new order first, then rules only
/// in the old version).
pub fn compare(old: &Report, new: &Report) -> Comparison {
    let mut ids: Vec<&str> = new.rules.iter().map(|r| r.id.as_str()).collect();
    for r in &old.rules {
        if !ids.contains(&r.id.as_str()) {
            ids.push(&r.id);
        }
    }
    let fires_of = |report: &Report, call: &str, id: &str| -> Vec<i64> {
        report
            .fires_by_call
            .get(call)
            .map_or_else(Vec::new, |f| f.iter().filter(|x| x.rule_id == id).map(|x| x.at_ms).collect())
    };
    let calls: BTreeSet<&String> = old.fires_by_call.keys().chain(new.fires_by_call.keys()).collect();
    let mut all_changed = BTreeSet::new();
    let rules = ids
        .into_iter()
        .map(|id| {
            let changed_calls: Vec<String> =
                calls.iter().filter(|c| fires_of(old, c, id) != fires_of(new, c, id)).map(|c| c.to_string()).collect();
            all_changed.extend(changed_calls.iter().cloned());
            RuleChange {
                id: id.to_string(),
                old: old.rules.iter().find(|r| r.id == id).cloned(),
                new: new.rules.iter().find(|r| r.id == id).cloned(),
                changed_calls,
            }
        })
        .collect();
    Comparison { rules, changed_calls: all_changed.into_iter().collect() }
}

#[cfg(test)]
mod tests {
    use super::super::calls_dir;
    use super::super::rules::RuleSet;
    use super::*;

    fn example_rules() -> CompiledRules {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.yaml");
        let set = RuleSet::load(&path).expect("examples/rules.yaml is valid");
        CompiledRules::compile(&set, None).expect("compile")
    }

    #[test]
    fn replays_the_recorded_calls_against_their_labels() {
        let calls = load_calls(&calls_dir(), |_, _| {}).expect("calls");
        assert!(calls.has_labels());
        let rules = example_rules();
        let labels = rule_labels(&rules, &calls.vocabulary, None);
        let report = replay(&rules, &calls, &labels, DEFAULT_TOLERANCE_MS, |_, _| {});
        assert_eq!(report.calls as usize, calls.calls.len());
        let refund = report.rules.iter().find(|r| r.id == "refund_request").expect("rule");
        assert!(refund.fires > 0 && refund.precision.is_some() && refund.recall.is_some(), "{refund:?}");
        // Keyword rules fire on the labelled line: a refund fire is a true positive.
        assert!(refund.precision.unwrap_or(0.0) > 0.5, "{refund:?}");
        // Agent-only calls never fire a customer keyword rule.
        for (name, fires) in &report.fires_by_call {
            if name.contains("agent_only_keyword") {
                assert!(fires.iter().all(|f| f.rule_id == "long-unhappy-call"), "{name}: {fires:?}");
            }
        }
        // Every label type present has a line, with the rules that score against it.
        let refund_label = report.labels.iter().find(|l| l.label == "refund_request").expect("label");
        assert!(refund_label.rules.contains(&"refund_request".to_string()));
        assert!(refund_label.recalled <= refund_label.moments);
        // Shadow rules count their fires separately.
        for r in &report.rules {
            assert_eq!(r.shadow_fires, if r.shadow { r.fires } else { 0 }, "{r:?}");
        }
    }

    #[test]
    fn precision_and_recall_by_hand() {
        // One call, a refund label at t = 10 s; the rule fires at 10 s (hit); another call
        // with no labels where it fires too (miss).
        let line = |t: &str, text: &str| {
            format!(
                r#"{{"recordedAt":"2025-01-01T00:00:{t}Z","topicName":"v2.conversations.c1.transcription","eventBody":{{"transcripts":[{{"isFinal":true,"channel":"EXTERNAL","alternatives":[{{"transcript":"{text}","confidence":0.9}}]}}]}}}}"#
            )
        };
        let mut hit =
            parse_call("a.jsonl", &[line("05", "hello"), line("10", "a refund please")].join("\n")).expect("a");
        hit.labels =
            Some(vec![Label { label: "refund_request".into(), at_ms: epoch_ms("2025-01-01T00:00:10Z").unwrap_or(0) }]);
        let mut miss = parse_call("b.jsonl", &line("07", "no refund needed")).expect("b");
        miss.labels = Some(Vec::new());
        let calls = Calls { calls: vec![hit, miss], vocabulary: vec!["refund_request".into()], bytes: 0 };
        let set = RuleSet::parse(
            "- id: refund_request\n  promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n  conditions: [{type: keyword, value: refund}]\n",
            "r.yaml",
        )
        .expect("rules");
        let rules = CompiledRules::compile(&set, None).expect("compile");
        let labels = rule_labels(&rules, &calls.vocabulary, None);
        let report = replay(&rules, &calls, &labels, DEFAULT_TOLERANCE_MS, |_, _| {});
        let r = &report.rules[0];
        assert_eq!((r.fires, r.calls_fired, r.true_positives), (2, 2, Some(1)));
        assert_eq!((r.precision, r.recall), (Some(0.5), Some(1.0)));
        assert_eq!(r.median_into_call_ms, Some(0), "{r:?}");
        assert_eq!(report.utterances, 3);
        // A version without the rule: both calls change.
        let empty = CompiledRules::compile(&RuleSet::default(), None).expect("empty");
        let old = replay(&empty, &calls, &[], DEFAULT_TOLERANCE_MS, |_, _| {});
        let cmp = compare(&old, &report);
        assert_eq!(cmp.changed_calls, ["a.jsonl", "b.jsonl"]);
        assert!(cmp.rules[0].old.is_none() && cmp.rules[0].new.is_some());
    }

    /// The engine checks only the rules an event can affect; the evaluator checks every
    /// armed entry on every event. For one-shot rules both must fire at the same moments.
    #[test]
    fn engine_agrees_with_the_plain_evaluator_on_every_recorded_call() {
        use super::super::evaluator::{Armed, ArmedId, ConversationState, Evaluator, Outcome};
        let calls = load_calls(&calls_dir(), |_, _| {}).expect("calls");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.yaml");
        let mut set = RuleSet::load(&path).expect("rules");
        for r in &mut set.rules {
            (r.max_per_conversation, r.cooldown_seconds, r.queues) = (1, 0, Vec::new());
        }
        let rules = CompiledRules::compile(&set, None).expect("compile");
        for call in &calls.calls {
            let mut engine_fires = Vec::new();
            let mut buf = Vec::new();
            run_call(&rules, call, &mut buf);
            for (at, d) in &buf {
                if let Decision::Fire { rule_index, .. } = d {
                    engine_fires.push((*rule_index, *at));
                }
            }
            let mut ev = Evaluator::new(rules.index().clone());
            let mut state = ConversationState::new();
            let mut plain = Vec::new();
            let start = call.steps.first().map_or(0, |s| s.0);
            for (i, r) in rules.rules().iter().enumerate() {
                if let Some(Outcome::Fired(_)) =
                    state.arm(Armed { id: ArmedId(i as u64), conditions: r.conditions.clone() }, start)
                {
                    plain.push((i, start));
                }
            }
            for (at, e) in &call.steps {
                while let Some(d) = state.next_deadline().filter(|d| d <= at) {
                    plain.extend(ev.on_tick(&mut state, d).into_iter().filter_map(|o| match o {
                        Outcome::Fired(id) => Some((id.0 as usize, d)),
                        Outcome::Expired(_) => None,
                    }));
                }
                plain.extend(ev.on_event(&mut state, e, *at).into_iter().filter_map(|o| match o {
                    Outcome::Fired(id) => Some((id.0 as usize, *at)),
                    Outcome::Expired(_) => None,
                }));
            }
            engine_fires.sort_unstable();
            plain.sort_unstable();
            assert_eq!(engine_fires, plain, "{}", call.name);
        }
    }

    /// Everything of a call that replay reads.
    #[allow(clippy::type_complexity)]
    fn facts(c: &Call) -> (&str, &Option<String>, &Option<String>, &Option<Vec<Label>>, &Vec<(i64, Event)>, u64, u64) {
        (&c.name, &c.queue_id, &c.queue_name, &c.labels, &c.steps, c.utterances, c.lines)
    }

    fn same_calls(a: &Calls, b: &Calls) {
        assert_eq!(a.calls.len(), b.calls.len());
        for (x, y) in a.calls.iter().zip(&b.calls) {
            assert_eq!(facts(x), facts(y));
        }
        assert_eq!((&a.vocabulary, a.bytes), (&b.vocabulary, b.bytes));
    }

    fn with_cache(dir: &Path, cache: &Path) -> (Calls, LoadStats) {
        let options = LoadOptions { cache: Some(cache.to_path_buf()), threads: 0 };
        load_calls_with(dir, &options, |_, _| {}).expect("calls")
    }

    /// A scratch copy of the first `n` recorded calls (with the manifest), so tests can edit it.
    fn scratch_calls(n: usize) -> tempfile::TempDir {
        let src = calls_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&src)
            .expect("calls")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        names.sort();
        for p in names.iter().take(n) {
            std::fs::copy(p, dir.path().join(p.file_name().expect("name"))).expect("copy");
        }
        std::fs::copy(src.join("calls.json"), dir.path().join("calls.json")).expect("copy manifest");
        dir
    }

    #[test]
    fn fast_parse_equals_the_reference_parse_on_every_recorded_call() {
        let dir = calls_dir();
        let calls = load_calls(&dir, |_, _| {}).expect("calls");
        for c in &calls.calls {
            let text = std::fs::read_to_string(dir.join(&c.name)).expect("read");
            let (fast, reference) =
                (parse_call(&c.name, &text).expect("fast"), parse_call_reference(&c.name, &text).expect("ref"));
            assert_eq!(facts(&fast), facts(&reference), "{}", c.name);
        }
    }

    /// Cold (no cache), first run with a cache (parse + compile), warm (from the cache) and
    /// the reference parse give the same calls and the same reports, comparison included.
    #[test]
    fn cold_warm_and_reference_give_identical_reports() {
        let dir = calls_dir();
        let cache = tempfile::tempdir().expect("cache dir");
        let cold = load_calls(&dir, |_, _| {}).expect("cold");
        let (first, s1) = with_cache(&dir, cache.path());
        let (warm, s2) = with_cache(&dir, cache.path());
        let n = cold.calls.len();
        assert_eq!((s1.parsed, s1.cached, s2.parsed, s2.cached), (n, 0, 0, n));
        assert!(s1.warnings.is_empty() && s2.warnings.is_empty(), "{s1:?} {s2:?}");
        // The reference: every file through the Value parse, with the manifest's queue and labels.
        let mut reference = cold.clone();
        for c in &mut reference.calls {
            let text = std::fs::read_to_string(dir.join(&c.name)).expect("read");
            let r = parse_call_reference(&c.name, &text).expect("reference");
            (c.steps, c.utterances, c.lines) = (r.steps, r.utterances, r.lines);
        }
        same_calls(&cold, &first);
        same_calls(&cold, &warm);
        same_calls(&cold, &reference);
        let rules = example_rules();
        let labels = rule_labels(&rules, &cold.vocabulary, None);
        let old = CompiledRules::compile(
            &RuleSet::parse(
                "- id: refund_request\n  promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n  conditions: [{type: keyword, value: money back}]\n",
                "old.yaml",
            )
            .expect("rules"),
            None,
        )
        .expect("compile");
        let old_labels = rule_labels(&old, &cold.vocabulary, None);
        let run = |calls: &Calls| {
            let new = replay(&rules, calls, &labels, DEFAULT_TOLERANCE_MS, |_, _| {});
            let before = replay(&old, calls, &old_labels, DEFAULT_TOLERANCE_MS, |_, _| {});
            let cmp = compare(&before, &new);
            (new, cmp)
        };
        let want = run(&reference);
        assert!(want.0.rules.iter().any(|r| r.fires > 0));
        for calls in [&cold, &first, &warm] {
            assert_eq!(run(calls), want);
        }
        // One thread or many: the same calls in the same order.
        let one = load_calls_with(&dir, &LoadOptions { cache: None, threads: 1 }, |_, _| {}).expect("one thread").0;
        same_calls(&cold, &one);
    }

    #[test]
    fn parallel_evaluation_equals_the_sequential_one() {
        let calls = load_calls(&calls_dir(), |_, _| {}).expect("calls");
        let rules = example_rules();
        let sequential: Vec<CallRun> = calls
            .calls
            .iter()
            .map(|c| {
                let mut buf = Vec::new();
                let t0 = run_call(&rules, c, &mut buf);
                (t0, buf)
            })
            .collect();
        assert!(sequential.iter().any(|(_, d)| !d.is_empty()));
        assert_eq!(run_calls(&rules, &calls.calls), sequential);
        assert!(run_calls(&rules, &[]).is_empty());
    }

    fn entries(cache: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
            .expect("cache")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "call"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_changed_touched_truncated_or_replaced_source_is_never_served_stale() {
        let calls = scratch_calls(3);
        let cache = tempfile::tempdir().expect("cache");
        let (cold, s) = with_cache(calls.path(), cache.path());
        assert_eq!((s.parsed, s.cached), (3, 0));
        assert_eq!(entries(cache.path()).len(), 3);
        let first = calls.path().join(&cold.calls[0].name);
        let second = calls.path().join(&cold.calls[1].name);
        let third = calls.path().join(&cold.calls[2].name);

        // Modified content: one more utterance at the end.
        let extra = r#"{"recordedAt":"2030-01-01T00:00:00Z","topicName":"v2.conversations.c.transcription","eventBody":{"transcripts":[{"isFinal":true,"channel":"EXTERNAL","alternatives":[{"transcript":"refund"}]}]}}"#;
        let mut text = std::fs::read_to_string(&first).expect("read");
        text.push_str(extra);
        text.push('\n');
        std::fs::write(&first, &text).expect("write");
        let (after, s) = with_cache(calls.path(), cache.path());
        assert_eq!((s.parsed, s.cached), (1, 2));
        assert_eq!(after.calls[0].utterances, cold.calls[0].utterances + 1);
        assert_eq!(after.calls[0].lines, cold.calls[0].lines + 1);

        // Touched only (same bytes, new time): re-parsed, same facts.
        let f = std::fs::File::options().write(true).open(&second).expect("open");
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_millis(123_457)).expect("touch");
        drop(f);
        let (after, s) = with_cache(calls.path(), cache.path());
        assert_eq!((s.parsed, s.cached), (1, 2));
        assert_eq!(facts(&after.calls[1]), facts(&cold.calls[1]));

        // Truncated to its first half (whole lines).
        let text = std::fs::read_to_string(&third).expect("read");
        let half: String = text.lines().take(text.lines().count() / 2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&third, &half).expect("truncate");
        let (after, s) = with_cache(calls.path(), cache.path());
        assert_eq!((s.parsed, s.cached), (1, 2));
        assert!(after.calls[2].lines < cold.calls[2].lines);
        assert_eq!(facts(&after.calls[2]), facts(&parse_call_with_manifest(&after, 2, &half)));

        // Replaced by another file of the same name (a rename over it): re-parsed.
        let other = calls.path().join("other.tmp");
        std::fs::write(&other, std::fs::read_to_string(&second).expect("read")).expect("write");
        std::fs::rename(&other, &second).expect("rename");
        let (_, s) = with_cache(calls.path(), cache.path());
        assert_eq!((s.parsed, s.cached), (1, 2));

        // Nothing changed since: all from the cache, and one entry per call.
        let (warm, s) = with_cache(calls.path(), cache.path());
        assert_eq!((s.parsed, s.cached), (0, 3));
        assert_eq!(entries(cache.path()).len(), 3);
        let cold_now = load_calls(calls.path(), |_, _| {}).expect("cold");
        same_calls(&cold_now, &warm);
    }

    /// `parse_call` of `text` with the manifest facts of call `i` of `calls`.
    fn parse_call_with_manifest(calls: &Calls, i: usize, text: &str) -> Call {
        let c = &calls.calls[i];
        let mut p = parse_call(&c.name, text).expect("parse");
        (p.queue_id, p.queue_name, p.labels) = (c.queue_id.clone(), c.queue_name.clone(), c.labels.clone());
        p
    }

    #[test]
    fn damaged_cache_entries_are_rebuilt() {
        let calls = scratch_calls(3);
        let cache = tempfile::tempdir().expect("cache");
        let (cold, _) = with_cache(calls.path(), cache.path());
        let files = entries(cache.path());
        assert_eq!(files.len(), 3);
        // Garbage, a truncated entry, an empty one.
        std::fs::write(&files[0], b"\x00\xffnot a cache entry at all").expect("garbage");
        let bytes = std::fs::read(&files[1]).expect("read");
        std::fs::write(&files[1], &bytes[..bytes.len() / 2]).expect("truncate");
        std::fs::write(&files[2], b"").expect("empty");
        let (rebuilt, s) = with_cache(calls.path(), cache.path());
        assert_eq!((s.parsed, s.cached), (3, 0));
        assert!(s.warnings.is_empty(), "{s:?}");
        same_calls(&cold, &rebuilt);
        let (warm, s) = with_cache(calls.path(), cache.path());
        assert_eq!((s.parsed, s.cached), (0, 3));
        same_calls(&cold, &warm);
        // A temporary file left by a crash mid-write is not an entry and changes nothing.
        std::fs::write(cache.path().join(".tmp-1-1"), &bytes[..10]).expect("leftover");
        assert_eq!(with_cache(calls.path(), cache.path()).1.cached, 3);
    }

    #[test]
    fn an_unusable_cache_folder_is_a_warning_and_no_cache() {
        let calls = scratch_calls(2);
        let not_a_dir = tempfile::NamedTempFile::new().expect("file");
        let (got, s) = with_cache(calls.path(), not_a_dir.path());
        assert_eq!((s.parsed, s.cached, s.cache_dir.is_none()), (2, 0, true));
        assert_eq!(s.warnings.len(), 1, "{s:?}");
        assert!(s.warnings[0].contains("replay cache") && s.warnings[0].contains("without the cache"), "{s:?}");
        same_calls(&load_calls(calls.path(), |_, _| {}).expect("cold"), &got);
    }

    #[test]
    fn bad_lines_keep_their_file_and_line_with_a_cache_and_in_parallel() {
        let dir = tempfile::tempdir().expect("calls");
        let cache = tempfile::tempdir().expect("cache");
        let good = r#"{"recordedAt":"2025-01-01T00:00:00Z","topicName":"channel.metadata"}"#;
        std::fs::write(dir.path().join("a.jsonl"), format!("{good}\n")).expect("write");
        std::fs::write(dir.path().join("b.jsonl"), format!("{good}\n\n{{\"recordedAt\": 5}}\n")).expect("write");
        std::fs::write(dir.path().join("c.jsonl"), "not json\n").expect("write");
        let options = LoadOptions { cache: Some(cache.path().to_path_buf()), threads: 3 };
        for _ in 0..3 {
            let err = load_calls_with(dir.path(), &options, |_, _| {}).expect_err("bad line");
            assert_eq!(err.to_string(), "b.jsonl:3: no RFC 3339 `recordedAt` on the line");
        }
        std::fs::write(dir.path().join("b.jsonl"), format!("{good}\n")).expect("fix");
        let err = load_calls_with(dir.path(), &options, |_, _| {}).expect_err("bad line");
        assert!(err.to_string().starts_with("c.jsonl:1: not JSON"), "{err}");
        // A bad body keeps the reference's message.
        std::fs::write(
            dir.path().join("c.jsonl"),
            r#"{"recordedAt":"2025-01-01T00:00:00Z","topicName":"v2.conversations.c.transcription","eventBody":[]}"#,
        )
        .expect("write");
        let err = load_calls_with(dir.path(), &options, |_, _| {}).expect_err("bad body");
        assert!(err.to_string().starts_with("c.jsonl:1: eventBody of v2.conversations.c.transcription"), "{err}");
        // The files that did parse were cached; the failing one was not.
        assert_eq!(entries(cache.path()).len(), 2);
    }

    #[test]
    fn folder_errors() {
        assert!(matches!(load_calls(Path::new("/nonexistent/calls"), |_, _| {}), Err(ReplayError::MissingDir(_))));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(load_calls(dir.path(), |_, _| {}), Err(ReplayError::NoCalls(_))));
        std::fs::write(dir.path().join("x.jsonl"), "{\"recordedAt\": \"2025-01-01T00:00:00Z\"}\nnot json\n")
            .expect("write");
        let err = load_calls(dir.path(), |_, _| {}).expect_err("bad line");
        assert!(err.to_string().starts_with("x.jsonl:2: not JSON"), "{err}");
    }
}
