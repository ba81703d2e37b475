//! The one integration-test binary: a module per area, shared helpers in `support`.

mod audit;
mod cli;
mod contract;
mod crash;
mod emulator;
mod genesys;
mod inject;
mod live;
mod replay;
mod service;
mod store;
mod support;
mod webhook;
