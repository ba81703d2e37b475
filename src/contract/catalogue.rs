//! The prompt catalogue: prompt content keyed by `promptId`, loaded from YAML or JSON
//! (`{prompts: [{id, name?, title, body, url?, priority?, tags?}]}`), validated with the
//! same walker as payloads so every problem names its entry (`prompts[3].title`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

use super::issue::{index, join, Issue, IssueCode, Issues};
use super::limits::{MAX_TAGS, NAME_MAX_CHARS, TAG_MAX_CHARS};
use super::payload::{PromptContent, ValidPayload};
use super::validate::{json_syntax_issue, Dialect, Walker, PROMPT_FIELDS};

/// Fields of one catalogue entry.
pub const ENTRY_FIELDS: &[&str] = &["id", "name", "title", "body", "url", "priority", "tags"];

/// Why a catalogue could not be loaded or saved.
#[derive(Debug, Error)]
pub enum CatalogueError {
    #[error("cannot read prompt catalogue {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write prompt catalogue {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("prompt catalogue {origin} is invalid, {issues}")]
    Invalid { origin: String, issues: Issues },
}

impl CatalogueError {
    /// The issues, when the file was read but its content is wrong.
    pub fn issues(&self) -> Option<&Issues> {
        match self {
            CatalogueError::Invalid { issues, .. } => Some(issues),
            _ => None,
        }
    }
}

/// The text format of a catalogue file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// By extension (`.yaml`, `.yml`, `.json`), case-insensitively.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// JSON if the text starts like a JSON document, else YAML. (JSON is also YAML, but
    /// the JSON parser's errors point at the right line and column.)
    pub fn sniff(text: &str) -> Format {
        match text.trim_start_matches('\u{feff}').trim_start().chars().next() {
            Some('{') | Some('[') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// One prompt of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub id: Uuid,
    pub name: Option<String>,
    pub content: PromptContent,
    pub tags: Vec<String>,
}

impl CatalogueEntry {
    /// The entry in the catalogue file's shape.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.hyphenated().to_string()));
        if let Some(n) = &self.name {
            m.insert("name".into(), Value::String(n.clone()));
        }
        if let Value::Object(content) = self.content.to_json() {
            m.extend(content);
        }
        if !self.tags.is_empty() {
            m.insert("tags".into(), Value::Array(self.tags.iter().cloned().map(Value::String).collect()));
        }
        Value::Object(m)
    }
}

/// A validated catalogue: entries in file order, looked up by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    entries: Vec<CatalogueEntry>,
    by_id: HashMap<Uuid, usize>,
}

impl Catalogue {
    /// Read and validate a catalogue file; the format comes from the extension, else from
    /// the content.
    pub fn load(path: &Path) -> Result<Catalogue, CatalogueError> {
        let bytes = std::fs::read(path).map_err(|source| CatalogueError::Read { path: path.to_path_buf(), source })?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| CatalogueError::Invalid {
            origin: origin.clone(),
            issues: Issue::new(
                "",
                IssueCode::InvalidType,
                format!(
                    "the file is not UTF-8 text (bad byte at offset {}); save it as UTF-8",
                    e.utf8_error().valid_up_to()
                ),
            )
            .into(),
        })?;
        Catalogue::parse_named(&text, Format::from_path(path), &origin)
    }

    /// Parse and validate catalogue text. Without a hint the format is sniffed.
    pub fn parse(text: &str, format_hint: Option<Format>) -> Result<Catalogue, CatalogueError> {
        Catalogue::parse_named(text, format_hint, "(text)")
    }

    fn parse_named(text: &str, format_hint: Option<Format>, origin: &str) -> Result<Catalogue, CatalogueError> {
        let invalid = |issues: Issues| CatalogueError::Invalid { origin: origin.to_string(), issues };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let format = format_hint.unwrap_or_else(|| Format::sniff(text));
        let value: Value = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| invalid(json_syntax_issue(&e).into()))?,
            Format::Yaml => serde_yaml_ng::from_str(text).map_err(|e| invalid(yaml_syntax_issue(&e).into()))?,
        };
        Catalogue::from_value(&value, format).map_err(invalid)
    }

    /// Validate an already-parsed catalogue document.
    pub fn from_value(v: &Value, format: Format) -> Result<Catalogue, Issues> {
        let dialect = match format {
            Format::Json => Dialect::Json,
            Format::Yaml => Dialect::Yaml,
        };
        let mut w = Walker::new(dialect);
        let entries = walk_catalogue(&mut w, v);
        match entries {
            Some(entries) if w.issues.is_empty() => Ok(Catalogue::from_entries(entries)),
            _ => Err(w.issues),
        }
    }

    /// Build from entries already known to be valid and unique (e.g. read back from the
    /// database). A later duplicate id replaces the earlier entry.
    pub fn from_entries(entries: Vec<CatalogueEntry>) -> Catalogue {
        let mut c = Catalogue::default();
        for e in entries {
            match c.by_id.get(&e.id) {
                Some(&i) => c.entries[i] = e,
                None => {
                    c.by_id.insert(e.id, c.entries.len());
                    c.entries.push(e);
                }
            }
        }
        c
    }

    pub fn get(&self, prompt_id: &Uuid) -> Option<&CatalogueEntry> {
        self.by_id.get(prompt_id).map(|&i| &self.entries[i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, CatalogueEntry> {
        self.entries.iter()
    }

    /// The catalogue document `{prompts: [...]}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"prompts": self.entries.iter().map(CatalogueEntry::to_json).collect::<Vec<_>>()})
    }

    /// The canonical YAML form `gc-assist prompts import` writes.
    pub fn to_yaml(&self) -> String {
        let body = serde_yaml_ng::to_string(&self.to_json())
            // Serializing a JSON tree of strings and arrays to YAML cannot fail; keep the
            // data rather than panic if the library ever disagrees.
            .unwrap_or_else(|_| self.to_json().to_string());
        format!("# gc-assist prompt catalogue, written by `gc-assist prompts import`.\n{body}")
    }

    /// Write the canonical YAML to `path` atomically (temporary file, then rename), so a
    /// running service never reads half a catalogue.
    pub fn save(&self, path: &Path) -> Result<(), CatalogueError> {
        let werr = |source| CatalogueError::Write { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_yaml()).map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            werr(e)
        })
    }
}

impl<'a> IntoIterator for &'a Catalogue {
    type Item = &'a CatalogueEntry;
    type IntoIter = std::slice::Iter<'a, CatalogueEntry>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// The content to show for a payload: its inline prompt, else the catalogue entry for its
/// `promptId`; neither is an `unknown_prompt` issue at `promptId`.
pub fn resolve_prompt<'a>(p: &'a ValidPayload, c: Option<&'a Catalogue>) -> Result<&'a PromptContent, Issue> {
    if let Some(inline) = p.inline_prompt() {
        return Ok(inline);
    }
    let id = p.prompt_id();
    match c {
        Some(c) => c.get(&id).map(|e| &e.content).ok_or_else(|| unknown_prompt(&id, true)),
        None => Err(unknown_prompt(&id, false)),
    }
}

/// The `unknown_prompt` issue, worded for whether a catalogue was consulted.
pub fn unknown_prompt(id: &Uuid, had_catalogue: bool) -> Issue {
    let msg = if had_catalogue {
        format!(
            "prompt {id} is not in the prompt catalogue; add it and run `gc-assist prompts import FILE`, \
             or send the content inline as `prompt`"
        )
    } else {
        format!("prompt {id} cannot be resolved: no prompt catalogue is loaded; send the content inline as `prompt`")
    };
    Issue::new("promptId", IssueCode::UnknownPrompt, msg)
}

fn yaml_syntax_issue(e: &serde_yaml_ng::Error) -> Issue {
    let msg = match e.location() {
        Some(l) => format!("this is not valid YAML (line {}, column {}): {e}", l.line(), l.column()),
        None => format!("this is not valid YAML: {e}"),
    };
    Issue::new("", IssueCode::InvalidYaml, msg)
}

fn walk_catalogue(w: &mut Walker, v: &Value) -> Option<Vec<CatalogueEntry>> {
    if v.is_array() {
        w.push(
            "",
            IssueCode::InvalidType,
            "expected an object with a `prompts` list, got a bare list; put it under `prompts:`",
        );
        return None;
    }
    let obj = w.object("", v)?;
    w.unknown_fields("", obj, &["prompts"], &[(ENTRY_FIELDS, "prompts[]")]);
    let list = w.required("", obj, "prompts", "the list of prompts")?;
    let Value::Array(items) = list else {
        w.type_error("prompts", "a list of prompts", list);
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut first_index: HashMap<Uuid, usize> = HashMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = index("prompts", i);
        let Some(entry) = walk_entry(w, &path, item) else {
            ok = false;
            continue;
        };
        if let Some(&first) = first_index.get(&entry.id) {
            w.push(
                &join(&path, "id"),
                IssueCode::DuplicateId,
                format!("id {} is already used by prompts[{first}]; ids must be unique", entry.id),
            );
            ok = false;
            continue;
        }
        first_index.insert(entry.id, i);
        out.push(entry);
    }
    ok.then_some(out)
}

fn walk_entry(w: &mut Walker, path: &str, v: &Value) -> Option<CatalogueEntry> {
    let obj = w.object(path, v)?;
    w.unknown_fields(path, obj, ENTRY_FIELDS, &[]);
    debug_assert!(PROMPT_FIELDS.iter().all(|f| ENTRY_FIELDS.contains(f)));
    let id = w
        .required(path, obj, "id", "the prompt's UUID (the payload's promptId)")
        .and_then(|v| w.uuid(&join(path, "id"), v));
    let name = obj.get("name").map(|v| w.text(&join(path, "name"), v, 1, NAME_MAX_CHARS));
    let content = w.prompt_content(path, obj);
    let tags = obj.get("tags").map(|v| walk_tags(w, &join(path, "tags"), v));
    let name = match name {
        None => None,
        Some(n) => Some(n?),
    };
    let tags = match tags {
        None => Vec::new(),
        Some(t) => t?,
    };
    Some(CatalogueEntry { id: id?, name, content: content?, tags })
}

fn walk_tags(w: &mut Walker, path: &str, v: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = v else {
        w.type_error(path, "a list of strings", v);
        return None;
    };
    let mut ok = true;
    if items.len() > MAX_TAGS {
        w.push(path, IssueCode::TooBig, format!("at most {MAX_TAGS} tags are allowed, got {}", items.len()));
        ok = false;
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match w.text(&index(path, i), item, 1, TAG_MAX_CHARS) {
            Some(t) => out.push(t),
            None => ok = false,
        }
    }
    ok.then_some(out)
}
