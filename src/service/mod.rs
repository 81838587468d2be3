//! The composition root: [`Service`] assembles the parts (policy, spool,
//! outbound queues and workers, the HTTP endpoint, the inbound listener)
//! into one running service, reloads it (`reload`) and stops it.
//!
//! Invariants: this is the only place that knows every part; the parts
//! import nothing from here (no arrow up), and what one part needs of
//! another (the refusal labels the metrics create at zero, the queues the
//! sessions hand mail to) is passed in here. Queued mail is replayed into
//! admission before the listener serves, so the first session already
//! sees the whole queue.

mod reload;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::inbound::{self, RefusalReason};
use crate::outbound::Outbound;
use crate::policy;
use crate::shaper;
use crate::shutdown::Shutdown;
use crate::spool::{self, Spool};
use crate::telemetry::Metrics;
use crate::telemetry::http::{self, Endpoint};
use crate::tls::server::ServerTls;

pub use reload::ReloadError;

/// A running service: the listener, the delivery workers and the spool.
pub struct Service {
    smtp_address: SocketAddr,
    tls_address: Option<SocketAddr>,
    http_address: Option<SocketAddr>,
    sender_checks: Arc<policy::senders::SenderChecks>,
    outbound: Outbound,
    /// The sessions' current context; [`Service::reload`] replaces it.
    contexts: watch::Sender<Arc<inbound::Context>>,
    stop: watch::Sender<bool>,
    /// The second stop: no more waiting for sessions in flight.
    hurry: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Service {
    /// What is valid but will not work as the configuration seems to mean
    /// (the file's own [`Config::warnings`], and a `segment_size` large
    /// against the spool's free space): said by `check-config` and logged
    /// at start, never a reason to refuse.
    pub fn warnings(config: &Config) -> Vec<String> {
        let mut warnings = config.warnings();
        warnings.extend(spool::segment_size_warning(&config.spool));
        warnings
    }

    /// What [`Service::start`] would fail on that the file alone does not
    /// show, found without starting (`check-config`): the files it loads
    /// (the certificate and key, each gateway's CA and login, the DKIM
    /// keys, the admin token, the Redis password), a spool folder that is a
    /// file, and two listeners on one address.
    pub fn cannot_start(config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(tls) = &config.server.tls
            && let Err(error) = ServerTls::load(&tls.certificate, &tls.key)
        {
            problems.push(format!("server.tls: {error}"));
        }
        if let Err(error) = Outbound::check(config) {
            problems.push(error.to_string());
        }
        // The errors name their keys.
        if let Err(error) = config.http.admin_token() {
            problems.push(error.to_string());
        }
        if let Some(Err(error)) = config.cluster.as_ref().map(|cluster| cluster.password()) {
            problems.push(error.to_string());
        }
        let dir = &config.spool.dir;
        if dir.exists() && !dir.is_dir() {
            problems.push(format!(
                "spool.dir: {} is a file; the spool needs a folder",
                dir.display()
            ));
        }
        let listeners = [
            ("server.listen", Some(config.server.listen)),
            (
                "server.tls.listen",
                config.server.tls.as_ref().and_then(|tls| tls.listen),
            ),
            ("http.listen", config.http.listen),
        ];
        for (index, (name, address)) in listeners.iter().enumerate() {
            let Some(address) = address.filter(|address| address.port() != 0) else {
                continue;
            };
            for (other, _) in listeners[..index]
                .iter()
                .filter(|(_, other)| *other == Some(address))
            {
                problems.push(format!(
                    "{name}: {address} is also {other}; each listener needs its own address"
                ));
            }
        }
        problems
    }

    /// Opens the spool (recovering queued mail), binds the listener and
    /// starts delivering.
    pub async fn start(config: Config) -> io::Result<Service> {
        let policy = policy::Policy::from_config(&config);
        let metrics = Arc::new(Metrics::new(
            &policy.gateways,
            &policy.apps.names(),
            &RefusalReason::ALL.map(RefusalReason::as_str),
        ));
        let (spool, recovery) = Spool::open(&config.spool, metrics.spool_fsync_seconds.clone())?;
        for warning in Service::warnings(&config) {
            tracing::warn!(dir = %config.spool.dir.display(), "{warning}");
        }
        let listener = bind(config.server.listen, "").await?;
        let smtp_address = listener.local_addr()?;
        let tls = match &config.server.tls {
            Some(tls) => Some(Arc::new(ServerTls::load(&tls.certificate, &tls.key)?)),
            None => None,
        };
        let tls_listener = match config.server.tls.as_ref().and_then(|tls| tls.listen) {
            Some(address) => Some(bind(address, " for TLS").await?),
            None => None,
        };
        let tls_address = match &tls_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let http_listener = match config.http.listen {
            Some(address) => Some(bind(address, " for HTTP (metrics)").await?),
            None => None,
        };
        let admin_token = config.http.admin_token()?;
        let (stop, shutdown) = Shutdown::channel();
        let (hurry, hurry_signal) = Shutdown::channel();
        let mut workers = JoinSet::new();
        let sender_checks = policy.senders.clone();
        let outbound = Outbound::start(&config, spool.clone(), &policy, metrics.clone())?;
        let http_address = match http_listener {
            Some(listener) => {
                let address = listener.local_addr()?;
                let endpoint = Arc::new(Endpoint {
                    metrics: metrics.clone(),
                    queues: outbound.clone(),
                    spool: spool.clone(),
                    senders: sender_checks.clone(),
                    admin_token,
                    shutdown: shutdown.clone(),
                });
                workers.spawn(http::serve(listener, endpoint));
                Some(address)
            }
            None => None,
        };
        // Before the listener serves: admission sees the whole queue.
        outbound.replay(recovery)?;
        tracing::info!(
            listen = %smtp_address,
            tls_listen = %tls_address.map_or_else(|| "none".into(), |a| a.to_string()),
            http_listen = %http_address.map_or_else(|| "none".into(), |a| a.to_string()),
            starttls = tls.is_some(),
            spool = %config.spool.dir.display(),
            gateways = config.gateways.len(),
            "smtp-shaper started"
        );
        let final_outbound = outbound.clone();
        let (contexts, current) = watch::channel(Arc::new(inbound::Context {
            policy,
            config,
            spool: spool.clone(),
            outbound: outbound.clone(),
            tls,
            metrics,
        }));
        let task = tokio::spawn(async move {
            inbound::serve(
                listener,
                tls_listener,
                current.clone(),
                shutdown,
                hurry_signal,
            )
            .await;
            let grace = current.borrow().config.server.shutdown_grace;
            final_outbound.stop(grace).await;
            while workers.join_next().await.is_some() {}
            spool.close().await;
            tracing::info!("smtp-shaper stopped");
        });
        Ok(Service {
            smtp_address,
            tls_address,
            http_address,
            sender_checks,
            outbound,
            contexts,
            stop,
            hurry: Arc::new(hurry),
            task,
        })
    }

    /// The address the SMTP listener is bound to (useful with port 0).
    pub fn smtp_address(&self) -> SocketAddr {
        self.smtp_address
    }

    /// The implicit-TLS listener's address, when `[server.tls] listen` is set.
    pub fn tls_address(&self) -> Option<SocketAddr> {
        self.tls_address
    }

    /// The HTTP endpoint's address (`[http] listen`), unless turned off.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_address
    }

    /// What the gateways said about each verified sender address (relay
    /// rule 3): address, verdict, Unix time of the answer.
    pub fn sender_checks(&self) -> Vec<(String, policy::senders::Verdict, u64)> {
        self.sender_checks.all()
    }

    /// Messages queued for the named gateway.
    pub fn queued(&self, gateway: &str) -> usize {
        self.outbound.queued(gateway)
    }

    /// The shaping model and queue of the named gateway: baseline, ceiling,
    /// demand and send rates, burst ratio, queue depth and oldest age.
    pub fn shaping(&self, gateway: &str) -> Option<shaper::GatewayView> {
        self.outbound.view(gateway)
    }

    /// What ends the wait for sessions in flight during a shutdown (a
    /// second stop signal): they are told 421 and closed at once.
    pub fn stop_now(&self) -> StopNow {
        StopNow(self.hurry.clone())
    }

    /// Stops accepting, lets sessions and deliveries in flight finish (up to
    /// `shutdown_grace` each), syncs the spool and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// See [`Service::stop_now`].
pub struct StopNow(Arc<watch::Sender<bool>>);

impl StopNow {
    /// Sessions still in a transaction are told `421 4.3.2` and closed (their
    /// messages were never answered 250: nothing accepted is lost).
    pub fn now(&self) {
        let _ = self.0.send(true);
    }
}

/// Binds a listener; the error names the address and what it was `for`.
async fn bind(address: SocketAddr, purpose: &str) -> io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen{purpose} on {address}: {error}"),
        )
    })
}
