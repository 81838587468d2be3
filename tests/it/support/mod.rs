//! Test peers over real loopback TCP: an SMTP sink playing the gateway, a raw
//! SMTP client playing the application, and a harness that starts the service.
//!
//! The sink parses SMTP on its own (naively, line by line) rather than with
//! the crate's code, so a framing bug in the crate cannot hide itself.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_shaper::Service;
use smtp_shaper::config::Config;
use smtp_shaper::telemetry::client::{Answer, request};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

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
    /// Replies for the end of DATA, used up one per message, then 250.
    pub data_replies: VecDeque<String>,
    /// Close the connection in the middle of the next N message bodies.
    pub drop_during_data: usize,
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

/// The XOAUTH2 initial response (before base64) for `user` and `token`.
pub fn xoauth2_string(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
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

/// A sink's byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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
        writer.write_all(b"220 sink.test ESMTP\r\n").await?;
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
            let custom = behavior.lock().unwrap().rcpt_replies.get(&address).cloned();
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

/// A self-signed certificate for `localhost`, in files, for TLS tests.
pub struct TestCertificate {
    pub dir: tempfile::TempDir,
    pub certificate: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestCertificate {
    pub fn new() -> TestCertificate {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generate a certificate");
        let dir = tempfile::tempdir().unwrap();
        let certificate = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&certificate, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        TestCertificate {
            dir,
            certificate,
            key,
        }
    }

    /// A server-side acceptor with this certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        use rustls_pki_types::pem::PemObject;
        let chain =
            vec![rustls_pki_types::CertificateDer::from_pem_file(&self.certificate).unwrap()];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// A line-level client over TLS on `stream`, trusting this certificate
    /// for the name `localhost`.
    pub async fn talk(&self, stream: Box<dyn Io>) -> Talk {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = self
            .connector()
            .connect(name, stream)
            .await
            .expect("TLS handshake with smtp-shaper");
        Talk::new(stream)
    }

    /// A client-side connector that trusts this certificate.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_file(&self.certificate).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A request the token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    /// The form fields, decoded.
    pub form: HashMap<String, String>,
}

/// An OAuth 2.0 token endpoint over HTTPS on loopback (certificate for
/// `localhost`), parsing HTTP on its own like the sink parses SMTP. It
/// answers each request with a queued answer, else a new bearer token
/// `at-N-Zq8v` (N counting requests from 1) living `lifetime` seconds.
pub struct TokenEndpoint {
    /// The token URL, `https://localhost:PORT/tenant/oauth2/v2.0/token`.
    pub url: String,
    pub requests: Arc<Mutex<Vec<TokenRequest>>>,
    /// (status, JSON body) answers used up one per request.
    pub answers: Arc<Mutex<VecDeque<(u16, String)>>>,
    pub lifetime: Arc<Mutex<u64>>,
    task: JoinHandle<()>,
}

impl TokenEndpoint {
    pub async fn start(certificate: &TestCertificate) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/tenant/oauth2/v2.0/token",
            listener.local_addr().unwrap().port()
        );
        let acceptor = certificate.acceptor();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let lifetime = Arc::new(Mutex::new(3599));
        let task = {
            let (requests, answers, lifetime) =
                (requests.clone(), answers.clone(), lifetime.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, requests, answers, lifetime) = (
                        acceptor.clone(),
                        requests.clone(),
                        answers.clone(),
                        lifetime.clone(),
                    );
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = token_exchange(stream, requests, answers, lifetime).await;
                    });
                }
            })
        };
        TokenEndpoint {
            url,
            requests,
            answers,
            lifetime,
            task,
        }
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn token_exchange(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    answers: Arc<Mutex<VecDeque<(u16, String)>>>,
    lifetime: Arc<Mutex<u64>>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut request_line = String::new();
    stream.read_line(&mut request_line).await?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    let form = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (percent_decode(name), percent_decode(value)))
        .collect();
    let number = {
        let mut requests = requests.lock().unwrap();
        requests.push(TokenRequest {
            method,
            path,
            headers,
            form,
        });
        requests.len()
    };
    let (status, body) = answers.lock().unwrap().pop_front().unwrap_or_else(|| {
        (
            200,
            format!(
                r#"{{"token_type":"Bearer","expires_in":{},"ext_expires_in":3599,"access_token":"at-{number}-Zq8v"}}"#,
                lifetime.lock().unwrap()
            ),
        )
    });
    let answer = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// Decodes `%XX` escapes and `+` (a form's space).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A line-level SMTP client over any stream (plain or TLS), for the TLS
/// and AUTH tests: replies come back with every line's text.
pub struct Talk {
    stream: BufReader<Box<dyn Io>>,
}

impl Talk {
    pub fn new(stream: impl Io + 'static) -> Talk {
        Talk {
            stream: BufReader::new(Box::new(stream)),
        }
    }

    /// Reads one reply: its code and all its lines' texts.
    pub async fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(30), self.stream.read_line(&mut line))
                    .await
                    .expect("a reply within 30 s")
                    .expect("read");
            assert!(read > 0, "connection closed; lines so far: {lines:?}");
            let code = line[..3].parse().expect("a reply code");
            lines.push(line[4..].trim_end().to_string());
            if line.as_bytes()[3] != b'-' {
                return (code, lines);
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    pub async fn command(&mut self, line: &str) -> (u16, Vec<String>) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Hands the raw stream over for a TLS handshake (nothing buffered).
    pub fn into_inner(self) -> Box<dyn Io> {
        assert!(self.stream.buffer().is_empty(), "unread input before TLS");
        self.stream.into_inner()
    }
}

/// A raw SMTP client: sends exactly the bytes it is given.
pub struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

/// A reply as the client read it: the code and the last line's text.
#[derive(Debug, Clone)]
pub struct ClientReply {
    pub code: u16,
    pub text: String,
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(address: SocketAddr) -> (Client, ClientReply) {
        let stream = TcpStream::connect(address)
            .await
            .expect("connect to smtp-shaper");
        Client::greeted(stream).await
    }

    async fn greeted(stream: TcpStream) -> (Client, ClientReply) {
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = client.reply().await.expect("greeting");
        (client, greeting)
    }

    /// Like [`Client::connect`], from the local address `from` (another
    /// loopback address plays another client machine).
    pub async fn connect_from(
        from: std::net::IpAddr,
        address: SocketAddr,
    ) -> (Client, ClientReply) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind the client side");
        let stream = socket
            .connect(address)
            .await
            .expect("connect to smtp-shaper");
        Client::greeted(stream).await
    }

    /// Like [`Client::ready`], but None (no panic) when the server is down
    /// or goes away meanwhile.
    pub async fn try_ready(address: SocketAddr) -> Option<Client> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address))
            .await
            .ok()?
            .ok()?;
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(reader),
            writer,
        };
        (client.reply().await?.code == 220).then_some(())?;
        client.writer.write_all(b"EHLO app.test\r\n").await.ok()?;
        (client.reply().await?.code == 250).then_some(client)
    }

    /// Connects, says EHLO, expects 220 and 250.
    pub async fn ready(address: SocketAddr) -> Client {
        Client::said_ehlo(Client::connect(address).await).await
    }

    /// Like [`Client::ready`], from the local address `from`.
    pub async fn ready_from(from: std::net::IpAddr, address: SocketAddr) -> Client {
        Client::said_ehlo(Client::connect_from(from, address).await).await
    }

    async fn said_ehlo((mut client, greeting): (Client, ClientReply)) -> Client {
        assert_eq!(greeting.code, 220, "{greeting:?}");
        let ehlo = client.command("EHLO app.test").await;
        assert_eq!(ehlo.code, 250, "{ehlo:?}");
        client
    }

    /// The TCP connection back (for a TLS upgrade); nothing may be unread.
    pub fn into_stream(self) -> TcpStream {
        assert!(self.reader.buffer().is_empty(), "unread input");
        self.reader.into_inner().reunite(self.writer).unwrap()
    }

    /// Writes `bytes`; false when the connection is gone (no panic).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Reads one (possibly multi-line) reply; None when the server closed.
    pub async fn reply(&mut self) -> Option<ClientReply> {
        let mut line = String::new();
        loop {
            line.clear();
            let read =
                tokio::time::timeout(Duration::from_secs(60), self.reader.read_line(&mut line))
                    .await
                    .expect("reply within 60s")
                    .ok()?;
            if read == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(ClientReply {
                    code: line.get(..3)?.parse().ok()?,
                    text: line.get(4..).unwrap_or("").trim_end().to_string(),
                });
            }
        }
    }

    /// Reads one reply line into `line`; true when it was the reply's last.
    pub async fn reply_line(&mut self, line: &mut String) -> bool {
        self.reader
            .read_line(line)
            .await
            .expect("read a reply line");
        line.as_bytes().get(3) != Some(&b'-')
    }

    /// Reads `n` replies (to pipelined commands) and returns their codes.
    pub async fn reply_codes(&mut self, n: usize) -> Vec<u16> {
        let mut codes = Vec::with_capacity(n);
        for _ in 0..n {
            codes.push(self.reply().await.expect("a reply").code);
        }
        codes
    }

    /// Sends a command line (CRLF added) and reads the reply.
    pub async fn command(&mut self, line: &str) -> ClientReply {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.reply()
            .await
            .unwrap_or_else(|| panic!("connection closed after {line:?}"))
    }

    /// True when the server has closed the connection.
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(30), self.reader.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// One whole transaction that must be accepted; returns the queue id.
    pub async fn accepted(&mut self, from: &str, to: &[&str], body: &[u8]) -> String {
        let reply = self.send_message(from, to, body).await;
        assert_eq!(reply.code, 250, "{reply:?}");
        queue_id(&reply)
    }

    /// One transaction the service may defer at RCPT: returns the RCPT reply
    /// when it is not 250 (after RSET), else the reply to the end of DATA.
    pub async fn offer(&mut self, from: &str, to: &str, body: &[u8]) -> ClientReply {
        let mail = self.command(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(mail.code, 250, "MAIL: {mail:?}");
        let rcpt = self.command(&format!("RCPT TO:<{to}>")).await;
        if rcpt.code != 250 {
            assert_eq!(self.command("RSET").await.code, 250);
            return rcpt;
        }
        let reply = self.command("DATA").await;
        assert_eq!(reply.code, 354, "DATA: {reply:?}");
        self.send_raw(&stuff(body)).await;
        self.reply().await.expect("reply to end of DATA")
    }

    /// One whole transaction; `body` is sent dot-stuffed. Returns the final reply.
    pub async fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> ClientReply {
        let reply = self.command(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(reply.code, 250, "MAIL: {reply:?}");
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>")).await;
            assert_eq!(reply.code, 250, "RCPT: {reply:?}");
        }
        let reply = self.command("DATA").await;
        assert_eq!(reply.code, 354, "DATA: {reply:?}");
        self.send_raw(&stuff(body)).await;
        self.reply().await.expect("reply to end of DATA")
    }
}

/// Dot-stuffs a CRLF body and appends the terminator (the test's own copy).
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The queue id in a "250 2.0.0 Ok: queued as ID" reply.
pub fn queue_id(reply: &ClientReply) -> String {
    reply
        .text
        .rsplit(' ')
        .next()
        .unwrap_or_default()
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
pub fn shaping(lines: &str) -> smtp_shaper::config::ShapingConfig {
    let config = Config::parse(&format!(
        "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\n{lines}\n"
    ))
    .expect("valid shaping lines");
    config.gateways[0].shaping.clone()
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

/// One request to the HTTP endpoint at `address` (the admin API, /status,
/// /metrics), with the bearer `token` if given.
pub async fn fetch(address: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Answer {
    let (method, path, token) = (
        method.to_string(),
        path.to_string(),
        token.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || {
        request(address, &method, &path, "text/plain", token.as_deref())
    })
    .await
    .unwrap()
    .expect("the endpoint answers")
}

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

// ---- The real binary, for tests that kill it. ----

/// The binary running on its own config file.
pub struct Process {
    pub child: std::process::Child,
    pub address: SocketAddr,
}

pub fn write_config(dir: &Path, listen: SocketAddr, gateway: SocketAddr) -> std::path::PathBuf {
    write_config_with(dir, listen, gateway, "")
}

/// The test config with `shaping` lines added to its [gateways.shaping].
pub fn write_config_with(
    dir: &Path,
    listen: SocketAddr,
    gateway: SocketAddr,
    shaping: &str,
) -> std::path::PathBuf {
    let path = dir.join("smtp-shaper.toml");
    let toml = test_config_toml(&listen.to_string(), &dir.join("spool"), gateway).replace(
        "[gateways.shaping]",
        &format!("[gateways.shaping]\n{shaping}"),
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// Starts the binary on `config`; its warnings and errors are appended to
/// `smtp-shaper.log` beside the config file (to read when a test fails).
pub async fn spawn(config: &Path, address: SocketAddr) -> Process {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("smtp-shaper.log"))
        .expect("open the log file");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start smtp-shaper");
    let process = Process { child, address };
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("smtp-shaper did not start listening on {address}");
}

impl Process {
    /// SIGKILL: no chance to sync or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` on a loopback port, with no persistence (a restart is
/// an empty Redis: the case the nodes must rebuild from).
pub struct Redis {
    child: std::process::Child,
    pub port: u16,
}

impl Redis {
    pub fn start(port: u16) -> Option<Redis> {
        Redis::start_with(port, &["--port", &port.to_string()])
    }

    /// A server listening on `port` as `args` say (e.g. TLS only).
    pub fn start_with(port: u16, args: &[&str]) -> Option<Redis> {
        let child = std::process::Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(_) => {
                skip_without("redis-server", "apt-get install redis-server");
                return None;
            }
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Redis { child, port });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `redis-cli` (comes with redis-server) on this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A third-party tool a test needs is missing: says SKIPPED (with how to
/// install it), or fails under SMTP_SHAPER_REQUIRE_TOOLS=1 (CI).
pub fn skip_without(what: &str, install: &str) {
    assert!(
        std::env::var("SMTP_SHAPER_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "{what} is required (SMTP_SHAPER_REQUIRE_TOOLS=1) but missing: {install}"
    );
    eprintln!("SKIPPED: {what} is missing ({install})");
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

/// The value of the sample `series` (name and labels exactly as exposed)
/// in a /metrics text.
pub fn sample_in(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// The value of `series` in the /metrics of the endpoint at `http`.
pub async fn scrape(http: SocketAddr, series: &str) -> Option<f64> {
    sample_in(&fetch(http, "GET", "/metrics", None).await.body, series)
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
