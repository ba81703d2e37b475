//! Webhooks to the knowledge system: Standard Webhooks signing, outbox delivery, SSRF guard.
