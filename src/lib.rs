//! gc-assist: real-time agent-assist prompts for Genesys Cloud.
//!
//! Genesys Cloud has no endpoint that pushes third-party content into the agent's Copilot
//! panel, so gc-assist *is* the prompt-injection API: it validates the injection payload,
//! admits it under the agent-attention limits, delivers it (participant data, the agent's
//! prompt panel), and keeps an audit trail.
//!
//! # Layout
//!
//! - [`adoption`]: adoption analytics over engagement events, beside Agent Copilot's figures.
//! - [`config`]: settings, layered built-in defaults ← `gc-assist.toml` ← environment.
//! - [`contract`]: the injection payload, its validation, JSON Schema and the prompt catalogue.
//! - [`genesys`]: the client for the real Genesys Cloud API: regions, OAuth, retries, pacing,
//!   the notifications websocket client.
//! - [`emulator`]: a local Genesys Cloud speaking the real wire format, with faults; replays
//!   recorded calls over its notification websockets.
//! - [`injection`]: turning a valid payload into a delivered prompt.
//! - [`triggers`]: trigger conditions: text normalization, keyword index, events, evaluator;
//!   rules files, the per-conversation rule engine, replay (backtest), the live runtime.
//! - [`audit`]: audit records of every injection state change.
//! - [`webhook`]: signed webhooks to the knowledge system.
//! - [`server`]: the HTTP service (`gc-assist serve`).
//! - [`panel`]: the agent's prompt panel (Interaction Widget page), sign-in, SSE, engagements.
//! - [`store`]: durable storage (SQLite): group-commit writer, audit chain head, outbox; all SQL.
//! - [`cli`]: one file per command of the `gc-assist` binary.

pub mod adoption;
pub mod audit;
pub mod cli;
pub mod config;
pub mod contract;
pub mod emulator;
pub mod genesys;
pub mod injection;
pub mod panel;
pub mod server;
pub mod store;
pub mod triggers;
pub mod webhook;
