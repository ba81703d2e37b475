//! Integration tests: inject.
