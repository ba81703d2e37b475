//! The HTTP service: axum router, handlers, API errors, metrics, shutdown (being built).
