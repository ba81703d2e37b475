//! Turning a valid injection into a delivered prompt.

pub mod admission;
