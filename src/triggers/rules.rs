//! Rules files (CONTRACT.md §3): parsing and validating the YAML that arms prompts on every
//! conversation of chosen queues, with errors that name file, line and field, and the
//! [`RuleWatcher`] that hot-reloads a file without dropping live state.
//!
//! # Format
//!
//! ```yaml
//! rules:
//!   - id: refund-offer              # unique in the file
//!     queues: [Billing]             # queue ids or names; absent or [] = every queue
//!     promptId: 3f2b…               # a catalogue prompt, or instead:
//!     # prompt: {title: "…", body: "…", url: "https://…"}
//!     conditions:                   # required ([] = fire when the conversation starts)
//!       - {type: keyword, value: refund}
//!     displaySettings: {delayMs: 500, maxConcurrentPrompts: 2, autoDismissMs: 30000}
//!     cooldownSeconds: 0            # default 0
//!     maxPerConversation: 1         # default 1, at least 1
//!     priority: normal              # low | normal | high | critical; default normal
//!     enabled: true                 # default true
//!     shadow: false                 # default false: record would-fire events, show nothing
//! ```
//!
//! A bare list of rules (no `rules:` key) is accepted too; issue paths still read
//! `rules[i]…`. Conditions and display settings are validated by the payload's own rules
//! (the same walker), so a rule and an injection cannot disagree on what is valid. Every
//! mistake is reported, each as `file:line:column: path: message`; unknown fields are
//! errors with a "did you mean" hint.
//!
//! # Where the line numbers come from
//!
//! The YAML is parsed into a position-less value for validation, so the positions come from
//! a second, small scan of the text ([`locate`]): it follows indentation through block
//! mappings (`key: value`) and block sequences (`- item`, including a list written at its
//! key's indentation), records the line and column of every key and item as a path like
//! `rules[2].conditions[0].threshold`, and skips block scalars (`|`, `>`). An issue is
//! placed at its own path, else at the nearest ancestor the scan knows (inside flow
//! collections such as `{type: keyword, value: x}` that is the line of the collection).
//! Syntax errors carry the YAML parser's own location.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::watch;
use uuid::Uuid;

use super::engine::CompiledRules;
use super::TriggerError;
use crate::contract::issue::{index, join};
use crate::contract::payload::{DisplaySettings, Priority, PromptContent, TriggerCondition};
use crate::contract::validate::{Dialect, NumberRule, Walker, PROMPT_FIELDS};
use crate::contract::{Catalogue, IssueCode};

/// Fields of one rule.
pub const RULE_FIELDS: &[&str] = &[
    "id",
    "queues",
    "promptId",
    "prompt",
    "conditions",
    "displaySettings",
    "cooldownSeconds",
    "maxPerConversation",
    "priority",
    "enabled",
    "shadow",
];

/// Longest rule id, in characters.
pub const RULE_ID_MAX_CHARS: usize = 100;
/// Longest cooldown: one day.
pub const COOLDOWN_MAX_SECONDS: u32 = 86_400;
/// Most fires per conversation a rule may ask for.
pub const MAX_PER_CONVERSATION_MAX: u32 = 1_000;

/// The display settings of a rule that leaves `displaySettings` out: the shortest delay the
/// contract allows, the most prompts at once (so the rule does not lower the limit of the
/// prompts already shown), and half a minute on screen.
pub const DEFAULT_DISPLAY: DisplaySettings =
    DisplaySettings { delay_ms: 500, max_concurrent_prompts: 3, auto_dismiss_ms: 30_000 };

/// What a rule shows when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum RulePrompt {
    /// A prompt of the catalogue, by its id (`promptId`).
    Catalogue(Uuid),
    /// Content written in the rule itself (`prompt: {title, body, url?}`).
    Inline(PromptContent),
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique within its file; counters of live conversations follow it across reloads.
    pub id: String,
    /// Queue ids or names; empty means every queue.
    pub queues: Vec<String>,
    pub prompt: RulePrompt,
    /// All must hold (CONTRACT.md §3); empty fires when the conversation starts.
    pub conditions: Vec<TriggerCondition>,
    pub display: DisplaySettings,
    /// After a fire the rule waits this long before it can fire again.
    pub cooldown_seconds: u32,
    /// At least 1.
    pub max_per_conversation: u32,
    pub priority: Priority,
    pub enabled: bool,
    /// Evaluated and recorded, never shown.
    pub shadow: bool,
}

impl Rule {
    /// A rule with the file format's defaults: every queue, no cooldown, one fire per
    /// conversation, normal priority, enabled, not shadow.
    pub fn new(id: impl Into<String>, prompt: RulePrompt, conditions: Vec<TriggerCondition>) -> Rule {
        Rule {
            id: id.into(),
            queues: Vec::new(),
            prompt,
            conditions,
            display: DEFAULT_DISPLAY,
            cooldown_seconds: 0,
            max_per_conversation: 1,
            priority: Priority::Normal,
            enabled: true,
            shadow: false,
        }
    }
}

/// The rules of one file, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleSet {
    /// Where the rules came from (a path, or a name given to [`RuleSet::parse`]).
    pub origin: String,
    pub rules: Vec<Rule>,
}

/// One mistake in a rules file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// The field, like `rules[2].conditions[0].threshold` (empty for the whole document).
    pub path: String,
    pub code: IssueCode,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a rules file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("rules file {origin} is invalid ({} problem{}):\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, list(problems))]
    Invalid { origin: String, problems: Vec<Problem> },
    #[error("watching rules file {0} needs a running tokio runtime; start it from async code")]
    NoRuntime(PathBuf),
    #[error("rules file {origin} could not be compiled: {source}")]
    Compile { origin: String, source: TriggerError },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}

impl RulesError {
    /// The located problems, when the file was read but is wrong.
    pub fn problems(&self) -> &[Problem] {
        match self {
            RulesError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

impl RuleSet {
    /// Reads and validates a rules file.
    pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
        RuleSet::load_with(path, None)
    }

    /// Reads and validates a rules file; with a catalogue, every `promptId` must be in it.
    pub fn load_with(path: &Path, catalogue: Option<&Catalogue>) -> Result<RuleSet, RulesError> {
        let bytes = std::fs::read(path).map_err(|source| RulesError::Read { path: path.to_path_buf(), source })?;
        let origin = path.display().to_string();
        match String::from_utf8(bytes) {
            Ok(text) => RuleSet::parse_with(&text, &origin, catalogue),
            Err(e) => Err(RulesError::Invalid {
                problems: vec![Problem {
                    file: origin.clone(),
                    line: 1,
                    column: 1,
                    path: String::new(),
                    code: IssueCode::InvalidType,
                    message: format!(
                        "the file is not UTF-8 text (bad byte at offset {}); save it as UTF-8",
                        e.utf8_error().valid_up_to()
                    ),
                }],
                origin,
            }),
        }
    }

    /// Parses and validates rules text; `file_name` names it in messages.
    pub fn parse(text: &str, file_name: &str) -> Result<RuleSet, RulesError> {
        RuleSet::parse_with(text, file_name, None)
    }

    /// [`RuleSet::parse`], checking `promptId`s against a catalogue when one is given.
    pub fn parse_with(text: &str, file_name: &str, catalogue: Option<&Catalogue>) -> Result<RuleSet, RulesError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let invalid = |problems: Vec<Problem>| RulesError::Invalid { origin: file_name.to_string(), problems };
        let value: Value = match serde_yaml_ng::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                return Err(invalid(vec![Problem {
                    file: file_name.to_string(),
                    line,
                    column,
                    path: String::new(),
                    code: IssueCode::InvalidYaml,
                    message: format!("this is not valid YAML: {e}"),
                }]));
            }
        };
        let mut w = Walker::new(Dialect::Yaml);
        let bare = value.is_array();
        let rules = walk_rules(&mut w, &value, catalogue);
        match rules {
            Some(rules) if w.issues.is_empty() => Ok(RuleSet { origin: file_name.to_string(), rules }),
            _ => {
                let spots = locate(text);
                let problems = w
                    .issues
                    .iter()
                    .map(|issue| {
                        // A bare list has no `rules` key: its items sit at `[i]` in the text.
                        let lookup =
                            if bare { issue.path.strip_prefix("rules").unwrap_or(&issue.path) } else { &issue.path };
                        let (line, column) = spots.find(lookup);
                        Problem {
                            file: file_name.to_string(),
                            line,
                            column,
                            path: issue.path.clone(),
                            code: issue.code,
                            message: issue.message.clone(),
                        }
                    })
                    .collect::<Vec<Problem>>();
                // File order reads best; the walker reports unknown fields of an object first.
                let mut problems = problems;
                problems.sort_by_key(|p| (p.line, p.column));
                Err(invalid(problems))
            }
        }
    }

    /// The enabled rules.
    pub fn enabled(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.enabled)
    }
}

fn walk_rules(w: &mut Walker, v: &Value, catalogue: Option<&Catalogue>) -> Option<Vec<Rule>> {
    let list = match v {
        Value::Array(_) => v,
        Value::Null => {
            w.push("", IssueCode::Required, "the file is empty; write `rules:` followed by a list of rules");
            return None;
        }
        _ => {
            let obj = w.object("", v)?;
            w.unknown_fields("", obj, &["rules"], &[(RULE_FIELDS, "rules[]")]);
            w.required("", obj, "rules", "the list of rules")?
        }
    };
    let Value::Array(items) = list else {
        w.type_error("rules", "a list of rules", list);
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = index("rules", i);
        if let Some(id) = item.get("id").and_then(Value::as_str) {
            if let Some(&j) = first.get(id) {
                w.push(
                    &join(&path, "id"),
                    IssueCode::DuplicateId,
                    format!("id {id:?} is already used by rules[{j}]; rule ids must be unique"),
                );
                ok = false;
            } else {
                first.insert(id, i);
            }
        }
        match walk_rule(w, &path, item, catalogue) {
            Some(rule) => out.push(rule),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn walk_rule(w: &mut Walker, path: &str, v: &Value, catalogue: Option<&Catalogue>) -> Option<Rule> {
    let obj = w.object(path, v)?;
    w.unknown_fields(
        path,
        obj,
        RULE_FIELDS,
        &[
            (&["delayMs", "maxConcurrentPrompts", "autoDismissMs"], "displaySettings"),
            (&["title", "body", "url"], "prompt"),
            (&["type", "value", "threshold"], "conditions[]"),
        ],
    );
    let id = w
        .required(path, obj, "id", "a unique name for the rule, 1-100 characters")
        .and_then(|v| w.text(&join(path, "id"), v, 1, RULE_ID_MAX_CHARS));
    let queues = match obj.get("queues") {
        None => Some(Vec::new()),
        Some(v) => walk_queues(w, &join(path, "queues"), v),
    };
    let prompt = walk_prompt(w, path, obj, catalogue);
    let conditions = w
        .required(path, obj, "conditions", "a list of 0-5 trigger conditions ([] fires when the conversation starts)")
        .and_then(|v| w.conditions(&join(path, "conditions"), v));
    let display = match obj.get("displaySettings") {
        None => Some(DEFAULT_DISPLAY),
        Some(v) => w.display(&join(path, "displaySettings"), v),
    };
    let cooldown = whole(w, &join(path, "cooldownSeconds"), obj.get("cooldownSeconds"), 0, COOLDOWN_MAX_SECONDS, 0);
    let max =
        whole(w, &join(path, "maxPerConversation"), obj.get("maxPerConversation"), 1, MAX_PER_CONVERSATION_MAX, 1);
    let priority = match obj.get("priority") {
        None => Some(Priority::Normal),
        Some(v) => w.word::<Priority>(&join(path, "priority"), v, &Priority::ALL),
    };
    let enabled = boolean(w, &join(path, "enabled"), obj.get("enabled"), true);
    let shadow = boolean(w, &join(path, "shadow"), obj.get("shadow"), false);
    Some(Rule {
        id: id?,
        queues: queues?,
        prompt: prompt?,
        conditions: conditions?,
        display: display?,
        cooldown_seconds: cooldown?,
        max_per_conversation: max?,
        priority: priority?,
        enabled: enabled?,
        shadow: shadow?,
    })
}

fn walk_queues(w: &mut Walker, path: &str, v: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = v else {
        if v.is_string() {
            w.push(path, IssueCode::InvalidType, "expected a list of queue ids or names; write it as [\"...\"]");
        } else {
            w.type_error(path, "a list of queue ids or names", v);
        }
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match w.text(&index(path, i), item, 1, 200) {
            Some(q) => out.push(q.trim().to_string()),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn walk_prompt(
    w: &mut Walker,
    path: &str,
    obj: &Map<String, Value>,
    catalogue: Option<&Catalogue>,
) -> Option<RulePrompt> {
    match (obj.get("promptId"), obj.get("prompt")) {
        (Some(_), Some(_)) => {
            w.push(
                &join(path, "prompt"),
                IssueCode::NotAllowed,
                "give either `promptId` (a catalogue prompt) or `prompt` (inline content), not both",
            );
            None
        }
        (None, None) => {
            w.push(
                &join(path, "promptId"),
                IssueCode::Required,
                "`promptId` (a catalogue prompt's UUID) or `prompt` ({title, body, url?}) is required",
            );
            None
        }
        (Some(v), None) => {
            let ppath = join(path, "promptId");
            let id = w.uuid(&ppath, v)?;
            if let Some(c) = catalogue {
                if c.get(&id).is_none() {
                    w.push(
                        &ppath,
                        IssueCode::UnknownPrompt,
                        format!("prompt {id} is not in the prompt catalogue; add it there or write the content inline as `prompt`"),
                    );
                    return None;
                }
            }
            Some(RulePrompt::Catalogue(id))
        }
        (None, Some(v)) => {
            let ppath = join(path, "prompt");
            let o = w.object(&ppath, v)?;
            w.unknown_fields(&ppath, o, PROMPT_FIELDS, &[]);
            w.prompt_content(&ppath, o).map(RulePrompt::Inline)
        }
    }
}

/// An optional whole number in `min..=max`.
fn whole(w: &mut Walker, path: &str, v: Option<&Value>, min: u32, max: u32, default: u32) -> Option<u32> {
    match v {
        None => Some(default),
        Some(v) => w.number(path, v, NumberRule::new(f64::from(min), f64::from(max)).integer()).map(|x| x as u32),
    }
}

fn boolean(w: &mut Walker, path: &str, v: Option<&Value>, default: bool) -> Option<bool> {
    match v {
        None => Some(default),
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            w.type_error(path, "true or false", other);
            None
        }
    }
}

/// Where each key and list item of a YAML text sits: see the module docs.
#[derive(Debug, Default)]
pub struct Spots {
    at: HashMap<String, (usize, usize)>,
}

impl Spots {
    /// The 1-based (line, column) of `path`, else of its nearest known ancestor, else (1, 1).
    pub fn find(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(&at) = self.at.get(p) {
                return at;
            }
            // Drop the last segment: `.key`, `["key"]` or `[i]`.
            let cut = match p.rfind(['.', '[']) {
                Some(i) => i,
                None if !p.is_empty() => 0,
                None => return (1, 1),
            };
            p = &p[..cut];
        }
    }
}

#[derive(Debug)]
struct Frame {
    indent: usize,
    path: String,
    seq: bool,
    count: usize,
}

/// Scans YAML text for the positions of keys and list items (block style).
pub fn locate(text: &str) -> Spots {
    let mut spots = Spots::default();
    let mut stack: Vec<Frame> = Vec::new();
    // A key with no inline value: its child container starts on a later line. `bool`: the
    // child may be a list at the key's own indentation.
    let mut pending: Option<(usize, String, bool)> = None;
    let mut block_scalar_at: Option<usize> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let content = raw.trim_start_matches(' ');
        let indent = raw.len() - content.len();
        if let Some(at) = block_scalar_at {
            if content.trim().is_empty() || indent > at {
                continue;
            }
            block_scalar_at = None;
        }
        let trimmed = content.trim_end();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" || trimmed == "..." {
            continue;
        }
        let is_item = trimmed == "-" || trimmed.starts_with("- ");
        if let Some((at, path, same_indent_list)) = pending.take() {
            if indent > at || (same_indent_list && indent == at && is_item) {
                stack.push(Frame { indent, path, seq: is_item, count: 0 });
            }
        }
        while stack.last().is_some_and(|f| f.indent > indent) {
            stack.pop();
        }
        // A sibling key after a list written at its key's indentation closes the list.
        if !is_item && stack.last().is_some_and(|f| f.indent == indent && f.seq) {
            stack.pop();
        }
        if stack.is_empty() {
            stack.push(Frame { indent, path: String::new(), seq: is_item, count: 0 });
        }
        entry(&mut spots, &mut stack, &mut pending, &mut block_scalar_at, line, indent, trimmed);
    }
    spots
}

/// Records one line's content at `col` (0-based) into the top frame, descending through
/// `- ` items and inline `key: value` starts.
fn entry(
    spots: &mut Spots,
    stack: &mut Vec<Frame>,
    pending: &mut Option<(usize, String, bool)>,
    block_scalar_at: &mut Option<usize>,
    line: usize,
    col: usize,
    text: &str,
) {
    let Some(top) = stack.last_mut() else { return };
    if top.seq {
        if !(text == "-" || text.starts_with("- ")) {
            return;
        }
        let path = index(&top.path, top.count);
        top.count += 1;
        spots.at.entry(path.clone()).or_insert((line, col + 1));
        let rest = text[1..].trim_start_matches(' ');
        let rest_col = col + (text.len() - rest.len());
        let rest = strip_comment(rest);
        if rest.is_empty() {
            *pending = Some((col, path, false));
            return;
        }
        let nested_item = rest == "-" || rest.starts_with("- ");
        if nested_item || key_of(rest).is_some() {
            stack.push(Frame { indent: rest_col, path, seq: nested_item, count: 0 });
            entry(spots, stack, pending, block_scalar_at, line, rest_col, rest);
        }
        return;
    }
    let Some((key, value)) = key_of(text) else { return };
    let path = join(&top.path, &key);
    spots.at.entry(path.clone()).or_insert((line, col + 1));
    let value = strip_comment(value);
    if value.is_empty() {
        *pending = Some((col, path, true));
    } else if value.starts_with('|') || value.starts_with('>') {
        *block_scalar_at = Some(col);
    }
}

/// `key: rest` or `key:` at the start of `text` (plain or quoted key).
fn key_of(text: &str) -> Option<(String, &str)> {
    let (key, after) = if let Some(q @ ('"' | '\'')) = text.chars().next() {
        let end = text[1..].find(q)? + 1;
        (text[1..end].to_string(), &text[end + 1..])
    } else {
        let mut split = None;
        for (i, c) in text.char_indices() {
            if c == ':' && text[i + 1..].chars().next().is_none_or(|n| n == ' ' || n == '\t') {
                split = Some(i);
                break;
            }
            // Flow collections and quoted scalars are values, not keys.
            if i == 0 && matches!(c, '{' | '[' | '"' | '\'' | '&' | '*' | '!' | '|' | '>') {
                return None;
            }
        }
        let i = split?;
        (text[..i].trim_end().to_string(), &text[i..])
    };
    let after = after.trim_start_matches(' ');
    let rest = after.strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    Some((key, rest.trim()))
}

/// Drops a trailing `# comment` (a `#` at the start or after a space).
fn strip_comment(s: &str) -> &str {
    if s.starts_with('#') {
        return "";
    }
    match s.find(" #") {
        Some(i) if !s[..i].contains(['"', '\'']) => s[..i].trim_end(),
        _ => s.trim_end(),
    }
}

/// What one poll of a rules file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Same content as last time: nothing done.
    Unchanged,
    /// New valid rules are live.
    Reloaded,
    /// The file changed but is invalid or unreadable; the old rules stay live (the problems
    /// were logged).
    Kept,
}

/// Identity of a file's content: mtime, length and a hash of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

fn fingerprint(path: &Path) -> std::io::Result<(Fingerprint, Vec<u8>)> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(path)?;
    let bytes = std::fs::read(path)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Ok((Fingerprint { modified: meta.modified().ok(), len: bytes.len() as u64, hash: h.finish() }, bytes))
}

/// Watches a rules file and publishes its compiled rules whenever a valid new version
/// appears. Polls (portable; a rules file changes rarely): every `interval` it reads the
/// file and compares mtime, length and a hash of the content with the last version seen.
/// An invalid version is logged (every problem, once per version) and the old rules stay
/// live. Every compile extends the live keyword index, so phrase ids stay stable for live
/// conversations, and [`RuleWatcher::add_phrases`] (API-armed keywords) goes through the
/// same channel so the two can never hand out the same id. Dropping the watcher stops
/// polling.
#[derive(Debug)]
pub struct RuleWatcher {
    inner: Arc<WatchInner>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct WatchInner {
    path: PathBuf,
    catalogue: Option<Arc<Catalogue>>,
    tx: watch::Sender<Arc<CompiledRules>>,
    last: Mutex<Option<Fingerprint>>,
}

/// The default poll interval.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

impl RuleWatcher {
    /// Loads the file (it must be valid now) and, from within a tokio runtime, starts
    /// polling it every `interval`. With a catalogue, every `promptId` must be in it.
    pub fn start(
        path: &Path,
        catalogue: Option<Arc<Catalogue>>,
        interval: Duration,
    ) -> Result<RuleWatcher, RulesError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RulesError::NoRuntime(path.to_path_buf()))?;
        let mut watcher = RuleWatcher::new(path, catalogue)?;
        let inner = watcher.inner.clone();
        let interval = interval.max(Duration::from_millis(10));
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                inner.poll();
            }
        });
        watcher.task = Some(task);
        Ok(watcher)
    }

    /// Loads the file without polling; call [`RuleWatcher::poll`] to check for changes.
    pub fn new(path: &Path, catalogue: Option<Arc<Catalogue>>) -> Result<RuleWatcher, RulesError> {
        let (fp, bytes) = fingerprint(path).map_err(|source| RulesError::Read { path: path.to_path_buf(), source })?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|_| RulesError::Invalid {
            origin: origin.clone(),
            problems: vec![Problem {
                file: origin.clone(),
                line: 1,
                column: 1,
                path: String::new(),
                code: IssueCode::InvalidType,
                message: "the file is not UTF-8 text; save it as UTF-8".into(),
            }],
        })?;
        let set = RuleSet::parse_with(&text, &origin, catalogue.as_deref())?;
        let compiled = CompiledRules::compile(&set, None).map_err(|source| RulesError::Compile { origin, source })?;
        let (tx, _) = watch::channel(Arc::new(compiled));
        let inner = WatchInner { path: path.to_path_buf(), catalogue, tx, last: Mutex::new(Some(fp)) };
        Ok(RuleWatcher { inner: Arc::new(inner), task: None })
    }

    /// A receiver of the live rules (the current value at once, then every reload).
    pub fn subscribe(&self) -> watch::Receiver<Arc<CompiledRules>> {
        self.inner.tx.subscribe()
    }

    /// The live rules now.
    pub fn current(&self) -> Arc<CompiledRules> {
        self.inner.tx.borrow().clone()
    }

    /// Checks the file once now.
    pub fn poll(&self) -> Reload {
        self.inner.poll()
    }

    /// Adds keyword phrases (of API-armed entries) to the live index and publishes the
    /// result; returns the rules to compile those entries against.
    pub fn add_phrases(&self, phrases: &[&str]) -> Result<Arc<CompiledRules>, TriggerError> {
        let mut result = Ok(());
        self.inner.tx.send_if_modified(|cur| {
            if phrases.iter().all(|p| cur.index().lookup(p).is_some()) {
                return false;
            }
            match cur.with_phrases(phrases.iter().copied()) {
                Ok(next) => {
                    *cur = Arc::new(next);
                    true
                }
                Err(e) => {
                    result = Err(e);
                    false
                }
            }
        });
        result.map(|()| self.current())
    }
}

impl Drop for RuleWatcher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl WatchInner {
    fn poll(&self) -> Reload {
        let origin = self.path.display().to_string();
        let (fp, bytes) = match fingerprint(&self.path) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(file = %origin, error = %e, "cannot read the rules file; the old rules stay live");
                return Reload::Kept;
            }
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == Some(fp) {
            return Reload::Unchanged;
        }
        // Remember this version either way, so a broken file is reported once, not every poll.
        *last = Some(fp);
        let set = match String::from_utf8(bytes) {
            Ok(text) => RuleSet::parse_with(&text, &origin, self.catalogue.as_deref()),
            Err(_) => Err(RulesError::Invalid {
                origin: origin.clone(),
                problems: vec![Problem {
                    file: origin.clone(),
                    line: 1,
                    column: 1,
                    path: String::new(),
                    code: IssueCode::InvalidType,
                    message: "the file is not UTF-8 text; save it as UTF-8".into(),
                }],
            }),
        };
        let set = match set {
            Ok(set) => set,
            Err(e) => {
                for p in e.problems() {
                    tracing::warn!(problem = %p, "rules file problem; the old rules stay live");
                }
                if e.problems().is_empty() {
                    tracing::warn!(error = %e, "rules file not loaded; the old rules stay live");
                }
                return Reload::Kept;
            }
        };
        let mut outcome = Reload::Kept;
        self.tx.send_if_modified(|cur| match CompiledRules::compile(&set, Some(cur.index())) {
            Ok(next) => {
                *cur = Arc::new(next);
                outcome = Reload::Reloaded;
                true
            }
            Err(e) => {
                tracing::warn!(file = %origin, error = %e, "rules file could not be compiled; the old rules stay live");
                false
            }
        });
        if outcome == Reload::Reloaded {
            tracing::info!(file = %origin, rules = set.rules.len(), "rules reloaded");
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::payload::Polarity;

    const GOOD: &str = r#"# example
rules:
  - id: refund
    queues: [Billing, 20a2bd46-64e1-4827-8e9e-f900e3ed7f32]
    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123
    conditions:
      - type: keyword
        value: refund
        threshold: 0.6
    cooldownSeconds: 30
    maxPerConversation: 2
    priority: high
  - id: angry
    prompt:
      title: Calm down
      body: |
        Acknowledge first.
        rules: this is body text, not a key
    conditions:
    - {type: sentiment, value: negative, threshold: 0.4}
    - type: duration
      value: 60
    displaySettings: {delayMs: 1000, maxConcurrentPrompts: 2, autoDismissMs: 20000}
    shadow: true
    enabled: false
"#;

    #[test]
    fn parses_a_good_file_with_defaults() {
        let set = RuleSet::parse(GOOD, "rules.yaml").expect("valid");
        assert_eq!(set.rules.len(), 2);
        let r = &set.rules[0];
        assert_eq!(r.id, "refund");
        assert_eq!(r.queues, ["Billing", "20a2bd46-64e1-4827-8e9e-f900e3ed7f32"]);
        assert!(matches!(r.prompt, RulePrompt::Catalogue(_)));
        assert_eq!(r.conditions, [TriggerCondition::Keyword { phrase: "refund".into(), threshold: Some(0.6) }]);
        assert_eq!((r.cooldown_seconds, r.max_per_conversation, r.priority), (30, 2, Priority::High));
        assert_eq!(r.display, DEFAULT_DISPLAY);
        assert!(r.enabled && !r.shadow);
        let a = &set.rules[1];
        assert!(matches!(&a.prompt, RulePrompt::Inline(p) if p.title == "Calm down"));
        assert_eq!(
            a.conditions,
            [
                TriggerCondition::Sentiment { polarity: Polarity::Negative, threshold: 0.4 },
                TriggerCondition::Duration { seconds: 60 }
            ]
        );
        assert_eq!(a.display.max_concurrent_prompts, 2);
        assert!(!a.enabled && a.shadow);
        assert_eq!((a.cooldown_seconds, a.max_per_conversation, a.priority), (0, 1, Priority::Normal));
        assert_eq!(set.enabled().count(), 1);
        // A bare list is the same rules.
        let bare = GOOD.replacen("rules:\n", "", 1).replace("\n  ", "\n");
        assert_eq!(RuleSet::parse(&bare, "bare.yaml").expect("bare list").rules, set.rules);
    }

    fn problems(text: &str) -> Vec<String> {
        match RuleSet::parse(text, "r.yaml") {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_mistake_is_reported_with_file_line_and_field() {
        let text = r#"rules:
  - id: a
    promptId: not-a-uuid
    conditions:
      - type: keyword
        value: refund
      - type: sentiment
        value: angry
        treshold: 0.5
      - type: duration
        value: 0
    cooldown: 5
  - id: a
    prompt: {title: "", body: hi}
    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123
    conditions: []
    maxPerConversation: 0
    priority: urgent
    shadow: "yes"
  - id: c
    conditions:
    - type: confidence
      value: transcript
    displaySettings:
      delayMs: 100
      maxConcurrentPrompts: 4
      autoDismissMs: 20000
"#;
        let got = problems(text);
        let want = [
            "r.yaml:3:5: rules[0].promptId: expected a UUID",
            "r.yaml:8:9: rules[0].conditions[1].value: expected one of",
            "r.yaml:9:9: rules[0].conditions[1].treshold: unknown field \"treshold\"; did you mean `threshold`?",
            "r.yaml:11:9: rules[0].conditions[2].value: must be at least 1 seconds",
            "r.yaml:12:5: rules[0].cooldown: unknown field \"cooldown\"; did you mean `cooldownSeconds`?",
            "r.yaml:13:5: rules[1].id: id \"a\" is already used by rules[0]",
            "r.yaml:14:5: rules[1].prompt: give either `promptId`",
            "r.yaml:17:5: rules[1].maxPerConversation: must be at least 1",
            "r.yaml:18:5: rules[1].priority: expected one of",
            "r.yaml:19:5: rules[1].shadow: expected true or false, got a string",
            "r.yaml:20:3: rules[2].promptId: `promptId` (a catalogue prompt's UUID) or `prompt`",
            "r.yaml:22:5: rules[2].conditions[0].threshold: `threshold` is required",
            "r.yaml:25:7: rules[2].displaySettings.delayMs: display timing violated",
            "r.yaml:26:7: rules[2].displaySettings.maxConcurrentPrompts: UI rendering constraint violated",
        ];
        for w in want {
            assert!(got.iter().any(|g| g.starts_with(w)), "missing {w:?} in:\n{}", got.join("\n"));
        }
        assert_eq!(got.len(), want.len(), "{}", got.join("\n"));
    }

    #[test]
    fn syntax_errors_and_odd_documents() {
        let got = problems("rules:\n  - id: a\n    conditions: [\n");
        assert!(got[0].starts_with("r.yaml:") && got[0].contains("not valid YAML"), "{got:?}");
        assert!(!got[0].starts_with("r.yaml:1:1:"), "a syntax error has the parser's location: {got:?}");
        assert!(problems("")[0].contains("the file is empty"));
        assert!(
            problems("rulez: []")[0].starts_with("r.yaml:1:1: rulez: unknown field \"rulez\"; did you mean `rules`?")
        );
        assert!(problems("rules: {id: a}")[0].contains("rules: expected a list of rules"));
        assert!(problems("rules:\n  - id: a\n    queues: Billing\n    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    conditions: []\n")[0]
            .starts_with("r.yaml:3:5: rules[0].queues: expected a list"));
        // A field of a condition written at the rule's level says where it belongs.
        let got =
            problems("- id: a\n  promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n  conditions: []\n  value: refund\n");
        assert!(
            got[0].starts_with("r.yaml:4:3: rules[0].value: unknown field") && got[0].contains("conditions[]"),
            "{got:?}"
        );
    }

    #[test]
    fn catalogue_is_checked_when_given() {
        let catalogue = Catalogue::parse(
            "prompts:\n  - id: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    title: t\n    body: b\n",
            None,
        )
        .expect("catalogue");
        let text = "rules:\n  - id: a\n    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    conditions: []\n  - id: b\n    promptId: 00000000-0000-0000-0000-000000000001\n    conditions: []\n";
        assert!(RuleSet::parse(text, "r.yaml").is_ok(), "no catalogue, no check");
        let err = RuleSet::parse_with(text, "r.yaml", Some(&catalogue)).expect_err("unknown prompt");
        let got: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("r.yaml:6:5: rules[1].promptId: prompt 00000000"), "{got:?}");
    }

    #[test]
    fn locate_follows_indentation() {
        let spots = locate(GOOD);
        assert_eq!(spots.find("rules"), (2, 1));
        assert_eq!(spots.find("rules[0]"), (3, 3));
        assert_eq!(spots.find("rules[0].id"), (3, 5));
        assert_eq!(spots.find("rules[0].conditions[0].threshold"), (9, 9));
        assert_eq!(spots.find("rules[1].prompt.body"), (16, 7));
        // The block scalar's "rules:" line is text, not a key.
        assert_eq!(spots.find("rules[1].conditions"), (19, 5));
        assert_eq!(spots.find("rules[1].conditions[0]"), (20, 5));
        // Inside a flow mapping: the item's line.
        assert_eq!(spots.find("rules[1].conditions[0].threshold"), (20, 5));
        assert_eq!(spots.find("rules[1].conditions[1].value"), (22, 7));
        assert_eq!(spots.find("rules[1].shadow"), (24, 5));
        assert_eq!(spots.find("nowhere.at.all"), (1, 1));
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write rules file");
    }

    fn rule_ids(w: &RuleWatcher) -> Vec<String> {
        w.current().rules().iter().map(|r| r.id.to_string()).collect()
    }

    #[test]
    fn watcher_reloads_valid_versions_and_keeps_the_old_on_mistakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules.yaml");
        let v1 = "rules:\n  - id: a\n    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    conditions: [{type: keyword, value: refund}]\n";
        write(&path, v1);
        let w = RuleWatcher::new(&path, None).expect("valid at start");
        let rx = w.subscribe();
        assert_eq!(rule_ids(&w), ["a"]);
        assert_eq!(w.poll(), Reload::Unchanged);
        let refund = w.current().index().lookup("refund");

        // Change: a rule added (same length edits are caught by the hash).
        let v2 = format!("{v1}  - id: b\n    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    conditions: [{{type: keyword, value: fraud}}]\n");
        write(&path, &v2);
        assert_eq!(w.poll(), Reload::Reloaded);
        assert_eq!(rule_ids(&w), ["a", "b"]);
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(w.current().index().lookup("refund"), refund, "phrase ids stable across reloads");

        // Break it: the old rules stay live, and the broken version is not retried each poll.
        write(&path, &v2.replace("fraud", "fraud}").replace("id: b", "id: a"));
        assert_eq!(w.poll(), Reload::Kept);
        assert_eq!(rule_ids(&w), ["a", "b"]);
        assert_eq!(w.poll(), Reload::Unchanged);

        // Fix it.
        write(&path, &v2.replace("id: b", "id: c"));
        assert_eq!(w.poll(), Reload::Reloaded);
        assert_eq!(rule_ids(&w), ["a", "c"]);

        // API phrases go through the same channel and get ids after every rule phrase.
        let with = w.add_phrases(&["chargeback"]).expect("add");
        assert!(with.index().lookup("chargeback").is_some());
        write(&path, &v2.replace("fraud", "stolen card"));
        assert_eq!(w.poll(), Reload::Reloaded);
        let cur = w.current();
        assert!(cur.index().lookup("chargeback").is_some(), "a reload keeps API phrases");
        assert_ne!(cur.index().lookup("chargeback"), cur.index().lookup("stolen card"));
    }

    #[tokio::test]
    async fn watcher_polls_on_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules.yaml");
        write(&path, "- id: a\n  promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n  conditions: []\n");
        let w = RuleWatcher::start(&path, None, Duration::from_millis(20)).expect("start");
        let mut rx = w.subscribe();
        write(&path, "- id: z\n  promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n  conditions: []\n");
        tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.expect("reloaded in time").expect("alive");
        assert_eq!(rule_ids(&w), ["z"]);
    }
}
