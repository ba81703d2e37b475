//! The one integration-test binary: a module per area, shared helpers in `support`.

mod adoption;
mod audit;
mod cli;
mod contract;
mod crash;
mod emulator;
mod genesys;
mod inject;
mod service;
mod store;
mod support;
mod webhook;
