//! The one integration-test binary: a module per area, shared helpers in `support`.

mod adoption;
mod audit;
mod browser;
mod cli;
mod contract;
mod crash;
mod emulator;
mod genesys;
mod inject;
mod live;
mod panel;
mod replay;
mod service;
mod store;
mod support;
mod webdriver;
mod webhook;
