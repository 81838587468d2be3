//! One client connection: socket I/O around the [`Session`] state machine.
//!
//! Replies to pipelined commands are collected and written when the input
//! holds no further complete command, so a pipelining client gets one write
//! per batch. A message's body is read here and answered with the one
//! outcome of the acceptance pipeline (`acceptance`: rules, spool,
//! hand-off); every refusal, whoever decided it, is answered through one
//! path (`answer_refusal`) that counts, logs and writes it.
//!
//! STARTTLS: after the 220, whatever the client had already sent is thrown
//! away unread (a command injected before the handshake must not run as if
//! it came over TLS, CVE-2011-0411) and the session starts over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;

use super::acceptance::{self, Outcome};
use super::limits::ClientLimits;
use super::session::{Refused, Session, Step};
use super::{Context, Refusal, RefusalReason};
use crate::config::Network;
use crate::shutdown::Shutdown;
use crate::smtp::line::Framed;
use crate::smtp::{self, DataReceiver, Reply};
use crate::tls::Stream;

/// Longest command line, CRLF included (RFC 5321 4.5.3.1.4).
const MAX_COMMAND_LINE: usize = 512;

/// What ended reading.
enum Input {
    Data,
    Closed,
    TimedOut,
    Shutdown,
}

/// The socket and its buffers: input not yet parsed, replies not yet sent.
struct Conn {
    stream: Stream,
    buffer: Vec<u8>,
    out: Vec<u8>,
    /// A client that stops reading its replies is dropped after this long,
    /// so it cannot hold a connection slot forever.
    write_timeout: Duration,
    /// Flips when the service stops waiting for sessions (shutdown_grace
    /// over, or a second stop signal): a session still in a transaction
    /// is told 421 and closed, its message not accepted.
    cut: Shutdown,
}

impl Conn {
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            timeout(self.write_timeout, self.stream.write_all(&self.out))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")
                })??;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more input; with `shutdown` set, also returns when the service
    /// is stopping.
    async fn fill(
        &mut self,
        limit: Duration,
        shutdown: Option<&mut Shutdown>,
    ) -> std::io::Result<Input> {
        self.buffer.reserve(8192);
        let read = async {
            match timeout(limit, self.stream.read_buf(&mut self.buffer)).await {
                Ok(Ok(0)) => Ok(Input::Closed),
                Ok(Ok(_)) => Ok(Input::Data),
                Ok(Err(error)) => Err(error),
                Err(_) => Ok(Input::TimedOut),
            }
        };
        match shutdown {
            Some(shutdown) => tokio::select! {
                result = read => result,
                _ = shutdown.stopped() => Ok(Input::Shutdown),
            },
            None => read.await,
        }
    }
}

/// The TLS handshake as the server, bounded by `limit`. Boxed: rustls'
/// handshake state is kilobytes, and held inline it would enlarge every
/// connection's task, TLS or not.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
) -> std::io::Result<Stream> {
    match timeout(limit, Box::pin(acceptor.accept(stream))).await {
        Ok(Ok(tls)) => Ok(Stream::Server(Box::new(tls))),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// Serves one accepted connection to its end; with `implicit_tls`, the TLS
/// handshake comes first (the implicit-TLS listener).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    context: Arc<Context>,
    limits: Arc<ClientLimits>,
    mut shutdown: Shutdown,
    cut: Shutdown,
    implicit_tls: bool,
) {
    let _ = stream.set_nodelay(true);
    let server = &context.config.server;
    let stream = match (&context.tls, implicit_tls) {
        (Some(tls), true) => {
            let handshake = handshake(tls.acceptor(), stream, server.idle_timeout).await;
            count_tls(&context, "implicit", handshake.is_ok());
            match handshake {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::info!(client = %peer, %error, "TLS handshake failed on the TLS listener");
                    return;
                }
            }
        }
        _ => Stream::Plain(stream),
    };
    let mut conn = Conn {
        stream,
        buffer: Vec::with_capacity(8192),
        out: Vec::with_capacity(1024),
        write_timeout: server.idle_timeout,
        cut,
    };
    let mut session = Session::new(server, &context.policy, &context.outbound, peer.ip());
    if conn.stream.is_tls() {
        session.tls_started();
    }
    if !early_talker_waited_out(&mut conn, &session, &context).await {
        let _ = conn.flush().await;
        return;
    }
    session.greeting().write_to(&mut conn.out);
    let result = run(&mut conn, &mut session, &context, &limits, &mut shutdown).await;
    if let Err(error) = result {
        tracing::debug!(client = %peer, %error, "connection ended with an I/O error");
    }
    let _ = conn.flush().await;
    let _ = conn.stream.shutdown().await;
}

/// Waits `pregreet_wait` before the greeting for a client outside
/// `limit_exempt_networks`: one that talks meanwhile does not wait for
/// replies (a bot, not a mail client) and is refused (554, then closed);
/// false then, or when it left. Apps beside the sidecar are greeted at
/// once.
async fn early_talker_waited_out(
    conn: &mut Conn,
    session: &Session<'_>,
    context: &Context,
) -> bool {
    let server = &context.config.server;
    if server.pregreet_wait.is_zero()
        || Network::any_contains(&server.limit_exempt_networks, session.client_ip)
    {
        return true;
    }
    match conn.fill(server.pregreet_wait, None).await {
        Ok(Input::TimedOut) => true,
        Ok(Input::Data) => {
            let refusal = Refusal::new(
                RefusalReason::Sequence,
                554,
                "5.5.1 Error: talked before the greeting (an SMTP client waits for the 220)",
            );
            answer_refusal(conn, context, session, Refused::Close(refusal));
            false
        }
        _ => false,
    }
}

/// After a step: keep reading commands, or hang up.
enum Flow {
    Continue,
    Close,
}

async fn run(
    conn: &mut Conn,
    session: &mut Session<'_>,
    context: &Context,
    limits: &ClientLimits,
    shutdown: &mut Shutdown,
) -> std::io::Result<()> {
    let server = &context.config.server;
    // Set while discarding an over-long line until its end arrives.
    let mut skipping = None;
    // When the first byte of the command line still incomplete arrived.
    let mut partial_since: Option<Instant> = None;
    loop {
        // Answer every complete command already buffered (pipelining).
        while let Some(step) = next_step(conn, session, &mut skipping) {
            if let Flow::Close = act(conn, session, context, limits, step).await? {
                return Ok(());
            }
        }
        conn.flush().await?;
        // A command line must be complete within command_deadline of its
        // first byte, however steadily it trickles in.
        let limit = if conn.buffer.is_empty() && skipping.is_none() {
            partial_since = None;
            server.idle_timeout
        } else {
            let since = *partial_since.get_or_insert_with(Instant::now);
            server
                .idle_timeout
                .min(server.command_deadline.saturating_sub(since.elapsed()))
        };
        // Between transactions a stopping service hangs up; inside one it lets
        // the client finish (the service waits up to shutdown_grace), until
        // the wait is cut.
        let mut cut = conn.cut.clone();
        let watch_shutdown = if session.in_transaction() {
            &mut cut
        } else {
            &mut *shutdown
        };
        let input = conn.fill(limit, Some(watch_shutdown)).await?;
        if let Flow::Close = after_waiting(conn, session, context, input) {
            return Ok(());
        }
    }
}

/// The session's step for the next complete line in the buffer (a command,
/// an AUTH response or a line error), taking the line out; `None` once no
/// complete line is left. `skipping` carries an over-long line's error
/// until its end arrives.
fn next_step(
    conn: &mut Conn,
    session: &mut Session<'_>,
    skipping: &mut Option<smtp::line::LineError>,
) -> Option<Step> {
    if let Some(error) = *skipping {
        let Some(end) = conn.buffer.iter().position(|&b| b == b'\n') else {
            conn.buffer.clear();
            return None;
        };
        conn.buffer.drain(..=end);
        *skipping = None;
        return Some(session.line_error(error, b""));
    }
    match smtp::next_line(&conn.buffer, MAX_COMMAND_LINE) {
        Framed::Incomplete => None,
        Framed::Bad { error, consumed: 0 } => {
            *skipping = Some(error);
            next_step(conn, session, skipping)
        }
        Framed::Bad { error, consumed } => {
            let step = session.line_error(error, &conn.buffer[..consumed]);
            conn.buffer.drain(..consumed);
            Some(step)
        }
        Framed::Line { len, consumed } if session.auth_pending() => {
            let step = session.auth_line(&conn.buffer[..len]);
            conn.buffer.drain(..consumed);
            Some(step)
        }
        Framed::Line { len, consumed } => {
            let parsed = smtp::command::parse(&conn.buffer[..len]);
            conn.buffer.drain(..consumed);
            Some(session.command(parsed))
        }
    }
}

/// Carries out one step: answers it, and runs what it starts (AUTH's
/// check, a DATA phase, a TLS handshake).
async fn act(
    conn: &mut Conn,
    session: &mut Session<'_>,
    context: &Context,
    limits: &ClientLimits,
    step: Step,
) -> std::io::Result<Flow> {
    match step {
        Step::Authenticate { user, password } => {
            match authenticate(session, context, limits, user, password).await {
                Ok(reply) => reply.write_to(&mut conn.out),
                Err(refused) => return Ok(answer_refusal(conn, context, session, refused)),
            }
        }
        Step::Reply(reply) => {
            if reply.is_failure() {
                // A shaping deferral at RCPT (counted in deferrals_total by
                // the admission): one line, with the reply sent.
                let (gateway, app) = session.transaction_names().unwrap_or_default();
                tracing::warn!(client = %session.client_ip, %gateway, %app, reply = %reply, "new mail deferred");
            }
            reply.write_to(&mut conn.out);
        }
        Step::Refuse(refusal) => {
            return Ok(answer_refusal(
                conn,
                context,
                session,
                Refused::Continue(refusal),
            ));
        }
        Step::Close(reply) => {
            reply.write_to(&mut conn.out);
            return Ok(Flow::Close);
        }
        Step::RefuseAndClose(refusal) => {
            return Ok(answer_refusal(
                conn,
                context,
                session,
                Refused::Close(refusal),
            ));
        }
        Step::Data(_) if !conn.buffer.is_empty() => {
            // The body came before the 354 (RFC 2920 has DATA end a
            // pipelined group): a client that does not wait, or an attempt
            // to smuggle a second message past a gateway.
            let refusal = Refusal::new(
                RefusalReason::Sequence,
                554,
                "5.5.0 Error: message data sent before the 354 reply (improper pipelining)",
            );
            return Ok(answer_refusal(
                conn,
                context,
                session,
                Refused::Close(refusal),
            ));
        }
        Step::Data(reply) => {
            reply.write_to(&mut conn.out);
            conn.flush().await?;
            return receive_message(conn, session, context).await;
        }
        Step::StartTls(reply) => {
            reply.write_to(&mut conn.out);
            conn.flush().await?;
            if !start_tls(conn, session, context).await {
                return Ok(Flow::Close);
            }
        }
    }
    Ok(Flow::Continue)
}

/// What a wait for the client's next bytes ended in: more input, or the
/// end of the connection (closed, silent too long, or the service stopping).
fn after_waiting(conn: &mut Conn, session: &Session<'_>, context: &Context, input: Input) -> Flow {
    let hostname = &context.config.server.hostname;
    match input {
        Input::Data => Flow::Continue,
        Input::Closed => Flow::Close,
        Input::TimedOut => {
            let refusal = Refusal::new(
                RefusalReason::Timeout,
                421,
                format!("4.4.2 {hostname} Error: timeout exceeded, closing connection"),
            );
            answer_refusal(conn, context, session, Refused::Close(refusal))
        }
        Input::Shutdown => {
            Reply::new(
                421,
                format!("4.3.2 {hostname} Service shutting down, try again later"),
            )
            .write_to(&mut conn.out);
            Flow::Close
        }
    }
}

/// The one way a refusal is answered, whoever decided it (the listener's
/// own are written before any session): counted under its reason, logged
/// unless quiet (logged already where it was decided, or one of a run),
/// written; then the connection goes on or closes as the refusal says.
/// The session's `max_errors` bounds how many log lines one client causes.
fn answer_refusal(
    conn: &mut Conn,
    context: &Context,
    session: &Session<'_>,
    refused: Refused,
) -> Flow {
    let (refusal, flow) = match refused {
        Refused::Continue(refusal) => (refusal, Flow::Continue),
        Refused::Close(refusal) => (refusal, Flow::Close),
    };
    super::count_rejection(context, refusal.reason);
    if !refusal.quiet {
        tracing::info!(client = %session.client_ip, reply = %refusal.reply, "command refused");
    }
    refusal.reply.write_to(&mut conn.out);
    flow
}

/// Checks AUTH credentials off the async threads and answers with the
/// session's verdict; logs the outcome (never the password). A client out
/// of AUTH failures (`limits`) is closed with 421, its password unchecked.
async fn authenticate(
    session: &mut Session<'_>,
    context: &Context,
    limits: &ClientLimits,
    user: String,
    password: Vec<u8>,
) -> Result<Reply, Refused> {
    let client = session.client_ip;
    let too_many = || {
        Err(Refused::Close(Refusal::new(
            RefusalReason::AuthFailureRate,
            421,
            format!(
                "4.7.0 {} Error: too many authentication failures from {client}, try again later",
                context.config.server.hostname
            ),
        )))
    };
    if !limits.auth_allowed(client) {
        tracing::warn!(%client, %user, "authentication refused unchecked: too many failures from this client");
        return too_many();
    }
    let Some(_turn) = limits.password_check().await else {
        tracing::warn!(%client, %user, "authentication refused unchecked: too many password checks at once");
        return Err(Refused::Continue(Refusal::new(
            RefusalReason::AuthBusy,
            454,
            "4.7.0 Temporary authentication failure: too many logins being checked at once, try again",
        )));
    };
    let apps = context.policy.apps.clone();
    let name = user.clone();
    let lane = tokio::task::spawn_blocking(move || apps.login(&name, &password))
        .await
        .unwrap_or(None);
    let result = if lane.is_some() { "success" } else { "failure" };
    context
        .metrics
        .auth_attempts
        .with_label_values(&[result])
        .inc();
    match lane {
        Some(app) => {
            let app = context.policy.apps.name(app);
            tracing::info!(client = %session.client_ip, %user, %app, "client authenticated");
        }
        None => {
            tracing::warn!(client = %session.client_ip, %user, "authentication failed");
            if !limits.auth_failed(client) {
                return too_many();
            }
        }
    }
    session.login_result(lane)
}

/// Upgrades the connection after the 220 to STARTTLS; false when the
/// handshake failed and the connection is done.
async fn start_tls(conn: &mut Conn, session: &mut Session<'_>, context: &Context) -> bool {
    let Some(tls) = &context.tls else {
        return false;
    };
    if !conn.buffer.is_empty() {
        tracing::warn!(
            client = %session.client_ip,
            bytes = conn.buffer.len(),
            "discarded input sent before the TLS handshake (STARTTLS command injection?)"
        );
        conn.buffer.clear();
    }
    let Some(tcp) = conn.stream.take_plain() else {
        return false;
    };
    let handshake = handshake(tls.acceptor(), tcp, context.config.server.idle_timeout).await;
    count_tls(context, "starttls", handshake.is_ok());
    match handshake {
        Ok(stream) => {
            tracing::debug!(client = %session.client_ip, tls = %stream.tls_description().unwrap_or_default(), "STARTTLS done");
            conn.stream = stream;
            session.tls_started();
            true
        }
        Err(error) => {
            tracing::info!(client = %session.client_ip, %error, "STARTTLS handshake failed");
            false
        }
    }
}

fn count_tls(context: &Context, mode: &str, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    context
        .metrics
        .inbound_tls_sessions
        .with_label_values(&[mode, result])
        .inc();
}

/// Reads a body after 354 and answers it with what the acceptance
/// pipeline made of it; closes when the client went away or stalled, or
/// the service stops waiting for it.
async fn receive_message(
    conn: &mut Conn,
    session: &mut Session<'_>,
    context: &Context,
) -> std::io::Result<Flow> {
    let server = &context.config.server;
    let mut receiver = DataReceiver::new(server.max_message_size as usize);
    let started = Instant::now();
    loop {
        if let Some(consumed) = receiver.feed(&conn.buffer) {
            conn.buffer.drain(..consumed);
            break;
        }
        conn.buffer.clear();
        // Silence ends DATA after data_timeout; a trickle after data_deadline.
        let limit = server
            .data_timeout
            .min(server.data_deadline.saturating_sub(started.elapsed()));
        let mut cut = conn.cut.clone();
        match conn.fill(limit, Some(&mut cut)).await? {
            Input::Data => {}
            Input::Closed => return Ok(Flow::Close),
            Input::Shutdown => {
                // Not accepted: the client still has the message to send.
                Reply::new(
                    421,
                    format!(
                        "4.3.2 {} Service shutting down; message not accepted, send it again later",
                        server.hostname
                    ),
                )
                .write_to(&mut conn.out);
                return Ok(Flow::Close);
            }
            Input::TimedOut => {
                let refusal = Refusal::new(
                    RefusalReason::Timeout,
                    421,
                    format!(
                        "4.4.2 {} Error: timeout exceeded during DATA",
                        server.hostname
                    ),
                );
                return Ok(answer_refusal(
                    conn,
                    context,
                    session,
                    Refused::Close(refusal),
                ));
            }
        }
    }
    Ok(
        match acceptance::accept(context, session, receiver.finish()).await {
            Outcome::Accepted(reply) => {
                reply.write_to(&mut conn.out);
                Flow::Continue
            }
            Outcome::Refused(refused) => answer_refusal(conn, context, session, refused),
        },
    )
}
