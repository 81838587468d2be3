//! The service in this process: test configurations, and the usual set-up
//! of a sink, a spool and the service between them.

use std::net::SocketAddr;

use smtp_shaper::Service;
use smtp_shaper::config::Config;

use super::{Client, Sink};

/// An argon2id hash of `password` with the smallest parameters, so tests
/// in debug builds stay fast (production hashes use argon2's defaults).
pub fn quick_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(
            password.as_bytes(),
            &SaltString::from_b64("dGVzdHNhbHR0ZXN0").unwrap(),
        )
        .unwrap()
        .to_string()
}

/// The TOML of a test configuration: `listen`, spool in `spool_dir`, one
/// gateway at `gateway`, fast retries, short shutdown grace.
pub fn test_config_toml(listen: &str, spool_dir: &std::path::Path, gateway: SocketAddr) -> String {
    format!(
        r#"
        [server]
        listen = "{listen}"
        hostname = "shaper.test"
        shutdown_grace = "5s"
        [spool]
        dir = "{}"
        [http]
        listen = "127.0.0.1:0"
        [[gateways]]
        name = "primary"
        address = "{gateway}"
        retry_initial = "100ms"
        retry_max = "400ms"
        connect_timeout = "2s"
        # Fast enough that shaping never holds a test back (shaping tests
        # set their own shaping section).
        [gateways.shaping]
        initial_rate = "10000/s"
        min_rate = "10000/s"
        max_rate = "10000/s"
        burst = 1000
        backoff_pause = "100ms"
        "#,
        spool_dir.display()
    )
}

/// A configuration for tests: loopback listener on a free port, spool in
/// `spool_dir`, one gateway at `gateway`, fast retries.
pub fn test_config(spool_dir: &std::path::Path, gateway: SocketAddr) -> Config {
    Config::parse(&test_config_toml("127.0.0.1:0", spool_dir, gateway))
        .expect("test config is valid")
}

/// A `[gateways.shaping]` section from TOML lines (for `Harness::with`).
pub fn shaping(lines: &str) -> smtp_shaper::shaper::ShapingConfig {
    lines.parse().expect("valid shaping lines")
}

/// Starts the service with `config`.
pub async fn start(config: Config) -> Service {
    Service::start(config).await.expect("service starts")
}

/// The usual test set-up: a sink as the gateway, a spool in a temporary
/// directory, and the service between them.
pub struct Harness {
    pub sink: Sink,
    pub spool: tempfile::TempDir,
    pub service: Service,
}

impl Harness {
    /// The value of the sample `series` (name and labels as exposed) the
    /// service's /metrics shows now; a test fails without it.
    pub async fn sample(&self, series: &str) -> f64 {
        super::scrape(self.service.http_address().unwrap(), series)
            .await
            .unwrap_or_else(|| panic!("no sample {series}"))
    }

    pub async fn start() -> Harness {
        Harness::with(|_| {}).await
    }

    /// Like [`Harness::start`], with `tweak` applied to the test config.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let sink = Sink::start().await;
        let spool = tempfile::tempdir().unwrap();
        let mut config = test_config(spool.path(), sink.address);
        tweak(&mut config);
        let service = start(config).await;
        Harness {
            sink,
            spool,
            service,
        }
    }

    /// A client that has said EHLO.
    pub async fn client(&self) -> Client {
        Client::ready(self.service.smtp_address()).await
    }

    pub async fn shutdown(self) {
        self.service.shutdown().await;
    }
}
