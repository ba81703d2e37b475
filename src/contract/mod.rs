//! The injection payload contract (CONTRACT.md §1): typed payload, validation that reports
//! every issue at once, the prompt catalogue, and the JSON Schema.
//!
//! - [`payload`]: the typed [`ValidPayload`] and its parts.
//! - [`validate`]: [`validate_json`] / [`validate_value`], the hand walk producing [`Issues`].
//! - [`issue`]: [`Issue`] `{path, code, message}`, [`IssueCode`], the "did you mean" helper.
//! - [`catalogue`]: [`Catalogue`] of prompt content keyed by `promptId`, and [`resolve_prompt`].
//! - [`schema`]: [`json_schema`], exported by `gc-assist schema`.
//! - [`limits`]: the bounds both validation and the schema read.

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
