//! The integration tests: one binary, one module per area, so the support
//! code and the crate are linked once. `cargo test --test it relay::` runs
//! one area; `cargo test --test it` all of them.
//!
//! Everything here runs in one process, tests in parallel: a test does not
//! change the environment, the current folder or process-wide state such as
//! the global tracing subscriber (see `xoauth2` for the log it captures).

mod support;

mod auth;
mod cli;
mod cluster;
mod delivery;
mod dkim;
mod dns;
mod drill;
mod dsn;
mod durability;
mod example_config;
mod exchange;
mod fuzz;
mod header;
mod hold;
mod learn;
mod lockfiles;
mod long_queue;
mod observe;
mod prometheus;
mod protocol;
mod receivers;
mod relay;
mod reload;
mod shaping;
mod simulate;
mod skips;
mod store;
mod telemetry;
mod tls;
mod tools;
mod xoauth2;
