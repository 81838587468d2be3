//! OAuth 2.0 for XOAUTH2 towards the gateway: the XOAUTH2 string the sink
//! checks, and a token endpoint over HTTPS.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::TestCertificate;

/// The XOAUTH2 initial response (before base64) for `user` and `token`.
pub fn xoauth2_string(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
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
/// It serves until the test's runtime ends.
pub struct TokenEndpoint {
    /// The token URL, `https://localhost:PORT/tenant/oauth2/v2.0/token`.
    pub url: String,
    pub requests: Arc<Mutex<Vec<TokenRequest>>>,
    /// (status, JSON body) answers used up one per request.
    pub answers: Arc<Mutex<VecDeque<(u16, String)>>>,
    pub lifetime: Arc<Mutex<u64>>,
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
        {
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
            });
        }
        TokenEndpoint {
            url,
            requests,
            answers,
            lifetime,
        }
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
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
fn percent_decode(text: &str) -> String {
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
