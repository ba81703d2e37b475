//! Audit records of every injection state change.
