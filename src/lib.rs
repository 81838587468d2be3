//! smtp-shaper: an SMTP proxy sidecar that relays application mail to the
//! organisation's gateways, durably.
//!
//! The data flow is the module layout:
//! [`inbound`] (listener, sessions) -> [`policy`] (who may send, which app,
//! which gateway) -> [`spool`] (durable queue) -> [`shaper`] (how fast each
//! gateway may send) -> [`outbound`] (delivery to the gateways).
//! [`smtp`] holds the protocol pieces with no I/O; [`config`] the schema;
//! [`telemetry`] (metrics, the HTTP endpoint, logs) sits beside the flow.
//! `service` is the one composition root above them all: it assembles the
//! parts into a running [`Service`] and reloads it; no part of the flow
//! imports it (`main` and `demo`, which runs a whole service, do).
//! This file only names the modules and what the binary, the tests and
//! the benchmarks use from the root.

pub mod cluster;
pub mod config;
pub mod demo;
pub mod dns;
pub mod history;
pub mod inbound;
pub mod outbound;
pub mod poison;
pub mod policy;
pub mod preflight;
mod service;
pub mod shaper;
pub mod shutdown;
pub mod simulate;
pub mod smtp;
pub mod spool;
pub mod telemetry;
pub mod tls;

pub use service::{ReloadError, Service, StopNow};
