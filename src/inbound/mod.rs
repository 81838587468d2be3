//! The inbound side: the listener applications connect to, and their sessions.
//!
//! The listener enforces the checks that come before any SMTP: the client
//! network must be in `allowed_networks` (else 554 and close: never an open
//! relay), one address may open connections no faster than
//! `client_connection_rate` (`limits`), at most `max_connections` sessions
//! run at once and at most `max_connections_per_client` from one address
//! (else 421). Clients in `limit_exempt_networks` (default loopback: the
//! apps beside the sidecar) skip the two per-address limits: an app that
//! cannot connect loses its mail.
//!
//! Every refusal, here and in the sessions, carries its [`RefusalReason`],
//! the label it is counted under in `smtp_shaper_rejections_total`.
//!
//! The rooms: this file is the listener (and its own refusals, before a
//! session begins); `connection` the socket I/O of one session and the one
//! path every refusal in a session is answered through; [`session`]
//! the state machine (no I/O); `acceptance` the pipeline from the end of
//! DATA to the `250` (session rules, `checks`, spool, hand-off to the
//! delivery queue), returning one outcome the connection writes.

mod acceptance;
mod checks;
mod connection;
mod limits;
mod refusal;
pub mod session;

pub use refusal::{Refusal, RefusalReason};

use crate::poison::LockRecovered;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Config, Network, ServerConfig};
use crate::outbound::Outbound;
use crate::policy::Policy;
use crate::shutdown::Shutdown;
use crate::smtp::Reply;
use crate::spool::Spool;
use crate::telemetry::Metrics;
use crate::tls::server::ServerTls;
use limits::ClientLimits;

/// How often the per-client limits forget addresses not seen lately.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What every session needs, shared read-only.
pub struct Context {
    pub config: Config,
    pub policy: Policy,
    pub spool: Spool,
    pub outbound: Outbound,
    /// The certificate for STARTTLS and the TLS listener, when configured.
    pub tls: Option<Arc<ServerTls>>,
    pub metrics: Arc<Metrics>,
}

/// Accepts connections until `shutdown` turns true, then lets open sessions
/// finish for up to `shutdown_grace` (or until `hurry`, a second stop
/// signal) and tells the rest 421 (none of them has been answered 250 for
/// an unfinished message, so nothing is lost).
/// `tls_listener` speaks TLS from the first byte; both share the limits.
/// `contexts` holds the current context: a reload replaces it, and each
/// new connection takes the one current when it arrives (open sessions
/// keep theirs). The limit on concurrent connections is that of the first;
/// the per-client limits start afresh when a reload changes them.
pub async fn serve(
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    contexts: watch::Receiver<Arc<Context>>,
    mut shutdown: Shutdown,
    mut hurry: Shutdown,
) {
    // Sessions still open when the wait for them ends are cut with 421.
    let (cut, cut_signal) = Shutdown::channel();
    let first = contexts.borrow().clone();
    let server = &first.config.server;
    let slots = Arc::new(Semaphore::new(server.max_connections));
    let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut limits = Arc::new(ClientLimits::new(server));
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut sessions = JoinSet::new();
    loop {
        let (accepted, implicit_tls) = tokio::select! {
            accepted = listener.accept() => (accepted, false),
            accepted = accept_on(tls_listener.as_ref()) => (accepted, true),
            _ = shutdown.stopped() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            _ = prune.tick() => {
                limits.prune();
                continue;
            }
        };
        let context = contexts.borrow().clone();
        let server = &context.config.server;
        if limits.settings != ClientLimits::settings_of(server) {
            limits = Arc::new(ClientLimits::new(server));
        }
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (slot, client_slot) = match admit(server, &limits, &slots, &per_client, peer) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                count_rejection(&context, refusal.reason);
                sessions.spawn(refuse(stream, refusal.reply));
                continue;
            }
        };
        let shutdown = shutdown.clone();
        let cut = cut_signal.clone();
        let limits = limits.clone();
        sessions.spawn(async move {
            let open = &context.metrics.inbound_connections;
            open.inc();
            connection::serve(
                stream,
                peer,
                context.clone(),
                limits,
                shutdown,
                cut,
                implicit_tls,
            )
            .await;
            context.metrics.inbound_connections.dec();
            drop(client_slot);
            drop(slot);
        });
    }
    drop(listener);
    drop(tls_listener);
    let grace = contexts.borrow().config.server.shutdown_grace;
    let drained = tokio::select! {
        drained = tokio::time::timeout(grace, async {
            while sessions.join_next().await.is_some() {}
        }) => drained.is_ok(),
        _ = hurry.stopped() => sessions.is_empty(),
    };
    if !drained {
        tracing::warn!(
            open = sessions.len(),
            "sessions still open after shutdown_grace (or a second stop signal); telling them 421 and closing them"
        );
        let _ = cut.send(true);
        // Each writes its 421 and closes; one that cannot is dropped.
        let told = tokio::time::timeout(CUT_WAIT, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if told.is_err() {
            sessions.shutdown().await;
        }
    }
}

/// How long sessions cut at the end of a shutdown have to write their 421.
const CUT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The checks a connection passes before any SMTP, in order: its network,
/// its address's connection rate, a session slot, a slot of its address
/// (`limit_exempt_networks`, default loopback: the session slot only).
/// The slots come back with the connection admitted; a refusal is logged
/// here with the limit it hit.
fn admit(
    server: &ServerConfig,
    limits: &ClientLimits,
    slots: &Arc<Semaphore>,
    per_client: &Arc<Mutex<HashMap<IpAddr, usize>>>,
    peer: SocketAddr,
) -> Result<(OwnedSemaphorePermit, Option<ClientSlot>), Refusal> {
    let host = &server.hostname;
    let ip = peer.ip();
    if !Network::any_contains(&server.allowed_networks, ip) {
        tracing::warn!(client = %peer, "connection refused: client not in server.allowed_networks");
        return Err(Refusal::new(
            RefusalReason::ClientDenied,
            554,
            format!("5.7.1 {host} Access denied: {ip} may not relay here"),
        ));
    }
    let exempt = Network::any_contains(&server.limit_exempt_networks, ip);
    if !exempt && !limits.connection(ip) {
        tracing::warn!(client = %peer, limit = ?server.client_connection_rate, "connection refused: client connecting too often");
        return Err(Refusal::new(
            RefusalReason::ConnectionRate,
            421,
            format!("4.7.0 {host} Error: connection rate limit exceeded for {ip}, try again later"),
        ));
    }
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        tracing::warn!(client = %peer, limit = server.max_connections, "connection refused: too many connections");
        return Err(Refusal::new(
            RefusalReason::TooManyConnections,
            421,
            format!("4.7.0 {host} Error: too many connections, try again later"),
        ));
    };
    if exempt {
        return Ok((slot, None));
    }
    let Some(client_slot) = ClientSlot::take(per_client, ip, server.max_connections_per_client)
    else {
        tracing::warn!(client = %peer, limit = server.max_connections_per_client, "connection refused: too many connections from this client");
        return Err(Refusal::new(
            RefusalReason::TooManyConnections,
            421,
            format!("4.7.0 {host} Error: too many connections from {ip}, try again later"),
        ));
    };
    Ok((slot, Some(client_slot)))
}

/// Counts a refusal in `smtp_shaper_rejections_total` under its reason.
fn count_rejection(context: &Context, reason: RefusalReason) {
    context
        .metrics
        .rejections
        .with_label_values(&[reason.as_str()])
        .inc();
}

/// One of a client address's connection slots, given back on drop.
struct ClientSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl ClientSlot {
    fn take(
        counts: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        limit: usize,
    ) -> Option<ClientSlot> {
        let mut map = counts.lock_recovered();
        let count = map.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock_recovered();
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts on `listener`, or waits forever when there is none.
async fn accept_on(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn refuse(mut stream: TcpStream, reply: Reply) {
    let _ = stream.write_all(&reply.to_wire()).await;
    let _ = stream.shutdown().await;
}
