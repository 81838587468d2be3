//! The gateway side: an in-process SMTP sink that records what it receives
//! and answers as a test tells it, a gateway that never greets, and readers
//! of what arrived.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{Io, TestCertificate, xoauth2_string};

/// A message as the sink received it (unstuffed).
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
    /// When the end of DATA arrived.
    pub at: std::time::Instant,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The user the sender logged in as.
    pub login: Option<String>,
}

/// What the sink answers; change it while tests run.
#[derive(Default)]
pub struct Behavior {
    /// Reply line for RCPT TO of a given address (e.g. "550 5.1.1 unknown").
    pub rcpt_replies: HashMap<String, String>,
    /// How many RCPTs drew one of `rcpt_replies`.
    pub rcpt_refused: usize,
    /// Replies for the end of DATA, used up one per message, then 250.
    pub data_replies: VecDeque<String>,
    /// Close the connection in the middle of the next N message bodies.
    pub drop_during_data: usize,
    /// Take each message, then wait this long before answering its end
    /// (a gateway scanning the content).
    pub data_reply_delay: Option<std::time::Duration>,
    /// Answer the next MAIL FROM with this reply, then close the
    /// connection (RFC 5321 has a server close after a 421).
    pub mail_reply_then_close: Option<String>,
    /// Greet the next connection with this reply instead of 220, then
    /// close.
    pub greeting_then_close: Option<String>,
    /// Answer the next EHLO with this reply, then close.
    pub ehlo_reply_then_close: Option<String>,
    /// Sessions greeted with 220 so far (the service's first contact at
    /// start is one: wait for it before setting a one-shot behaviour).
    pub greeted: usize,
    /// Whether to offer PIPELINING.
    pub no_pipelining: bool,
    /// Offer AUTH PLAIN and require this user and password before MAIL.
    pub login: Option<(String, String)>,
    /// Offer AUTH XOAUTH2 and require this user with one of these bearer
    /// tokens before MAIL, checked against the exact XOAUTH2 string; any
    /// other string draws Exchange's error challenge, then 535.
    pub xoauth2: Option<(String, Vec<String>)>,
    /// Every XOAUTH2 initial response, decoded, in arrival order.
    pub xoauth2_seen: Vec<String>,
    /// What the client sent back to each error challenge (RFC 7628 wants
    /// an empty line).
    pub challenge_answers: Vec<String>,
}

/// An in-process SMTP server playing the gateway.
pub struct Sink {
    pub address: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub behavior: Arc<Mutex<Behavior>>,
    /// Transactions that reached end of DATA, whatever the reply.
    pub data_attempts: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl Sink {
    pub async fn start() -> Sink {
        Sink::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(address: SocketAddr) -> Sink {
        Sink::start_with(address, None).await
    }

    /// A sink with TLS: it offers STARTTLS, or with `implicit` speaks TLS
    /// from the first byte.
    pub async fn start_tls(certificate: &TestCertificate, implicit: bool) -> Sink {
        Sink::start_with(
            "127.0.0.1:0".parse().unwrap(),
            Some((certificate.acceptor(), implicit)),
        )
        .await
    }

    async fn start_with(address: SocketAddr, tls: Option<(TlsAcceptor, bool)>) -> Sink {
        let listener = TcpListener::bind(address).await.expect("bind sink");
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let behavior = Arc::new(Mutex::new(Behavior::default()));
        let data_attempts = Arc::new(Mutex::new(0));
        let task = {
            let (received, behavior, data_attempts) =
                (received.clone(), behavior.clone(), data_attempts.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    // Replies go out as separate writes: without this, Nagle
                    // and the peer's delayed ACK stall each one by 40 ms.
                    let _ = stream.set_nodelay(true);
                    let shared = SinkShared {
                        received: received.clone(),
                        behavior: behavior.clone(),
                        data_attempts: data_attempts.clone(),
                    };
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let _ = match tls {
                            Some((acceptor, true)) => match acceptor.accept(stream).await {
                                Ok(stream) => {
                                    sink_session(Box::new(stream), shared, None, true, true).await
                                }
                                Err(_) => Ok(()),
                            },
                            Some((acceptor, false)) => {
                                sink_session(Box::new(stream), shared, Some(acceptor), false, true)
                                    .await
                            }
                            None => sink_session(Box::new(stream), shared, None, false, true).await,
                        };
                    });
                }
            })
        };
        Sink {
            address,
            received,
            behavior,
            data_attempts,
            task,
        }
    }

    /// Answers RCPT TO:<address> with `reply` (e.g. "550 5.1.1 unknown") until cleared.
    pub fn reply_to_rcpt(&self, address: &str, reply: &str) {
        self.behavior
            .lock()
            .unwrap()
            .rcpt_replies
            .insert(address.to_string(), reply.to_string());
    }

    /// Accepts RCPT TO:<address> normally again.
    pub fn clear_rcpt_reply(&self, address: &str) {
        self.behavior.lock().unwrap().rcpt_replies.remove(address);
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Stops listening (open sessions end when their peer hangs up).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// A gateway that accepts connections and never greets: a worker waits
/// for the greeting until its `command_timeout`, then gives up. For every
/// connection it records how many earlier ones were still open then.
pub struct SilentGateway {
    pub address: SocketAddr,
    overlaps: Arc<Mutex<Vec<usize>>>,
    task: JoinHandle<()>,
}

impl SilentGateway {
    pub async fn start() -> SilentGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().unwrap();
        let overlaps = Arc::new(Mutex::new(Vec::new()));
        let recorded = overlaps.clone();
        let task = tokio::spawn(async move {
            let mut open: Vec<std::net::TcpStream> = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                // A plain non-blocking read asks the kernel whether the peer
                // has closed, not tokio's readiness cache.
                open.retain(|mut earlier| {
                    let mut byte = [0u8; 1];
                    matches!(
                        std::io::Read::read(&mut earlier, &mut byte),
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock
                    )
                });
                recorded.lock().unwrap().push(open.len());
                let stream = stream.into_std().unwrap();
                stream.set_nonblocking(true).unwrap();
                open.push(stream);
            }
        });
        SilentGateway {
            address,
            overlaps,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.overlaps.lock().unwrap().len()
    }

    /// Per connection, how many earlier ones were still open when it came.
    pub fn overlaps(&self) -> Vec<usize> {
        self.overlaps.lock().unwrap().clone()
    }

    /// Stops listening and closes every connection, freeing the address.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// What every sink session records into.
#[derive(Clone)]
struct SinkShared {
    received: Arc<Mutex<Vec<Received>>>,
    behavior: Arc<Mutex<Behavior>>,
    data_attempts: Arc<Mutex<usize>>,
}

/// One sink session. `starttls` offers STARTTLS; `tls` says the stream is
/// TLS already; `greet` is false after STARTTLS (the greeting was sent).
fn sink_session(
    stream: Box<dyn Io>,
    shared: SinkShared,
    starttls: Option<TlsAcceptor>,
    tls: bool,
    greet: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> {
    Box::pin(sink_session_inner(stream, shared, starttls, tls, greet))
}

async fn sink_session_inner(
    stream: Box<dyn Io>,
    shared: SinkShared,
    starttls: Option<TlsAcceptor>,
    tls: bool,
    greet: bool,
) -> std::io::Result<()> {
    let SinkShared {
        received,
        behavior,
        data_attempts,
    } = shared.clone();
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    if greet {
        let refusal = behavior.lock().unwrap().greeting_then_close.take();
        if let Some(reply) = refusal {
            writer.write_all(format!("{reply}\r\n").as_bytes()).await?;
            return Ok(());
        }
        writer.write_all(b"220 sink.test ESMTP\r\n").await?;
        behavior.lock().unwrap().greeted += 1;
    }
    let mut mail_from = String::new();
    let mut recipients = Vec::new();
    let mut logged_in: Option<String> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let closing = upper
            .starts_with("EHLO")
            .then(|| behavior.lock().unwrap().ehlo_reply_then_close.take())
            .flatten();
        if let Some(reply) = closing {
            writer.write_all(format!("{reply}\r\n").as_bytes()).await?;
            return Ok(());
        }
        let reply: String = if upper.starts_with("EHLO") {
            let pipelining = if behavior.lock().unwrap().no_pipelining {
                ""
            } else {
                "250-PIPELINING\r\n"
            };
            let offer = if starttls.is_some() {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            let auth = {
                let behavior = behavior.lock().unwrap();
                let mut mechanisms = String::new();
                if behavior.login.is_some() {
                    mechanisms.push_str(" PLAIN LOGIN");
                }
                if behavior.xoauth2.is_some() {
                    mechanisms.push_str(" XOAUTH2");
                }
                if mechanisms.is_empty() {
                    String::new()
                } else {
                    format!("250-AUTH{mechanisms}\r\n")
                }
            };
            format!(
                "250-sink.test\r\n{pipelining}{offer}{auth}250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 100000000"
            )
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64ct::Encoding;
            let expected = behavior.lock().unwrap().login.clone();
            let given = base64ct::Base64::decode_vec(&text[11..]).unwrap_or_default();
            match expected {
                Some((user, password)) if given == format!("\0{user}\0{password}").into_bytes() => {
                    logged_in = Some(user);
                    "235 2.7.0 Authentication successful".into()
                }
                _ => "535 5.7.8 Authentication unsuccessful".into(),
            }
        } else if upper.starts_with("AUTH XOAUTH2 ") {
            use base64ct::Encoding;
            let given = base64ct::Base64::decode_vec(&text[13..]).unwrap_or_default();
            let given = String::from_utf8_lossy(&given).into_owned();
            let accepted = {
                let mut behavior = behavior.lock().unwrap();
                behavior.xoauth2_seen.push(given.clone());
                behavior.xoauth2.as_ref().and_then(|(user, tokens)| {
                    tokens
                        .iter()
                        .any(|token| given == xoauth2_string(user, token))
                        .then(|| user.clone())
                })
            };
            match accepted {
                Some(user) => {
                    logged_in = Some(user);
                    "235 2.7.0 Authentication successful".into()
                }
                None => {
                    // Exchange Online's answer to a token it does not take.
                    let challenge = base64ct::Base64::encode_string(
                        br#"{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}"#,
                    );
                    writer
                        .write_all(format!("334 {challenge}\r\n").as_bytes())
                        .await?;
                    line.clear();
                    if reader.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    let answer = String::from_utf8_lossy(&line).into_owned();
                    let empty = answer == "\r\n";
                    behavior.lock().unwrap().challenge_answers.push(answer);
                    if empty {
                        "535 5.7.3 Authentication unsuccessful".into()
                    } else {
                        "501 5.5.2 expected an empty line after the error challenge".into()
                    }
                }
            }
        } else if upper.starts_with("MAIL FROM:")
            && {
                let behavior = behavior.lock().unwrap();
                behavior.login.is_some() || behavior.xoauth2.is_some()
            }
            && logged_in.is_none()
        {
            "530 5.7.57 Client not authenticated to send mail".into()
        } else if let Some(acceptor) = starttls.as_ref().filter(|_| upper == "STARTTLS") {
            writer.write_all(b"220 2.0.0 go ahead\r\n").await?;
            let stream = reader.into_inner().unsplit(writer);
            let stream = acceptor.clone().accept(stream).await?;
            return sink_session(Box::new(stream), shared, None, true, false).await;
        } else if let Some(reply) = upper
            .starts_with("MAIL FROM:")
            .then(|| behavior.lock().unwrap().mail_reply_then_close.take())
            .flatten()
        {
            writer.write_all(format!("{reply}\r\n").as_bytes()).await?;
            return Ok(());
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = text[10..].to_string();
            recipients.clear();
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let address = text[8..]
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string();
            let custom = {
                let mut behavior = behavior.lock().unwrap();
                let custom = behavior.rcpt_replies.get(&address).cloned();
                behavior.rcpt_refused += usize::from(custom.is_some());
                custom
            };
            match custom {
                Some(reply) => reply,
                None => {
                    recipients.push(address);
                    "250 2.1.5 ok".into()
                }
            }
        } else if upper == "DATA" {
            if recipients.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                writer.write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                let drop_now = {
                    let mut behavior = behavior.lock().unwrap();
                    let drop_now = behavior.drop_during_data > 0;
                    behavior.drop_during_data = behavior.drop_during_data.saturating_sub(1);
                    drop_now
                };
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if drop_now {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    let content = if line.starts_with(b".") {
                        &line[1..]
                    } else {
                        &line[..]
                    };
                    data.extend_from_slice(content);
                }
                *data_attempts.lock().unwrap() += 1;
                let custom = behavior.lock().unwrap().data_replies.pop_front();
                match custom {
                    Some(reply) => reply,
                    None => {
                        received.lock().unwrap().push(Received {
                            mail_from: mail_from.clone(),
                            recipients: std::mem::take(&mut recipients),
                            data,
                            at: std::time::Instant::now(),
                            tls,
                            login: logged_in.clone(),
                        });
                        let delay = behavior.lock().unwrap().data_reply_delay;
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        "250 2.0.0 queued".into()
                    }
                }
            }
        } else if upper == "RSET" {
            recipients.clear();
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            writer.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper == "NOOP" {
            "250 2.0.0 ok".into()
        } else {
            "502 5.5.1 unknown".into()
        };
        writer.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

/// Most arrivals in any window of `window` starting at an arrival.
pub fn most_in_window(times: &[std::time::Instant], window: Duration) -> usize {
    (0..times.len())
        .map(|start| {
            times[start..]
                .iter()
                .take_while(|at| **at - times[start] < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Strips our Received: header from a relayed message, asserting it is there.
pub fn without_trace(data: &[u8]) -> &[u8] {
    assert!(
        data.starts_with(b"Received: from "),
        "no trace header: {:?}",
        String::from_utf8_lossy(&data[..data.len().min(80)])
    );
    let mut offset = 0;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if offset > 0 && !line.starts_with(b"\t") {
            break;
        }
        offset += line.len();
    }
    &data[offset..]
}
