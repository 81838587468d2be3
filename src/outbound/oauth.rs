//! Bearer tokens for the gateway login `AUTH XOAUTH2` (Exchange Online
//! after Basic authentication): from a file an outside agent keeps fresh,
//! or from an OAuth 2.0 token endpoint with the client-credentials grant
//! (RFC 6749 section 4.4, as Microsoft Entra ID serves it).
//!
//! - A token file is read again for every new connection (a login happens
//!   once per connection), so a token the agent replaced is used from the
//!   next connection on, whatever the file's mtime says.
//! - A granted token is cached until [`refresh_margin`] before it expires,
//!   then fetched again. One request at a time per gateway: workers that
//!   need a token meanwhile wait and share the answer.
//! - After the gateway refuses a token (535), [`TokenProvider::renew`]
//!   gives a different one if there is one (a new grant, a changed file);
//!   the client tries once more with it, then fails as any refused login.
//!
//! Invariant: the token and the client secret never reach a log line, an
//! error message or `Debug` output; [`Secret`] has no `Display`, and errors
//! quoting the endpoint's answer have the secrets blotted out.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;

use crate::config::{ClientCredentials, HttpsUrl, TokenSource, read_first_line};
use crate::telemetry::client::encode;
use crate::tls::client::verifying;

/// The longest a token request may take once connected (TLS, request,
/// answer); a worker waiting for a login must not hang on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest token answer taken (Entra's is about 2 KiB).
const MAX_ANSWER: usize = 64 << 10;

/// The lifetime assumed when the endpoint leaves out `expires_in`
/// (RFC 6749 only recommends it): Entra ID's usual hour.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3_600);

/// A token or client secret: compared and sent, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    fn new(text: &str) -> Secret {
        Secret(Arc::from(text))
    }

    /// The secret itself, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// How long before its expiry a granted token is replaced: five minutes,
/// or half the lifetime of a short-lived one. The token must outlive the
/// login it is fetched for, and the clocks of the endpoint and the gateway
/// may differ a little.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(300))
}

/// Where one gateway's tokens come from, with the current one.
pub struct TokenProvider {
    source: Source,
    current: tokio::sync::Mutex<Option<Cached>>,
}

enum Source {
    File(PathBuf),
    Grant(Box<Grant>),
}

/// The client-credentials grant, ready to be asked.
struct Grant {
    url: HttpsUrl,
    client_id: String,
    secret_file: PathBuf,
    scope: String,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    connect_timeout: Duration,
}

struct Cached {
    token: Secret,
    /// When a granted token is to be replaced; `None` for a token file,
    /// which is read again every time anyway.
    refresh_at: Option<Instant>,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::File(path) => f
                .debug_struct("TokenProvider")
                .field("oauth_token_file", path)
                .finish_non_exhaustive(),
            Source::Grant(grant) => f
                .debug_struct("TokenProvider")
                .field("oauth_token_url", &grant.url.to_string())
                .field("oauth_client_id", &grant.client_id)
                .field("oauth_client_secret_file", &grant.secret_file)
                .field("oauth_scope", &grant.scope)
                .finish_non_exhaustive(),
        }
    }
}

impl TokenProvider {
    /// Checks what can be checked before the first login (the token file
    /// or the client secret file is readable and not empty, the CA file
    /// loads), so a broken setting fails the start or the reload, not the
    /// first delivery. Asks no endpoint: a start must not depend on the
    /// identity platform being up.
    pub fn load(source: &TokenSource, connect_timeout: Duration) -> io::Result<TokenProvider> {
        let source = match source {
            TokenSource::File(path) => {
                read_first_line(path, "oauth_token_file")?;
                Source::File(path.clone())
            }
            TokenSource::ClientCredentials(ClientCredentials {
                token_url,
                client_id,
                client_secret_file,
                scope,
                ca_file,
            }) => {
                read_first_line(client_secret_file, "oauth_client_secret_file")?;
                let tls = verifying(ca_file.as_deref()).map_err(|error| {
                    io::Error::new(error.kind(), format!("oauth_ca_file: {error}"))
                })?;
                let server_name = ServerName::try_from(token_url.host.clone()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "oauth_token_url: {:?} is not a name TLS can verify",
                            token_url.host
                        ),
                    )
                })?;
                Source::Grant(Box::new(Grant {
                    url: token_url.clone(),
                    client_id: client_id.clone(),
                    secret_file: client_secret_file.clone(),
                    scope: scope.clone(),
                    tls,
                    server_name,
                    connect_timeout,
                }))
            }
        };
        Ok(TokenProvider {
            source,
            current: tokio::sync::Mutex::new(None),
        })
    }

    /// The token to log in with now (see the module notes).
    pub async fn token(&self) -> io::Result<Secret> {
        let mut current = self.current.lock().await;
        match &self.source {
            Source::File(path) => Ok(read_token_file(path, &mut current)?),
            Source::Grant(grant) => {
                if let Some(cached) = current.as_ref()
                    && cached.refresh_at.is_some_and(|at| Instant::now() < at)
                {
                    return Ok(cached.token.clone());
                }
                let fresh = grant.fetch().await?;
                Ok(current.insert(fresh).token.clone())
            }
        }
    }

    /// A token other than `rejected`, which the gateway just refused, or
    /// `None` when there is no other (the file still holds it, or the
    /// endpoint handed out the same one again).
    pub async fn renew(&self, rejected: &Secret) -> io::Result<Option<Secret>> {
        let mut current = self.current.lock().await;
        let token = match &self.source {
            Source::File(path) => read_token_file(path, &mut current)?,
            Source::Grant(grant) => match current.as_ref() {
                // Another connection renewed it meanwhile: take that one.
                Some(cached)
                    if cached.token != *rejected
                        && cached.refresh_at.is_some_and(|at| Instant::now() < at) =>
                {
                    cached.token.clone()
                }
                _ => {
                    *current = None;
                    let fresh = grant.fetch().await?;
                    current.insert(fresh).token.clone()
                }
            },
        };
        if token == *rejected {
            tracing::warn!(
                source = ?self,
                "no other OAuth token to offer than the one the gateway refused (Exchange Online: check that the app has SMTP.SendAsApp with admin consent, that its service principal is registered in Exchange and may send as auth_user)"
            );
            return Ok(None);
        }
        Ok(Some(token))
    }
}

/// Reads the token file into `current`, noting (without the token) when
/// it changed since the last read.
fn read_token_file(path: &Path, current: &mut Option<Cached>) -> io::Result<Secret> {
    let token = Secret::new(&read_first_line(path, "oauth_token_file")?);
    if let Some(previous) = current.as_ref()
        && previous.token != token
    {
        tracing::info!(file = %path.display(), "the OAuth token file holds a new token; logging in with it");
    }
    *current = Some(Cached {
        token: token.clone(),
        refresh_at: None,
    });
    Ok(token)
}

impl Grant {
    /// Asks the endpoint for a token (the client secret read afresh, so a
    /// rotated one is used at once).
    async fn fetch(&self) -> io::Result<Cached> {
        let secret = Secret::new(&read_first_line(
            &self.secret_file,
            "oauth_client_secret_file",
        )?);
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
            encode(&self.client_id),
            encode(secret.expose()),
            encode(&self.scope),
        );
        let (status, body) = self.post(form).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("token request to {} failed: {error}", self.url),
            )
        })?;
        let (token, lifetime) = read_answer(status, &body).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "token endpoint {}: {}",
                    self.url,
                    blot(&error.to_string(), &secret)
                ),
            )
        })?;
        tracing::info!(
            url = %self.url,
            client_id = %self.client_id,
            expires_in = lifetime.as_secs(),
            "OAuth token obtained for the gateway login"
        );
        Ok(Cached {
            token,
            refresh_at: Some(Instant::now() + lifetime - refresh_margin(lifetime)),
        })
    }

    /// POSTs `form` over verified TLS; the status and the body.
    async fn post(&self, form: String) -> io::Result<(u16, String)> {
        let address = (self.url.host.as_str(), self.url.port);
        let tcp = timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = tcp.set_nodelay(true);
        timeout(ANSWER_TIMEOUT, async {
            let stream = TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(invalid)?;
            // The connection is driven beside the request; it ends with the answer.
            let driver = tokio::spawn(connection);
            let host = if self.url.port == 443 {
                self.url.host.clone()
            } else {
                self.url.authority()
            };
            let request = Request::builder()
                .method(Method::POST)
                .uri(self.url.path.as_str())
                .header(HOST, host)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .body(Full::new(Bytes::from(form)))
                .map_err(invalid)?;
            let response = sender.send_request(request).await.map_err(invalid)?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?
                .to_bytes();
            driver.abort();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {}s", ANSWER_TIMEOUT.as_secs()),
            )
        })?
    }
}

fn invalid(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// The token and its lifetime from a token endpoint's answer (RFC 6749
/// section 5.1), or the endpoint's error (section 5.2) in words.
fn read_answer(status: u16, body: &str) -> io::Result<(Secret, Duration)> {
    let failed = |message: String| io::Error::new(io::ErrorKind::InvalidData, message);
    let json: serde_json::Value = serde_json::from_str(body)
        .map_err(|_| failed(format!("answered {status} without a JSON body")))?;
    let text = |name: &str| json.get(name).and_then(serde_json::Value::as_str);
    if status != 200 {
        // Entra's description starts with its AADSTS code and the reason;
        // the trace and correlation ids that follow are noise here.
        let description = text("error_description")
            .and_then(|description| description.lines().next())
            .unwrap_or("no description");
        return Err(failed(format!(
            "refused the request ({status} {}: {description})",
            text("error").unwrap_or("no error code")
        )));
    }
    let token = text("access_token")
        .filter(|token| !token.is_empty())
        .ok_or_else(|| failed("answered 200 without an access_token".into()))?;
    if let Some(kind) = text("token_type")
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(failed(format!(
            "gave a {kind:?} token; XOAUTH2 needs a Bearer token"
        )));
    }
    // A number per RFC 6749; Entra's v1 endpoint writes it as a string.
    let lifetime = match json.get("expires_in") {
        None => DEFAULT_LIFETIME,
        Some(value) => value
            .as_u64()
            .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
            .filter(|seconds| *seconds > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| failed(format!("answered an expires_in of {value}")))?,
    };
    Ok((Secret::new(token), lifetime))
}

/// `text` with every occurrence of `secret` blotted out, for an error that
/// quotes what the endpoint said.
fn blot(text: &str, secret: &Secret) -> String {
    text.replace(secret.expose(), "(redacted)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_per_rfc_6749() {
        let (token, lifetime) = read_answer(
            200,
            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0.a.b"}"#,
        )
        .unwrap();
        assert_eq!((token.expose(), lifetime.as_secs()), ("eyJ0.a.b", 3599));
        let (_, lifetime) = read_answer(
            200,
            r#"{"token_type":"bearer","expires_in":"3600","access_token":"t"}"#,
        )
        .unwrap();
        assert_eq!(lifetime.as_secs(), 3600, "Entra v1 writes a string");
        let (_, lifetime) = read_answer(200, r#"{"access_token":"t"}"#).unwrap();
        assert_eq!(lifetime, DEFAULT_LIFETIME);

        let refused = read_answer(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nCorrelation ID: 2"}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            refused,
            "refused the request (401 invalid_client: AADSTS7000215: Invalid client secret provided.)"
        );
        for (status, body, expected) in [
            (
                502,
                "<html>bad gateway</html>",
                "answered 502 without a JSON body",
            ),
            (200, r#"{"expires_in":10}"#, "without an access_token"),
            (
                200,
                r#"{"access_token":"t","token_type":"mac"}"#,
                "\"mac\" token",
            ),
            (
                200,
                r#"{"access_token":"t","expires_in":0}"#,
                "expires_in of 0",
            ),
        ] {
            let error = read_answer(status, body).unwrap_err().to_string();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn a_short_lived_token_is_replaced_at_half_its_life() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3599)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn secrets_never_show() {
        let secret = Secret::new("s3cr3t-value");
        assert_eq!(format!("{secret:?}"), "Secret(redacted)");
        assert_eq!(
            blot("AADSTS: client_secret s3cr3t-value is wrong", &secret),
            "AADSTS: client_secret (redacted) is wrong"
        );
    }

    #[tokio::test]
    async fn a_token_file_is_read_again_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        let tokens =
            TokenProvider::load(&TokenSource::File(path.clone()), Duration::from_secs(1)).unwrap();
        let first = tokens.token().await.unwrap();
        assert_eq!(first.expose(), "first-token");
        assert_eq!(tokens.renew(&first).await.unwrap(), None, "nothing new yet");
        // Same length and, within the file system's mtime resolution, the
        // same mtime: the content decides.
        std::fs::write(&path, "other-token\n").unwrap();
        assert_eq!(tokens.token().await.unwrap().expose(), "other-token");
        std::fs::write(&path, "third-token").unwrap();
        assert_eq!(
            tokens.renew(&first).await.unwrap().unwrap().expose(),
            "third-token"
        );
        let debug = format!("{tokens:?}");
        assert!(!debug.contains("third-token"), "{debug}");

        std::fs::write(&path, "\n").unwrap();
        let error = tokens.token().await.unwrap_err().to_string();
        assert!(error.ends_with("(oauth_token_file) is empty"), "{error}");
        std::fs::remove_file(&path).unwrap();
        let error = TokenProvider::load(&TokenSource::File(path), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(error.contains("(oauth_token_file)"), "{error}");
    }
}
