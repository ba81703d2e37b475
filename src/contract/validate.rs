//! Validation of the injection payload: a hand walk over `serde_json::Value` that records
//! every violation (type errors included) as an [`Issue`], then builds a [`ValidPayload`].
//!
//! serde's derive stops at the first error and words it for Rust programmers; callers of
//! an HTTP API need all problems at once, each with a JSON path and a fix. Hence the walk.

use serde_json::{Map, Number, Value};
use uuid::Uuid;

use super::issue::{did_you_mean, index, join, Issue, IssueCode, Issues};
use super::limits::*;
use super::payload::{
    ConditionKind, DisplaySettings, OnCapacity, Polarity, Priority, PromptContent, TriggerCondition, ValidPayload,
};

/// Top-level fields of the payload, in contract order.
pub const PAYLOAD_FIELDS: &[&str] = &[
    "conversationId",
    "promptId",
    "triggerConditions",
    "displaySettings",
    "webhookUrl",
    "contextData",
    "prompt",
    "onCapacity",
    "queueTimeoutMs",
];
pub const CONDITION_FIELDS: &[&str] = &["type", "value", "threshold"];
pub const DISPLAY_FIELDS: &[&str] = &["delayMs", "maxConcurrentPrompts", "autoDismissMs"];
pub const PROMPT_FIELDS: &[&str] = &["title", "body", "url", "priority"];

/// Parse and validate raw bytes (a request body, a file). Every violation comes back at
/// once; bytes that are not JSON give one `invalid_json` issue at the empty path.
pub fn validate_json(bytes: &[u8]) -> Result<ValidPayload, Issues> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(Issue::new(
            "",
            IssueCode::TooLarge,
            format!("the payload is {} bytes; at most {MAX_BODY_BYTES} bytes are accepted", bytes.len()),
        )
        .into());
    }
    // Editors on Windows like to start files with a byte-order mark; it is not content.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Issues::from(json_syntax_issue(&e)))?;
    validate_value(&value)
}

/// The one issue for bytes that do not parse as JSON, with line and column.
pub(crate) fn json_syntax_issue(e: &serde_json::Error) -> Issue {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "the JSON ends too early",
        serde_json::error::Category::Io => "the input could not be read",
        _ => "this is not valid JSON",
    };
    // serde_json's Display already ends with "at line L column C".
    Issue::new("", IssueCode::InvalidJson, format!("{what}: {e}"))
}

/// Validate an already-parsed JSON value.
pub fn validate_value(v: &Value) -> Result<ValidPayload, Issues> {
    let mut w = Walker::new(Dialect::Json);
    let payload = w.payload(v);
    match payload {
        Some(p) if w.issues.is_empty() => Ok(p),
        _ => Err(w.issues),
    }
}

/// Which text format the value came from, so hints can speak its language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Json,
    Yaml,
}

/// Collects issues while walking a value. Each check returns `Some(typed)` only when that
/// part is valid, so the caller can build the typed result when nothing was recorded.
pub(crate) struct Walker {
    pub issues: Issues,
    dialect: Dialect,
}

/// "a string", "an object", … for "expected X, got Y" messages.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Echo user input in a message without letting a huge value flood it.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        format!("{:?}", s)
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{:?}…", head)
    }
}

fn list(words: &[&str]) -> String {
    words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
}

/// How a number is written in the input (keeps `1e300` short and `2.50` recognisable).
fn num_text(n: &Number) -> String {
    n.to_string()
}

impl Walker {
    pub(crate) fn new(dialect: Dialect) -> Walker {
        Walker { issues: Issues::new(), dialect }
    }

    pub(crate) fn push(&mut self, path: &str, code: IssueCode, message: impl Into<String>) {
        self.issues.push(Issue::new(path, code, message));
    }

    pub(crate) fn type_error(&mut self, path: &str, expected: &str, got: &Value) {
        let mut msg = format!("expected {expected}, got {}", kind_of(got));
        if self.dialect == Dialect::Yaml
            && expected.contains("string")
            && matches!(got, Value::Number(_) | Value::Bool(_))
        {
            msg.push_str(" (put the value in quotes)");
        }
        if got.is_null() {
            msg.push_str("; leave the field out instead of sending null");
        }
        self.push(path, IssueCode::InvalidType, msg);
    }

    pub(crate) fn object<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                self.type_error(path, "an object", other);
                None
            }
        }
    }

    /// Report every key not in `known`, with a hint: a near miss at this level, or the
    /// level where the key belongs (`elsewhere`: key → parent it belongs in).
    pub(crate) fn unknown_fields(
        &mut self,
        path: &str,
        obj: &Map<String, Value>,
        known: &[&str],
        elsewhere: &[(&[&str], &str)],
    ) {
        for key in obj.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let mut msg = format!("unknown field {}", shown(key));
            if let Some(near) = did_you_mean(key, known) {
                msg.push_str(&format!("; did you mean `{near}`?"));
            } else if let Some((_, parent)) = elsewhere.iter().find(|(fields, _)| fields.contains(&key.as_str())) {
                msg.push_str(&format!("; it belongs inside `{}`", join(path, parent)));
            } else {
                msg.push_str(&format!("; allowed fields here: {}", list(known)));
            }
            self.push(&join(path, key), IssueCode::UnknownField, msg);
        }
    }

    pub(crate) fn required<'v>(
        &mut self,
        path: &str,
        obj: &'v Map<String, Value>,
        key: &str,
        what: &str,
    ) -> Option<&'v Value> {
        let v = obj.get(key);
        if v.is_none() {
            self.push(&join(path, key), IssueCode::Required, format!("`{key}` is required: {what}"));
        }
        v
    }

    pub(crate) fn string<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.type_error(path, "a string", other);
                None
            }
        }
    }

    /// A hyphenated UUID of any version, lower or upper case.
    pub(crate) fn uuid(&mut self, path: &str, v: &Value) -> Option<Uuid> {
        let s = self.string(path, v)?;
        // Only the hyphenated 8-4-4-4-12 form: it is what the tutorial's zod schema and the
        // exported JSON Schema accept, and what Genesys Cloud uses for every id.
        let shape_ok = s.len() == 36
            && s.char_indices()
                .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
        match Uuid::try_parse(s) {
            Ok(u) if shape_ok => Some(u),
            _ => {
                self.push(
                    path,
                    IssueCode::InvalidUuid,
                    format!("expected a UUID like a1b2c3d4-e5f6-7890-abcd-ef1234567890, got {}", shown(s)),
                );
                None
            }
        }
    }

    /// An absolute http(s) URL without embedded credentials.
    pub(crate) fn url(&mut self, path: &str, v: &Value) -> Option<url::Url> {
        let s = self.string(path, v)?;
        if s.chars().count() > URL_MAX_CHARS {
            self.push(path, IssueCode::TooLong, format!("must be at most {URL_MAX_CHARS} characters long"));
            return None;
        }
        let bad = |why: &str| format!("expected an absolute http or https URL, got {} ({why})", shown(s));
        let msg = match url::Url::parse(s) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                bad(&format!("the scheme `{}` is not http or https", u.scheme()))
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => bad("it has no host"),
            // Credentials in a URL end up in logs and audit records; webhooks are signed instead.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                "must not contain a user name or password; put credentials elsewhere".to_string()
            }
            Ok(u) => return Some(u),
            Err(url::ParseError::RelativeUrlWithoutBase) => bad("it is relative; start it with https://"),
            Err(e) => bad(&e.to_string()),
        };
        self.push(path, IssueCode::InvalidUrl, msg);
        None
    }

    /// A string of `min..=max` Unicode characters; `min ≥ 1` also rejects blank strings.
    pub(crate) fn text(&mut self, path: &str, v: &Value, min: usize, max: usize) -> Option<String> {
        let s = self.string(path, v)?;
        let n = s.chars().count();
        if min > 0 && s.trim().is_empty() {
            self.push(path, IssueCode::TooShort, "must not be empty or only spaces");
            None
        } else if n < min {
            self.push(path, IssueCode::TooShort, format!("must be at least {min} characters long, got {n}"));
            None
        } else if n > max {
            self.push(path, IssueCode::TooLong, format!("must be at most {max} characters long, got {n}"));
            None
        } else {
            Some(s.to_string())
        }
    }

    /// A number in `min..=max`, optionally whole. Custom messages replace the generic
    /// below/above wording (the UI constraints have fixed words).
    pub(crate) fn number(&mut self, path: &str, v: &Value, rule: NumberRule<'_>) -> Option<f64> {
        let Value::Number(n) = v else {
            let expected = if rule.integer { "a whole number" } else { "a number" };
            self.type_error(path, expected, v);
            return None;
        };
        // Every JSON number has an f64 reading; huge ones saturate to ±1.8e308, which the
        // range check below then refuses, so nothing here can overflow.
        let x = n.as_f64().unwrap_or(f64::INFINITY);
        let mut ok = true;
        if rule.integer && x.fract() != 0.0 {
            self.push(path, IssueCode::NotInteger, format!("must be a whole number, got {}", num_text(n)));
            ok = false;
        }
        if x < rule.min {
            let msg = rule
                .below
                .map(str::to_string)
                .unwrap_or_else(|| format!("must be at least {}{}, got {}", rule.min, rule.unit, num_text(n)));
            self.push(path, IssueCode::TooSmall, msg);
            ok = false;
        } else if x > rule.max {
            let msg = rule
                .above
                .map(str::to_string)
                .unwrap_or_else(|| format!("must be at most {}{}, got {}", rule.max, rule.unit, num_text(n)));
            self.push(path, IssueCode::TooBig, msg);
            ok = false;
        }
        ok.then_some(x)
    }

    /// One of a fixed set of words, exactly as written (lower case).
    pub(crate) fn word<T: std::str::FromStr>(&mut self, path: &str, v: &Value, allowed: &[&str]) -> Option<T> {
        let s = self.string(path, v)?;
        if let Ok(t) = s.parse::<T>() {
            return Some(t);
        }
        let mut msg = format!("expected one of {}, got {}", list(allowed), shown(s));
        if let Some(near) = did_you_mean(s, allowed) {
            msg.push_str(&format!("; did you mean `{near}`?"));
        }
        self.push(path, IssueCode::InvalidEnum, msg);
        None
    }

    /// The title/body/url/priority fields shared by inline prompts and catalogue entries.
    /// The caller checks unknown fields, because the two objects allow different keys.
    pub(crate) fn prompt_content(&mut self, path: &str, obj: &Map<String, Value>) -> Option<PromptContent> {
        let title = self
            .required(path, obj, "title", "the prompt's headline, 1-80 characters")
            .and_then(|v| self.text(&join(path, "title"), v, 1, TITLE_MAX_CHARS));
        let body = self
            .required(path, obj, "body", "the text the agent reads, 1-600 characters")
            .and_then(|v| self.text(&join(path, "body"), v, 1, BODY_MAX_CHARS));
        let url = optional(obj.get("url").map(|v| self.url(&join(path, "url"), v)));
        let priority =
            optional(obj.get("priority").map(|v| self.word::<Priority>(&join(path, "priority"), v, &Priority::ALL)));
        Some(PromptContent { title: title?, body: body?, url: url?, priority: priority?.unwrap_or_default() })
    }

    fn payload(&mut self, v: &Value) -> Option<ValidPayload> {
        let obj = self.object("", v)?;
        self.unknown_fields(
            "",
            obj,
            PAYLOAD_FIELDS,
            &[(DISPLAY_FIELDS, "displaySettings"), (&["title", "body", "priority"], "prompt")],
        );
        let conversation_id = self
            .required("", obj, "conversationId", "the UUID of the conversation to prompt in")
            .and_then(|v| self.uuid("conversationId", v));
        let prompt_id =
            self.required("", obj, "promptId", "the UUID of the prompt to show").and_then(|v| self.uuid("promptId", v));
        let conditions = self
            .required("", obj, "triggerConditions", "a list of 0-5 conditions (send [] to show at once)")
            .and_then(|v| self.conditions("triggerConditions", v));
        let display = self
            .required("", obj, "displaySettings", "an object with delayMs, maxConcurrentPrompts and autoDismissMs")
            .and_then(|v| self.display("displaySettings", v));
        let webhook_url = obj.get("webhookUrl").map(|v| self.url("webhookUrl", v));
        let context_data = obj.get("contextData").map(|v| self.context_data("contextData", v));
        let prompt = obj.get("prompt").map(|v| {
            let o = self.object("prompt", v)?;
            self.unknown_fields("prompt", o, PROMPT_FIELDS, &[]);
            self.prompt_content("prompt", o)
        });
        let on_capacity = obj.get("onCapacity").map(|v| self.word::<OnCapacity>("onCapacity", v, &OnCapacity::ALL));
        let queue_timeout_ms = obj.get("queueTimeoutMs").map(|v| {
            let rule = NumberRule::new(QUEUE_TIMEOUT_MS_MIN as f64, QUEUE_TIMEOUT_MS_MAX as f64).unit(" ms");
            self.number("queueTimeoutMs", v, rule).map(|x| x.round() as u64)
        });
        Some(ValidPayload {
            conversation_id: conversation_id?,
            prompt_id: prompt_id?,
            trigger_conditions: conditions?,
            display: display?,
            webhook_url: optional(webhook_url)?,
            context_data: optional(context_data)?,
            prompt: optional(prompt)?,
            on_capacity: optional(on_capacity)?.unwrap_or_default(),
            queue_timeout_ms: optional(queue_timeout_ms)?.unwrap_or(QUEUE_TIMEOUT_MS_DEFAULT),
        })
    }

    pub(crate) fn conditions(&mut self, path: &str, v: &Value) -> Option<Vec<TriggerCondition>> {
        let Value::Array(items) = v else {
            self.type_error(path, "an array of conditions", v);
            return None;
        };
        let mut ok = true;
        if items.len() > MAX_CONDITIONS {
            self.push(
                path,
                IssueCode::TooBig,
                format!("at most {MAX_CONDITIONS} trigger conditions are allowed, got {}", items.len()),
            );
            ok = false;
        }
        let mut out = Vec::with_capacity(items.len().min(MAX_CONDITIONS));
        for (i, item) in items.iter().enumerate() {
            match self.condition(&index(path, i), item) {
                Some(c) => out.push(c),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn condition(&mut self, path: &str, v: &Value) -> Option<TriggerCondition> {
        let obj = self.object(path, v)?;
        self.unknown_fields(path, obj, CONDITION_FIELDS, &[]);
        let kind = self
            .required(path, obj, "type", "one of `keyword`, `sentiment`, `duration`, `confidence`")
            .and_then(|t| self.word::<ConditionKind>(&join(path, "type"), t, &ConditionKind::ALL));
        let value = self.required(path, obj, "value", "what the condition listens for (see the condition type)");
        let tpath = join(path, "threshold");
        // None: absent; Some(None): present but invalid; Some(Some(t)): valid.
        let threshold =
            obj.get("threshold").map(|t| self.number(&tpath, t, NumberRule::new(THRESHOLD_MIN, THRESHOLD_MAX)));
        let vpath = join(path, "value");

        // Without a known type we cannot judge `value`, but its basic shape still applies.
        let Some(kind) = kind else {
            if let Some(v) = value.filter(|v| !matches!(v, Value::String(_) | Value::Number(_))) {
                self.type_error(&vpath, "a string or a number", v);
            }
            return None;
        };
        match kind {
            ConditionKind::Keyword => {
                let phrase = value.and_then(|v| match v {
                    Value::String(_) => self.text(&vpath, v, 1, KEYWORD_MAX_CHARS),
                    other => {
                        self.type_error(&vpath, "a string (the phrase to listen for)", other);
                        None
                    }
                });
                Some(TriggerCondition::Keyword { phrase: phrase?, threshold: optional(threshold)? })
            }
            ConditionKind::Sentiment => {
                let polarity = value.and_then(|v| self.word::<Polarity>(&vpath, v, &Polarity::ALL));
                let threshold = optional(threshold)?.unwrap_or(DEFAULT_SENTIMENT_THRESHOLD);
                Some(TriggerCondition::Sentiment { polarity: polarity?, threshold })
            }
            ConditionKind::Duration => {
                if threshold.is_some() {
                    self.push(
                        &tpath,
                        IssueCode::NotAllowed,
                        "a duration condition takes no threshold; remove it (the value is the number of seconds)",
                    );
                }
                let rule =
                    NumberRule::new(DURATION_MIN_SECS as f64, DURATION_MAX_SECS as f64).integer().unit(" seconds");
                let seconds = value.and_then(|v| self.number(&vpath, v, rule)).map(|x| x as u32);
                if threshold.is_some() {
                    return None;
                }
                Some(TriggerCondition::Duration { seconds: seconds? })
            }
            ConditionKind::Confidence => {
                let value_ok = value.is_some_and(|v| {
                    if v.as_str() == Some(CONFIDENCE_VALUE) {
                        true
                    } else {
                        let got = match v {
                            Value::String(s) => shown(s),
                            other => kind_of(other).to_string(),
                        };
                        self.push(
                            &vpath,
                            IssueCode::InvalidEnum,
                            format!("a confidence condition's value must be `{CONFIDENCE_VALUE}`, got {got}"),
                        );
                        false
                    }
                });
                if threshold.is_none() {
                    self.push(
                        &tpath,
                        IssueCode::Required,
                        "`threshold` is required for a confidence condition: the minimum ASR confidence, 0 to 1",
                    );
                }
                let threshold = threshold.flatten();
                if !value_ok {
                    return None;
                }
                Some(TriggerCondition::Confidence { threshold: threshold? })
            }
        }
    }

    pub(crate) fn display(&mut self, path: &str, v: &Value) -> Option<DisplaySettings> {
        let obj = self.object(path, v)?;
        self.unknown_fields(path, obj, DISPLAY_FIELDS, &[]);
        let delay = self
            .required(path, obj, "delayMs", "milliseconds to wait before showing the prompt, 500-5000")
            .and_then(|v| {
                let rule = NumberRule::new(DELAY_MS_MIN as f64, DELAY_MS_MAX as f64).unit(" ms").below(MSG_DELAY);
                self.number(&join(path, "delayMs"), v, rule)
            });
        let max_concurrent = self
            .required(path, obj, "maxConcurrentPrompts", "how many prompts may be shown at once, 1-3")
            .and_then(|v| {
                let rule = NumberRule::new(MAX_CONCURRENT_MIN as f64, MAX_CONCURRENT_MAX as f64)
                    .integer()
                    .above(MSG_MAX_CONCURRENT);
                self.number(&join(path, "maxConcurrentPrompts"), v, rule)
            });
        let auto_dismiss = self
            .required(path, obj, "autoDismissMs", "milliseconds before the prompt hides itself, 10000-60000")
            .and_then(|v| {
                let rule = NumberRule::new(AUTO_DISMISS_MS_MIN as f64, AUTO_DISMISS_MS_MAX as f64).unit(" ms");
                self.number(&join(path, "autoDismissMs"), v, rule)
            });
        // In range, so the conversions below are exact (fractions of a millisecond round).
        Some(DisplaySettings {
            delay_ms: delay?.round() as u64,
            max_concurrent_prompts: max_concurrent? as u8,
            auto_dismiss_ms: auto_dismiss?.round() as u64,
        })
    }

    fn context_data(&mut self, path: &str, v: &Value) -> Option<Map<String, Value>> {
        let obj = self.object(path, v)?;
        let depth = depth_of(v);
        let mut ok = true;
        if depth > CONTEXT_MAX_DEPTH {
            self.push(
                path,
                IssueCode::TooDeep,
                format!(
                    "nests {depth} levels deep; at most {CONTEXT_MAX_DEPTH} are allowed (the object itself is level 1)"
                ),
            );
            ok = false;
        }
        // Values parsed from JSON are at most 128 deep; anything deeper was built in code and
        // is refused above already, so skip serializing it.
        if depth <= 128 {
            let size = serialized_len(v);
            if size > CONTEXT_MAX_BYTES {
                self.push(
                    path,
                    IssueCode::TooLarge,
                    format!("is {size} bytes as JSON; at most {CONTEXT_MAX_BYTES} bytes are allowed"),
                );
                ok = false;
            }
        }
        ok.then(|| obj.clone())
    }
}

/// Bounds and wording for [`Walker::number`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct NumberRule<'a> {
    min: f64,
    max: f64,
    integer: bool,
    unit: &'a str,
    below: Option<&'a str>,
    above: Option<&'a str>,
}

impl<'a> NumberRule<'a> {
    pub(crate) fn new(min: f64, max: f64) -> NumberRule<'a> {
        NumberRule { min, max, integer: false, unit: "", below: None, above: None }
    }
    pub(crate) fn integer(self) -> Self {
        NumberRule { integer: true, ..self }
    }
    pub(crate) fn unit(self, unit: &'a str) -> Self {
        NumberRule { unit, ..self }
    }
    pub(crate) fn below(self, msg: &'a str) -> Self {
        NumberRule { below: Some(msg), ..self }
    }
    pub(crate) fn above(self, msg: &'a str) -> Self {
        NumberRule { above: Some(msg), ..self }
    }
}

/// An optional field's outcome: absent → `Some(None)`, valid → `Some(Some(t))`,
/// present but invalid → `None` (so `?` aborts building the typed value).
fn optional<T>(field: Option<Option<T>>) -> Option<Option<T>> {
    match field {
        None => Some(None),
        Some(Some(t)) => Some(Some(t)),
        Some(None) => None,
    }
}

/// Nesting depth of containers (an empty or flat object is 1), without recursion so a
/// value built in code cannot overflow the stack.
pub(crate) fn depth_of(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((node, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match node {
            Value::Object(m) => Box::new(m.values()),
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        max = max.max(d);
        stack.extend(children.filter(|c| c.is_object() || c.is_array()).map(|c| (c, d + 1)));
    }
    max
}

/// Bytes of the compact JSON serialization, counted without building the string.
pub(crate) fn serialized_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value to an infallible sink cannot fail; on the impossible error we
    // report the limit exceeded rather than under-count.
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}
