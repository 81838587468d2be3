//! The sender checks that need the outside world.
//!
//! Relay rule 3, a valid existing sender: asks a gateway (with
//! `verify_senders = true`), at start and every `verify_interval`, whether
//! each sender address the apps use and that routes to it exists, by a RCPT
//! probe without DATA. Verdicts go to `policy::senders::SenderChecks`, where
//! sessions read them; every verdict is logged. A transient answer or an
//! unreachable gateway leaves the previous verdict in place.
//!
//! Relay rule 4, SPF/DMARC/DKIM: for a gateway with `sending_ip`, checks its
//! sender domains once at start (`preflight`) and logs what is wrong.

use std::sync::Arc;

use super::Gateway;
use super::client::Connection;
use crate::policy::senders::{SenderChecks, Verdict};
use crate::shutdown::Shutdown;
use crate::spool::unix_seconds;

/// Checks `addresses` at `gateway` until `shutdown`.
pub(super) async fn verify_senders(
    gateway: Arc<Gateway>,
    helo_name: String,
    addresses: Vec<String>,
    checks: Arc<SenderChecks>,
    mut shutdown: Shutdown,
) {
    let config = &gateway.config;
    loop {
        match Connection::open(
            &config.address,
            &helo_name,
            &gateway.tls,
            gateway.credentials.as_ref(),
            config.connect_timeout,
            config.command_timeout,
        )
        .await
        {
            Ok(mut connection) => {
                for address in &addresses {
                    match connection.probe(address).await {
                        Ok(reply) if reply.is_positive() => {
                            tracing::info!(gateway = %config.name, sender = %address, "sender verified: the gateway knows it");
                            checks.record(address, Verdict::Exists, unix_seconds());
                        }
                        Ok(reply) if reply.is_permanent() => {
                            tracing::error!(gateway = %config.name, sender = %address, reply = %reply, "sender does not exist at the gateway; mail from it is refused (relay rule 3)");
                            checks.record(
                                address,
                                Verdict::Missing(reply.to_string()),
                                unix_seconds(),
                            );
                        }
                        Ok(reply) => {
                            tracing::warn!(gateway = %config.name, sender = %address, reply = %reply, "sender check got a transient answer; keeping the previous verdict");
                        }
                        Err(error) => {
                            tracing::warn!(gateway = %config.name, sender = %address, %error, "sender check failed; keeping the previous verdicts");
                            break;
                        }
                    }
                }
                connection.quit().await;
            }
            Err(error) => {
                tracing::warn!(gateway = %config.name, %error, "cannot verify senders now: gateway unreachable");
            }
        }
        tokio::select! {
            _ = shutdown.stopped() => return,
            _ = tokio::time::sleep(config.verify_interval) => {}
        }
    }
}

/// Checks the DNS of `domains` for a gateway sending from `ip`, off the
/// async threads, and logs each finding that is not right (one line per
/// domain when all is).
pub(super) fn check_sender_domains(
    gateway: String,
    domains: Vec<String>,
    ip: std::net::IpAddr,
    selectors: Vec<String>,
) {
    tokio::task::spawn_blocking(move || {
        let resolver = crate::dns::SystemResolver::from_resolv_conf();
        for domain in domains {
            let report = crate::preflight::check_domain(&resolver, &domain, ip, &selectors);
            if report.ok() {
                tracing::info!(%gateway, %domain, sending_ip = %ip, "sender domain DNS: SPF, DMARC and DKIM are right");
            }
            for finding in report.findings.iter().filter(|finding| !finding.ok) {
                tracing::warn!(%gateway, %domain, sending_ip = %ip, problem = %finding.text, "sender domain DNS needs fixing (relay rule 4; smtp-shaper check-dns explains)");
            }
        }
    });
}
