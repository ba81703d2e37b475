//! Webhooks to the knowledge system: Standard Webhooks signing, the retry schedule, and the
//! SSRF guard for destinations (CONTRACT §5). These are the pure parts; the outbox and the
//! delivery worker build on them.
//!
//! - [`signing`]: `whsec_` secrets, `v1,` signatures, verification with rotation and a
//!   replay window.
//! - [`retry`]: when to try again after a failed delivery, and when to dead-letter.
//! - [`ssrf`]: which IP addresses a webhook may be delivered to.
//! - [`worker`]: the delivery worker over the store's outbox.
//! - [`receiver`]: a small real receiver that verifies signatures, for tests and the demo.

pub mod receiver;
pub mod retry;
pub mod signing;
pub mod ssrf;
pub mod worker;

pub use receiver::{Delivery, Receiver, ReceiverConfig, ReceiverError, Rejected, Reply};
pub use retry::{parse_retry_after, Jitter, RetryError, RetrySchedule};
pub use signing::{sign, sign_all, verify, SecretError, SignatureHeaders, VerifyError, WebhookSecret};
pub use ssrf::{check_destination, classify, Cidr, Reserved, SsrfError};
pub use worker::{Notifier, Worker, WorkerError, WorkerHandle, WorkerSettings, WorkerStats};
