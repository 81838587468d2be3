//! Test peers over real loopback TCP and what the areas share: an SMTP sink
//! playing the gateway (`sink`), SMTP clients playing the application
//! (`client`), a self-signed certificate (`tls`), an OAuth token endpoint
//! (`oauth`), the service started in-process (`harness`), requests to its
//! HTTP endpoint (`http`), and other processes: the binary on its own config
//! file and `redis-server` (`process`); tests that cannot run here say so,
//! and are listed at exit (`skip`).
//!
//! The peers parse SMTP and HTTP on their own (naively, line by line) rather
//! than with the crate's code, so a framing bug in the crate cannot hide
//! itself.

mod client;
mod harness;
mod http;
mod oauth;
mod process;
mod sink;
mod skip;
mod tls;

pub use client::*;
pub use harness::*;
pub use http::*;
pub use oauth::*;
pub use process::*;
pub use sink::*;
pub use skip::*;
pub use tls::*;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// A sink's byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Waits (polling) until `condition` holds; panics after 60 s so a broken
/// test fails instead of hanging. Never used to assert on timing.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Like [`eventually`], for a condition that needs to await.
pub async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The finished dead letters in `spool`'s `dead/` (each written as a
/// `.tmp` and renamed when complete: one still being written is not
/// listed), sorted by name; none when the folder does not exist yet.
pub fn dead_letters(spool: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(dir) = std::fs::read_dir(spool.join("dead")) else {
        return Vec::new();
    };
    let mut letters: Vec<std::path::PathBuf> = dir
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    letters.sort();
    letters
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
