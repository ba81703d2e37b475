//! Client for the real Genesys Cloud API: regions, OAuth, retries, pacing, typed calls.
//!
//! - [`region`]: region names, domains and the hosts derived from them.
//! - [`auth`]: the client-credentials token cache (single flight, refresh ahead, re-auth).
//! - [`retry`]: the retry policy as a pure, table-tested decision.
//! - [`pacing`]: GCRA pacing under the OAuth client's per-minute limit.
//! - [`client`]: the one request path and the typed calls ([`GenesysClient`]).
//! - [`notifications`]: channels, subscriptions and websockets, kept alive ([`Notifications`]).
//! - [`models`]: wire models, tolerant of unknown fields and values.
//! - [`error`]: the error type, [`GenesysError`].
//! - [`stats`]: counters, [`ClientStats`].

pub mod auth;
pub mod client;
pub mod error;
pub mod models;
pub mod notifications;
pub mod pacing;
pub mod region;
pub mod retry;
pub mod stats;

pub use auth::{AccessToken, TokenProvider};
pub use client::{ClientSettings, GenesysClient};
pub use error::GenesysError;
pub use models::{
    AsyncQueryStatus, Call, Channel, ChannelTopic, Conversation, CopilotAggregateDataContainer,
    CopilotAggregateResponse, CopilotAggregationQuery, CopilotAsyncAggregationQuery, CopilotAsyncResponse, ErrorBody,
    Participant, QueryFilter, QueryPredicate, TokenInfo, UserMe,
};
pub use notifications::{Envelope, NotificationSettings, Notifications, NotificationsError};
pub use pacing::Pacer;
pub use region::Hosts;
pub use retry::{Decision, GiveUpReason, Outcome, RetryPolicy};
pub use stats::ClientStats;
