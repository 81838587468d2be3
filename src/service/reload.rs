//! Reloading the configuration (SIGHUP) into a running [`Service`]: what
//! changes at once (gateways, shaping, apps, relay rules, DKIM keys,
//! session limits), what waits for a restart (`config::Config::
//! keep_restart_only`), and the metric and log line of each attempt.

use std::sync::Arc;

use super::Service;
use crate::config::Config;
use crate::tls::server::ServerTls;
use crate::{inbound, policy};

/// Why a new configuration was not applied; the running one stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// `[server.tls]`'s certificate or key could not be loaded.
    #[error("server TLS: {0}")]
    Tls(std::io::Error),
    /// A gateway's TLS settings, password or token, or a DKIM key could
    /// not be loaded (see `outbound::Outbound::reload`).
    #[error("{0}")]
    Gateways(std::io::Error),
}

impl Service {
    /// Applies a new configuration (SIGHUP): gateways, their shaping and
    /// TLS settings, apps, relay rules, DKIM keys and session limits change
    /// without dropping a connection or a queued message (see
    /// `Outbound::reload`). Settings bound at start (listen addresses, the
    /// spool, the HTTP endpoint, threads, `max_connections`) are kept, each
    /// with a warning. On an error the running configuration stays.
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let old = self.contexts.borrow().clone();
        let result = self.apply(&old, config).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        old.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(error) => {
                tracing::error!(%error, "configuration reload refused; the running configuration stays")
            }
        }
        result
    }

    /// A reload whose new configuration did not even parse: logged and
    /// counted like any refused reload.
    pub fn reload_refused(&self, problems: &str) {
        let context = self.contexts.borrow().clone();
        context
            .metrics
            .config_reloads
            .with_label_values(&["failure"])
            .inc();
        tracing::error!(%problems, "configuration reload refused: the new file is invalid; the running configuration stays");
    }

    async fn apply(&self, old: &inbound::Context, mut config: Config) -> Result<(), ReloadError> {
        // Keep what is bound at start, so the context describes reality.
        for setting in config.keep_restart_only(&old.config) {
            tracing::warn!(%setting, "changed, but only takes effect at a restart; keeping the running value");
        }
        let tls = match &config.server.tls {
            Some(tls) => Some(Arc::new(
                ServerTls::load(&tls.certificate, &tls.key).map_err(ReloadError::Tls)?,
            )),
            None => None,
        };
        let mut policy = policy::Policy::from_config(&config);
        // Verdicts of relay rule 3 carry over.
        policy.senders = self.sender_checks.clone();
        self.outbound
            .reload(&config, &policy)
            .await
            .map_err(ReloadError::Gateways)?;
        let _ = self.contexts.send(Arc::new(inbound::Context {
            policy,
            config,
            spool: old.spool.clone(),
            outbound: self.outbound.clone(),
            tls,
            metrics: old.metrics.clone(),
        }));
        Ok(())
    }
}
