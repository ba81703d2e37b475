//! Integration tests: genesys.
