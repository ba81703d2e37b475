//! Client for the real Genesys Cloud API: regions, OAuth, retries, pacing, typed calls.

pub mod region;
