//! The injection payload contract (CONTRACT.md §1): typed payload, validation that reports
//! every issue at once, the prompt catalogue, and the JSON Schema.
//!
//! - [`payload`]: the typed [`ValidPayload`] and its parts.
//! - [`validate`]: [`validate_json`] / [`validate_value`], the hand walk producing [`Issues`].
//! - [`issue`]: [`Issue`] `{path, code, message}`, [`IssueCode`], the "did you mean" helper.
//! - [`catalogue`]: [`Catalogue`] of prompt content keyed by `promptId`, and [`resolve_prompt`].
//! - [`schema`]: [`json_schema`], exported by `gc-assist schema`.
//! - [`limits`]: the bounds both validation and the schema read.
//!
//! # Where CONTRACT.md is silent
//!
//! - UUIDs must be in the hyphenated 8-4-4-4-12 form (either case), as the tutorial's zod
//!   schema and the exported JSON Schema require; braced, URN and bare-hex forms are refused.
//! - `null` is not "absent": an optional field sent as `null` is a type error, as in zod.
//! - Numbers of milliseconds may carry a fraction (the contract says "number"); it is
//!   rounded to the nearest millisecond. `maxConcurrentPrompts` and a duration's seconds
//!   must be whole (`2.0` counts as whole).
//! - A `confidence` condition's `value` must be `transcript` (CONTRACT.md §3).
//! - `queueTimeoutMs` may be 0 (give up at once when no slot is free).
//! - URLs (`webhookUrl`, `prompt.url`) are at most 2048 characters and may not embed a
//!   user name or password: URLs are logged and audited, and webhooks are signed instead.
//! - `contextData` depth: the object itself is level 1; each nested object or array adds one.
//! - Issues come in document order of the contract's fields; an unknown field is reported
//!   where it appears, next to any `required` issue its typo causes.
//! - Catalogue: an empty `prompts` list is valid; names are 1-100 characters; at most 20
//!   tags of 1-50 characters each; ids are unique regardless of case.

pub mod catalogue;
pub mod issue;
pub mod limits;
pub mod payload;
pub mod schema;
pub mod validate;

pub use catalogue::{resolve_prompt, Catalogue, CatalogueEntry, CatalogueError, Format};
pub use issue::{did_you_mean, Issue, IssueCode, Issues};
pub use payload::{
    ConditionKind, DisplaySettings, OnCapacity, Polarity, Priority, PromptContent, TriggerCondition, ValidPayload,
};
pub use schema::json_schema;
pub use validate::{validate_json, validate_value};

#[cfg(test)]
mod tests;
