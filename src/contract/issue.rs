//! Validation issues: one `{path, code, message}` per violation, and the list of them that
//! validation returns, so callers see every problem at once rather than the first.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable, machine-readable reason. Serialized in snake_case; scripts and the REST API's
/// `issues` array depend on these names, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueCode {
    /// A required field is missing.
    Required,
    /// The value has the wrong JSON type (the message says expected vs got).
    InvalidType,
    /// A field the contract does not define (the message suggests a near miss).
    UnknownField,
    /// A number or a list below its minimum.
    TooSmall,
    /// A number or a list above its maximum.
    TooBig,
    /// A number that must be whole has a fraction.
    NotInteger,
    /// A string below its minimum length (including blank strings).
    TooShort,
    /// A string above its maximum length.
    TooLong,
    /// Not a hyphenated UUID.
    InvalidUuid,
    /// Not an absolute http/https URL.
    InvalidUrl,
    /// Not one of the allowed words.
    InvalidEnum,
    /// A field that this combination does not take (e.g. a duration's threshold).
    NotAllowed,
    /// Nested deeper than allowed.
    TooDeep,
    /// Serialized size above the limit.
    TooLarge,
    /// The bytes are not JSON.
    InvalidJson,
    /// The text is not YAML.
    InvalidYaml,
    /// Two catalogue entries share an id.
    DuplicateId,
    /// Neither an inline prompt nor a catalogue entry for `promptId`.
    UnknownPrompt,
}

impl IssueCode {
    /// The wire name, e.g. `invalid_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Required => "required",
            IssueCode::InvalidType => "invalid_type",
            IssueCode::UnknownField => "unknown_field",
            IssueCode::TooSmall => "too_small",
            IssueCode::TooBig => "too_big",
            IssueCode::NotInteger => "not_integer",
            IssueCode::TooShort => "too_short",
            IssueCode::TooLong => "too_long",
            IssueCode::InvalidUuid => "invalid_uuid",
            IssueCode::InvalidUrl => "invalid_url",
            IssueCode::InvalidEnum => "invalid_enum",
            IssueCode::NotAllowed => "not_allowed",
            IssueCode::TooDeep => "too_deep",
            IssueCode::TooLarge => "too_large",
            IssueCode::InvalidJson => "invalid_json",
            IssueCode::InvalidYaml => "invalid_yaml",
            IssueCode::DuplicateId => "duplicate_id",
            IssueCode::UnknownPrompt => "unknown_prompt",
        }
    }
}

impl fmt::Display for IssueCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One violation. `path` is dotted with indices (`triggerConditions[2].threshold`); the
/// empty path means the document as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Issue {
    pub path: String,
    pub code: IssueCode,
    pub message: String,
}

impl Issue {
    pub fn new(path: impl Into<String>, code: IssueCode, message: impl Into<String>) -> Issue {
        Issue { path: path.into(), code, message: message.into() }
    }
}

impl fmt::Display for Issue {
    /// `path: message [code]`, the form `gc-assist validate` prints for people.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
        write!(f, "{path}: {} [{}]", self.message, self.code)
    }
}

impl std::error::Error for Issue {}

/// Every violation found, in document order. Never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn new() -> Issues {
        Issues(Vec::new())
    }

    pub fn push(&mut self, issue: Issue) {
        self.0.push(issue);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Issue> {
        self.0.iter()
    }
}

impl From<Issue> for Issues {
    fn from(issue: Issue) -> Issues {
        Issues(vec![issue])
    }
}

impl IntoIterator for Issues {
    type Item = Issue;
    type IntoIter = std::vec::IntoIter<Issue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Issues {
    type Item = &'a Issue;
    type IntoIter = std::slice::Iter<'a, Issue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.len() {
            0 => f.write_str("no issues"),
            1 => write!(f, "1 issue: {}", self.0[0]),
            n => {
                write!(f, "{n} issues:")?;
                for issue in &self.0 {
                    write!(f, "\n  {issue}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Issues {}

/// The closest candidate to a misspelt name, if one is close enough to be a likely typo.
///
/// Names are compared after dropping case and separators, so `conversationID`,
/// `conversation_id` and `delay-ms` find `conversationId` and `delayMs`; otherwise a
/// Jaro-Winkler similarity of at least 0.85 (or at most two edits) counts as close.
pub fn did_you_mean<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    fn norm(s: &str) -> String {
        s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
    }
    let wanted = norm(input);
    if wanted.is_empty() {
        return None;
    }
    let mut best: Option<(&'a str, f64)> = None;
    for &candidate in candidates {
        let c = norm(candidate);
        let score = if c == wanted {
            2.0
        } else {
            let jw = strsim::jaro_winkler(&wanted, &c);
            let edits = strsim::damerau_levenshtein(&wanted, &c);
            // Two edits are a typo in a long name but a different word in a short one.
            let close_by_edits = edits <= 2 && c.chars().count() > 4 && wanted.chars().count() > 4;
            if jw >= 0.85 || close_by_edits {
                jw
            } else {
                continue;
            }
        };
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((candidate, score));
        }
    }
    best.map(|(c, _)| c)
}

/// Render a path segment: plain keys join with a dot; keys that would make the path
/// ambiguous (dots, brackets, spaces, empty) are written as `["key"]`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", serde_json::Value::String(key.to_string())),
    }
}

/// `parent[i]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_near_misses_only() {
        let fields =
            ["conversationId", "promptId", "triggerConditions", "displaySettings", "webhookUrl", "contextData"];
        let cases: &[(&str, Option<&str>)] = &[
            ("conversationID", Some("conversationId")),
            ("conversation_id", Some("conversationId")),
            ("convesationId", Some("conversationId")),
            ("promtId", Some("promptId")),
            ("webhookURL", Some("webhookUrl")),
            ("webhook", Some("webhookUrl")),
            ("triggerCondition", Some("triggerConditions")),
            ("display_settings", Some("displaySettings")),
            ("context", Some("contextData")),
            ("banana", None),
            ("", None),
            ("x", None),
        ];
        for (input, want) in cases {
            assert_eq!(did_you_mean(input, &fields), *want, "input {input:?}");
        }
    }

    #[test]
    fn paths_join_and_quote() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a.b");
        assert_eq!(join("a", "b.c"), "a[\"b.c\"]");
        assert_eq!(join("", ""), "[\"\"]");
        assert_eq!(index("a", 2), "a[2]");
    }

    #[test]
    fn issues_serialize_as_an_array_and_display_each() {
        let issues = Issues(vec![
            Issue::new("a.b", IssueCode::TooBig, "must be at most 3"),
            Issue::new("", IssueCode::InvalidJson, "line 1"),
        ]);
        let v = serde_json::to_value(&issues).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"path": "a.b", "code": "too_big", "message": "must be at most 3"},
                {"path": "", "code": "invalid_json", "message": "line 1"},
            ])
        );
        let shown = issues.to_string();
        assert!(shown.contains("a.b: must be at most 3 [too_big]"), "{shown}");
        assert!(shown.contains("(document): line 1 [invalid_json]"), "{shown}");
        let codes = [IssueCode::Required, IssueCode::UnknownPrompt, IssueCode::NotAllowed];
        for c in codes {
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::Value::String(c.as_str().into()));
        }
    }
}
