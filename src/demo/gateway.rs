//! The demo's gateway: an in-process SMTP server on loopback that accepts
//! everything and records, per sending app, when each message arrived and
//! how long it took since the app sent it (the `X-Demo-Sent` header).
//!
//! It speaks just enough SMTP for smtp-shaper's client (EHLO with
//! PIPELINING, MAIL, RCPT, DATA, RSET, QUIT), using the same command parser
//! and DATA framing as the inbound side.

use crate::poison::LockRecovered;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::smtp::{self, Command, DataReceiver, Reply, next_line};

/// One message as the gateway received it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When it arrived, since the demo started.
    pub at: f64,
    /// The sending app (the envelope sender's domain's first label).
    pub app: String,
    /// Seconds from the app's send to this arrival.
    pub delay: f64,
}

/// What the gateway has received so far.
#[derive(Default)]
pub struct Received {
    pub arrivals: Vec<Arrival>,
}

/// A running demo gateway.
pub struct DemoGateway {
    pub address: SocketAddr,
    pub received: Arc<Mutex<Received>>,
}

impl DemoGateway {
    /// Listens on a free loopback port; times count from `start`.
    pub async fn start(start: Instant) -> std::io::Result<DemoGateway> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, shared.clone(), start));
            }
        });
        Ok(DemoGateway { address, received })
    }
}

async fn session(mut stream: TcpStream, received: Arc<Mutex<Received>>, start: Instant) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    let mut out = Vec::new();
    Reply::new(220, "demo-gateway ESMTP").write_to(&mut out);
    let mut sender = String::new();
    let mut in_data: Option<DataReceiver> = None;
    loop {
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            if let Some(receiver) = in_data.as_mut() {
                let Some(consumed) = receiver.feed(&buffer) else {
                    buffer.clear();
                    break;
                };
                buffer.drain(..consumed);
                let body = in_data
                    .take()
                    .expect("in DATA")
                    .finish()
                    .unwrap_or_default();
                let arrival = arrival(&body, &sender, start);
                received.lock_recovered().arrivals.push(arrival);
                Reply::new(250, "2.0.0 Ok: queued").write_to(&mut out);
                continue;
            }
            let (len, consumed) = match next_line(&buffer, 512) {
                smtp::line::Framed::Line { len, consumed } => (len, consumed),
                smtp::line::Framed::Incomplete => break,
                smtp::line::Framed::Bad { consumed, .. } => {
                    buffer.drain(..consumed.max(1).min(buffer.len()));
                    Reply::new(500, "5.5.2 bad line").write_to(&mut out);
                    continue;
                }
            };
            let command = smtp::command::parse(&buffer[..len]);
            buffer.drain(..consumed);
            let reply = match command {
                Ok(Command::Ehlo(_)) => Reply {
                    code: 250,
                    lines: vec![
                        "demo-gateway".into(),
                        "PIPELINING".into(),
                        "8BITMIME".into(),
                    ],
                },
                Ok(Command::Helo(_)) => Reply::new(250, "demo-gateway"),
                Ok(Command::Mail { from, .. }) => {
                    sender = from;
                    Reply::new(250, "2.1.0 Ok")
                }
                Ok(Command::Rcpt { .. }) => Reply::new(250, "2.1.5 Ok"),
                Ok(Command::Data) => {
                    in_data = Some(DataReceiver::new(64 << 20));
                    Reply::new(354, "End data with <CR><LF>.<CR><LF>")
                }
                Ok(Command::Quit) => {
                    Reply::new(221, "2.0.0 Bye").write_to(&mut out);
                    let _ = stream.write_all(&out).await;
                    return;
                }
                Ok(_) => Reply::new(250, "2.0.0 Ok"),
                Err(_) => Reply::new(500, "5.5.1 not understood"),
            };
            reply.write_to(&mut out);
        }
    }
}

fn arrival(body: &[u8], sender: &str, start: Instant) -> Arrival {
    let now = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(body);
    let sent = text
        .lines()
        .find_map(|line| line.strip_prefix("X-Demo-Sent: "))
        .and_then(|sent| sent.trim().parse::<f64>().ok())
        .unwrap_or(now);
    let app = sender
        .rsplit_once('@')
        .map_or("other", |(_, domain)| {
            domain.split('.').next().unwrap_or("other")
        })
        .to_string();
    Arrival {
        at: now,
        app,
        delay: (now - sent).max(0.0),
    }
}
