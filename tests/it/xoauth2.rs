//! AUTH XOAUTH2 towards the gateway over loopback: a sink that checks the
//! exact XOAUTH2 string and answers a refused token like Exchange Online
//! (334 error challenge, then 535), a token file an outside agent replaces,
//! and an HTTPS token endpoint (rcgen certificate, trusted through
//! `oauth_ca_file`) for the client-credentials grant: a 535 fetches a new
//! token once, an expiring token is replaced, and neither a token nor the
//! client secret ever shows in the log.

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use smtp_shaper::config::{
    AuthMechanism, ClientCredentials, Config, EXCHANGE_ONLINE_SCOPE, GatewayAuth, HttpsUrl,
    TokenSource,
};
use smtp_shaper::outbound::client::Credentials;
use tracing::dispatcher::DefaultGuard;

use crate::support::{
    Client, Sink, TestCertificate, TokenEndpoint, eventually, start, test_config, xoauth2_string,
};

const USER: &str = "app@example.com";
/// The client secret: it must never appear in the log.
const CLIENT_SECRET: &str = "cl1ent-s3cret-Kx9&=+";

/// Everything logged, at every level, by the tests that run through
/// [`logged`].
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

/// The subscriber writing into [`captured`]. Not the global one: the
/// other areas' tests run in this process too, and they neither log into
/// it nor find a global subscriber set.
fn capture() -> &'static tracing::Dispatch {
    static CAPTURE: OnceLock<tracing::Dispatch> = OnceLock::new();
    static COMPANION: OnceLock<tracing::Dispatch> = OnceLock::new();
    let capture = CAPTURE.get_or_init(|| {
        let log = captured().clone();
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || Capture(log.clone()))
                .finish(),
        )
    });
    // With one dispatcher registered, tracing-core settles a callsite's
    // interest by asking the default of the thread that hits it first: a
    // callsite first hit by another area's test (no subscriber on its
    // threads) would be silent here for good. A second registered
    // dispatcher makes it ask every registered one, this capture included.
    COMPANION.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    capture
}

thread_local! {
    /// Makes [`capture`] the default on a thread of [`logged`]'s runtime.
    static CAPTURING: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

/// Runs `test` as `#[tokio::test(flavor = "multi_thread", worker_threads =
/// 2)]` does, with [`capture`] the subscriber of every thread of its
/// runtime (this one, the workers, the blocking pool): whatever the
/// service does for the test is logged into [`captured`]. (The spool's
/// writer thread is its own; it logs nothing but spool write errors.)
fn logged(test: impl Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| CAPTURING.set(Some(tracing::dispatcher::set_default(capture()))))
        .on_thread_stop(|| CAPTURING.set(None))
        .build()
        .expect("a runtime");
    tracing::dispatcher::with_default(capture(), || runtime.block_on(test));
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&captured().lock().unwrap()).into_owned()
}

/// Neither `secrets` nor their XOAUTH2 strings (plain or base64) are in
/// the log.
fn assert_not_logged(secrets: &[&str]) {
    use base64ct::Encoding;
    let log = log_text();
    for secret in secrets {
        let xoauth2 = base64ct::Base64::encode_string(xoauth2_string(USER, secret).as_bytes());
        for form in [secret.to_string(), xoauth2] {
            assert!(!log.contains(&form), "{form:?} is in the log:\n{log}");
        }
    }
}

/// The test configuration with an XOAUTH2 login from `source`; a
/// connection is not kept past 100 ms idle, so a message after a pause
/// logs in anew.
fn xoauth2_config(spool: &Path, sink: &Sink, source: TokenSource) -> Config {
    let mut config = test_config(spool, sink.address);
    let gateway = &mut config.gateways[0];
    gateway.auth = Some(GatewayAuth {
        user: USER.into(),
        mechanism: AuthMechanism::XOAuth2(source),
    });
    gateway.idle_connection_timeout = Duration::from_millis(100);
    config
}

fn grant(dir: &Path, endpoint: &TokenEndpoint, certificate: &TestCertificate) -> TokenSource {
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    TokenSource::ClientCredentials(ClientCredentials {
        token_url: HttpsUrl::parse(&endpoint.url).unwrap(),
        client_id: "11111111-2222-3333-4444-555555555555".into(),
        client_secret_file: secret_file,
        scope: EXCHANGE_ONLINE_SCOPE.into(),
        ca_file: Some(certificate.certificate.clone()),
    })
}

fn accept_tokens(sink: &Sink, tokens: &[&str]) {
    sink.behavior.lock().unwrap().xoauth2 = Some((
        USER.into(),
        tokens.iter().map(|token| token.to_string()).collect(),
    ));
}

fn seen(sink: &Sink) -> Vec<String> {
    sink.behavior.lock().unwrap().xoauth2_seen.clone()
}

async fn send(service: &smtp_shaper::Service, subject: &str) {
    let mut client = Client::ready(service.smtp_address()).await;
    client
        .accepted(
            USER,
            &["rcpt@example.org"],
            format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
        )
        .await;
}

#[test]
fn a_replaced_token_file_is_used_from_the_next_connection() {
    logged(async {
        let sink = Sink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "file-t0ken-one\n").unwrap();
        accept_tokens(&sink, &["file-t0ken-one"]);
        let config = xoauth2_config(
            &dir.path().join("spool"),
            &sink,
            TokenSource::File(token_file.clone()),
        );
        let service = start(config).await;

        send(&service, "1").await;
        eventually("the first delivered", || sink.count() == 1).await;
        assert_eq!(
            seen(&sink),
            vec![xoauth2_string(USER, "file-t0ken-one")],
            "the exact XOAUTH2 string"
        );
        assert_eq!(sink.messages()[0].login.as_deref(), Some(USER));

        // The agent replaces the token (same length: the content decides, not
        // the size), and the gateway takes only the new one.
        std::fs::write(&token_file, "file-t0ken-two\n").unwrap();
        accept_tokens(&sink, &["file-t0ken-two"]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        send(&service, "2").await;
        eventually("the second delivered", || sink.count() == 2).await;
        assert_eq!(
            seen(&sink),
            vec![
                xoauth2_string(USER, "file-t0ken-one"),
                xoauth2_string(USER, "file-t0ken-two")
            ],
            "the new token at the first try, no refused login"
        );
        service.shutdown().await;
        assert_not_logged(&["file-t0ken-one", "file-t0ken-two"]);
    });
}

#[test]
fn a_refused_token_is_renewed_once_then_the_login_fails() {
    logged(async {
        let certificate = TestCertificate::new();
        let endpoint = TokenEndpoint::start(&certificate).await;
        let sink = Sink::start().await;
        let dir = tempfile::tempdir().unwrap();
        // The gateway takes only the second token the endpoint hands out.
        accept_tokens(&sink, &["at-2-Zq8v"]);
        let mut config = xoauth2_config(
            &dir.path().join("spool"),
            &sink,
            grant(dir.path(), &endpoint, &certificate),
        );
        // After a failed login the gateway rests long enough to count logins.
        config.gateways[0].retry_initial = Duration::from_secs(30);
        config.gateways[0].retry_max = Duration::from_secs(30);
        let service = start(config).await;

        send(&service, "1").await;
        eventually("delivered with the renewed token", || sink.count() == 1).await;
        assert_eq!(
            seen(&sink),
            vec![
                xoauth2_string(USER, "at-1-Zq8v"),
                xoauth2_string(USER, "at-2-Zq8v")
            ]
        );
        assert_eq!(
            sink.behavior.lock().unwrap().challenge_answers,
            vec!["\r\n".to_string()],
            "the error challenge is answered with an empty line"
        );
        let requests = endpoint.requests();
        assert_eq!(requests.len(), 2);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/tenant/oauth2/v2.0/token");
        assert_eq!(
            request.headers.get("content-type").map(String::as_str),
            Some("application/x-www-form-urlencoded")
        );
        let field = |name: &str| request.form.get(name).map(String::as_str);
        assert_eq!(field("grant_type"), Some("client_credentials"));
        assert_eq!(
            field("client_id"),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(field("client_secret"), Some(CLIENT_SECRET), "form-encoded");
        assert_eq!(field("scope"), Some(EXCHANGE_ONLINE_SCOPE));

        // Now the gateway takes no token: the cached one is refused, one new
        // one is fetched and refused too, and the login fails (the message
        // stays queued, nothing is bounced).
        accept_tokens(&sink, &[]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        send(&service, "2").await;
        eventually("two refused logins", || seen(&sink).len() == 4).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            seen(&sink)[2..],
            [
                xoauth2_string(USER, "at-2-Zq8v"),
                xoauth2_string(USER, "at-3-Zq8v")
            ]
        );
        assert_eq!(endpoint.count(), 3, "one renewal per attempt");
        assert_eq!(sink.count(), 1);
        assert_eq!(service.queued("primary"), 1, "held for a retry");
        let log = log_text();
        assert!(
            log.contains("gateway refused our XOAUTH2 login as app@example.com: 535 5.7.3"),
            "{log}"
        );
        assert!(
            log.contains("\"schemes\":\"bearer\""),
            "the challenge, decoded"
        );
        service.shutdown().await;
        assert_not_logged(&["at-1-Zq8v", "at-2-Zq8v", "at-3-Zq8v", CLIENT_SECRET]);
    });
}

#[test]
fn a_token_is_replaced_before_it_expires_and_endpoint_errors_are_retried() {
    logged(async {
        let certificate = TestCertificate::new();
        let endpoint = TokenEndpoint::start(&certificate).await;
        // Four seconds: replaced two seconds after it was issued.
        *endpoint.lifetime.lock().unwrap() = 4;
        // The first request is refused, quoting the secret back (a careless
        // endpoint): the error is logged without it, and the retry gets a token.
        endpoint.answers.lock().unwrap().push_back((
            401,
            format!(
                r#"{{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided: {CLIENT_SECRET}\r\nTrace ID: 0"}}"#
            ),
        ));
        let sink = Sink::start().await;
        accept_tokens(&sink, &["at-2-Zq8v", "at-3-Zq8v"]);
        let dir = tempfile::tempdir().unwrap();
        let config = xoauth2_config(
            &dir.path().join("spool"),
            &sink,
            grant(dir.path(), &endpoint, &certificate),
        );
        let service = start(config).await;

        send(&service, "1").await;
        eventually("delivered after the endpoint's refusal", || {
            sink.count() == 1
        })
        .await;
        assert_eq!(endpoint.count(), 2);
        let log = log_text();
        assert!(
            log.contains("refused the request (401 invalid_client: AADSTS7000215: Invalid client secret provided: (redacted))"),
            "{log}"
        );

        // Within the token's life: no new request, on a new connection too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&service, "2").await;
        eventually("the second delivered", || sink.count() == 2).await;
        assert_eq!(endpoint.count(), 2, "the cached token");

        // Past its refresh point: a new token before the gateway sees the old.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        send(&service, "3").await;
        eventually("the third delivered", || sink.count() == 3).await;
        assert_eq!(endpoint.count(), 3);
        assert_eq!(
            seen(&sink).last().unwrap(),
            &xoauth2_string(USER, "at-3-Zq8v")
        );
        assert!(
            sink.behavior.lock().unwrap().challenge_answers.is_empty(),
            "no token was refused"
        );
        service.shutdown().await;
        assert_not_logged(&["at-2-Zq8v", "at-3-Zq8v", CLIENT_SECRET]);
    });
}

#[tokio::test]
async fn credentials_debug_output_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-t0ken-one\n").unwrap();
    let certificate = TestCertificate::new();
    let endpoint = TokenEndpoint::start(&certificate).await;
    let sink = Sink::start().await;
    for source in [
        TokenSource::File(token_file),
        grant(dir.path(), &endpoint, &certificate),
    ] {
        let config = xoauth2_config(dir.path(), &sink, source);
        let credentials = Credentials::load(&config.gateways[0]).unwrap().unwrap();
        let debug = format!("{credentials:?} {:?}", config.gateways[0]);
        assert!(debug.contains(USER), "{debug}");
        for secret in ["file-t0ken-one", CLIENT_SECRET] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}

/// A password login Exchange Online no longer takes says what to do.
#[tokio::test]
async fn a_basic_auth_refusal_points_to_xoauth2() {
    use smtp_shaper::outbound::client::{Connection, Login};
    use smtp_shaper::tls::client::Upstream;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        writer.write_all(b"220 exchange.test\r\n").await.unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
            let reply: &[u8] = if line.starts_with("EHLO") {
                b"250-exchange.test\r\n250 AUTH PLAIN LOGIN XOAUTH2\r\n"
            } else if line.starts_with("AUTH PLAIN") {
                b"535 5.7.139 Authentication unsuccessful, basic authentication is disabled.\r\n"
            } else {
                b"221 bye\r\n"
            };
            writer.write_all(reply).await.unwrap();
            line.clear();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), address);
    let credentials = Credentials {
        user: USER.into(),
        secret: Login::Password("pa55word".into()),
        loopback: true,
    };
    let Err(error) = Connection::open(
        &address.to_string(),
        "shaper.test",
        &Upstream::for_gateway(&config.gateways[0]).unwrap(),
        Some(&credentials),
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await
    else {
        panic!("the login must fail");
    };
    assert!(
        error
            .to_string()
            .contains("535 5.7.139 Authentication unsuccessful, basic authentication is disabled. (Exchange Online no longer takes a password here: use auth_mechanism = \"xoauth2\")"),
        "{error}"
    );
    assert_eq!(error.refusal.map(|reply| reply.code), Some(535));
    assert!(!format!("{credentials:?}").contains("pa55word"));
}
