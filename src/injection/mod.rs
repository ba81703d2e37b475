//! Turning a valid injection into a delivered prompt: admission (the pure capacity ledger),
//! the service and its runtime, and the delivery channels (panel stream, participant data).

pub mod admission;
pub mod direct;
pub mod live_set;
pub mod panel;
pub mod participant_data;
pub mod service;
pub mod trace;
