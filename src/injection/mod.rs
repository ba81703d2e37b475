//! Turning a valid injection into a delivered prompt.

pub mod admission;
pub mod direct;
pub mod participant_data;
