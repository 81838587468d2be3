//! Configuration: the TOML schema, its defaults and its validation.
//!
//! The file is read section by section through [`reader::Section`], which
//! collects every problem (with its line, key path and the accepted values)
//! instead of stopping at the first, so `check-config` can list them all at
//! once. Unknown keys are errors: a misspelt limit silently falling back to
//! its default is the kind of surprise a mail relay must not have.

mod network;
mod reader;
mod restart;
mod sender;
pub mod units;

pub use network::Network;
pub use sender::SenderPattern;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reader::{Problems, Section};

/// The configuration used by `smtp-shaper run` without `--config`: loopback
/// only, a spool in the working directory, relaying to a gateway on port 25.
pub const EMBEDDED_DEFAULT: &str = include_str!("embedded-default.toml");

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    pub http: HttpConfig,
    pub gateways: Vec<GatewayConfig>,
    pub apps: Vec<AppConfig>,
    pub dkim: Vec<DkimConfig>,
    /// `None`: every node shapes alone (no `[cluster]` section).
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: the sidecars in front of the same gateways share one budget
/// per gateway in Redis (README "Cluster mode").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port/db` or `rediss://` (TLS), without a password.
    pub redis: String,
    /// This node's name among the others (default: the host name, which is
    /// the pod name in Kubernetes).
    pub node: String,
    /// Where the Redis password is read from (a file wins over the variable).
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// The CA (PEM) a `rediss://` server's certificate is checked against,
    /// instead of the system's roots (an internal CA).
    pub ca_file: Option<PathBuf>,
    /// Nodes assumed to share a gateway until the others' heartbeats are
    /// seen (a node that starts while Redis is down runs on this share).
    pub expected_nodes: u64,
    /// How long a call to Redis may take (a failed heartbeat, or three
    /// failed send decisions in a row, put the node on its share).
    pub timeout: Duration,
}

impl ClusterConfig {
    /// The Redis password, if one is configured.
    pub fn password(&self) -> std::io::Result<Option<String>> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                std::io::Error::new(
                    error.kind(),
                    format!(
                        "cannot read cluster.password_file {}: {error}",
                        path.display()
                    ),
                )
            })?;
            return Ok(Some(text.trim().to_string()));
        }
        match &self.password_env {
            Some(name) => std::env::var(name).map(Some).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("cluster.password_env: the environment variable {name} is not set"),
                )
            }),
            None => Ok(None),
        }
    }
}

/// This machine's host name (the pod name in Kubernetes).
fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|byte| *byte == 0).unwrap_or(0);
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if result == 0 && !name.is_empty() => name.to_string(),
        _ => "smtp-shaper".to_string(),
    }
}

/// One `[[dkim]]` entry: sign mail from `domain` with this key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    /// A PKCS#8 PEM private key, RSA (rsa-sha256) or Ed25519 (ed25519-sha256).
    pub key: PathBuf,
}

/// `[server]`: the listener applications send to.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    /// Concurrent connections from one client address.
    pub max_connections_per_client: usize,
    /// New connections from one client address.
    pub client_connection_rate: units::Allowance,
    /// Clients the two limits above do not apply to (the apps on the
    /// sidecar's own host are not attackers; AUTH failures still count).
    pub limit_exempt_networks: Vec<Network>,
    /// How long a client outside `limit_exempt_networks` waits for the
    /// greeting; one that talks meanwhile is an early talker (a spam bot
    /// that does not wait, what Postfix's postscreen calls PREGREET) and
    /// is refused. Zero: greet at once.
    pub pregreet_wait: Duration,
    /// Failed AUTH attempts from one client address (each costs an argon2
    /// run, so this bounds the CPU one client can take).
    pub client_auth_failures: units::Allowance,
    pub max_errors: u32,
    /// Commands that move no mail (NOOP, RSET, VRFY, HELP, EHLO/HELO again)
    /// since the last message before the session is closed.
    pub max_junk_commands: u32,
    /// Longest time one command line may take to arrive (a client trickling
    /// a byte at a time is cut off even though it is never silent).
    pub command_deadline: Duration,
    /// Longest time one message body may take to arrive.
    pub data_deadline: Duration,
    pub idle_timeout: Duration,
    pub data_timeout: Duration,
    pub shutdown_grace: Duration,
    pub allowed_networks: Vec<Network>,
    /// Threads running sessions and deliveries (the spool writer has its own).
    pub worker_threads: usize,
    /// `[server.tls]`: STARTTLS (and an implicit-TLS listener) when set.
    pub tls: Option<ServerTlsConfig>,
    /// MAIL needs a successful AUTH first.
    pub require_auth: bool,
    /// Offer AUTH without TLS when the listener is on loopback (a sidecar
    /// next to its app); otherwise AUTH is offered only under TLS.
    pub plaintext_auth_on_loopback: bool,
    /// `log_format = "text" | "json"`.
    pub log_format: LogFormat,
    /// The DNS server for the DMARC lookups of the alignment check
    /// (default: the system's, /etc/resolv.conf).
    pub dns_resolver: Option<SocketAddr>,
}

/// `[server.tls]`: the certificate applications see.
#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// An extra listener speaking TLS from the first byte (port 465 style).
    pub listen: Option<SocketAddr>,
}

/// A gateway's `tls` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayTls {
    /// Plain SMTP, never STARTTLS.
    None,
    /// STARTTLS when the gateway offers it, any certificate accepted.
    Opportunistic,
    /// STARTTLS with a verified certificate, or no delivery (retried later).
    Required,
    /// TLS from the first byte (port 465), verified.
    Implicit,
}

/// `[http]`: the operators' endpoint (metrics, health, status, queue admin).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `None` (`listen = ""`) turns the endpoint off.
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token the admin API requires. Without one
    /// the admin API answers loopback clients only.
    pub admin_token_file: Option<PathBuf>,
}

/// The shortest admin token accepted: a guessable one is no protection for
/// an API that deletes mail.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl HttpConfig {
    /// The admin bearer token from `admin_token_file` (surrounding whitespace
    /// trimmed), if one is configured. The service and the `queue` command
    /// both read it here, so a token one of them takes the other takes too.
    pub fn admin_token(&self) -> std::io::Result<Option<String>> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!(
                    "cannot read http.admin_token_file {}: {error}",
                    path.display()
                ),
            )
        })?;
        let token = token.trim();
        if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "http.admin_token_file {}: the token must be at least {MIN_ADMIN_TOKEN_LEN} characters",
                    path.display()
                ),
            ));
        }
        Ok(Some(token.to_string()))
    }
}

/// How log lines are written: for people, or one JSON object per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[spool]`: where accepted mail waits for delivery.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub segment_size: u64,
    /// Envelopes each gateway's queue keeps in memory; past it, new
    /// messages wait as a reference to their spool record (`outbound::queue`).
    pub active_limit: usize,
}

/// One `[[gateways]]` entry: an upstream SMTP server and how to talk to it.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub name: String,
    pub address: String,
    pub default: bool,
    pub senders: Vec<SenderPattern>,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// The wait for the gateway's reply to the end of a message (RFC 5321
    /// 4.5.3.2.6: 10 minutes); a timeout there is "outcome unknown".
    pub data_reply_timeout: Duration,
    pub idle_connection_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
    pub tls: GatewayTls,
    /// PEM roots to verify the gateway with (default: the system's).
    pub tls_ca_file: Option<PathBuf>,
    /// The name the certificate must carry (default: the address's host).
    pub tls_server_name: Option<String>,
    /// AUTH towards the gateway (e.g. a mailbox on Exchange Online).
    pub auth: Option<GatewayAuth>,
    /// Ask this gateway, at start and every so often, whether each sender
    /// address routed to it exists (relay rule 3).
    pub verify_senders: bool,
    pub verify_interval: Duration,
    /// The public IP this gateway sends from: when set, the SPF, DMARC and
    /// DKIM (`dkim_selectors`) of its sender domains are checked at start
    /// (relay rule 4).
    pub sending_ip: Option<std::net::IpAddr>,
    pub dkim_selectors: Vec<String>,
    /// How a message whose From: domain is not DMARC-aligned is treated.
    pub alignment: AlignmentMode,
    pub shaping: ShapingConfig,
}

/// The gateway login: who, and with what. The secrets themselves are never
/// in the configuration (nor in a log), only where to find them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAuth {
    pub user: String,
    pub mechanism: AuthMechanism,
}

/// `auth_mechanism`: how the relay proves `auth_user` to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMechanism {
    /// `"password"` (the default): AUTH PLAIN, or AUTH LOGIN when the
    /// gateway offers only that.
    Password(SecretSource),
    /// `"xoauth2"`: AUTH XOAUTH2 with an OAuth 2.0 bearer token, the way in
    /// to Exchange Online once Basic authentication is off.
    XOAuth2(TokenSource),
}

/// Where the XOAUTH2 bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `oauth_token_file`: kept fresh by an agent outside smtp-shaper; read
    /// again for every connection.
    File(PathBuf),
    /// `oauth_token_url` and friends: the client-credentials grant.
    ClientCredentials(ClientCredentials),
}

/// The OAuth 2.0 client-credentials grant (RFC 6749 section 4.4), as
/// Microsoft Entra ID serves it for an app registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub token_url: HttpsUrl,
    pub client_id: String,
    /// The client secret's file (its first line); read again for every
    /// token request, so a rotated secret is picked up.
    pub client_secret_file: PathBuf,
    pub scope: String,
    /// PEM roots to verify the token endpoint with (default: the system's).
    /// Separate from `tls_ca_file`: the identity platform is another
    /// service than the gateway, and a private gateway CA must not be the
    /// only root the token endpoint is checked against.
    pub ca_file: Option<PathBuf>,
}

/// The scope Exchange Online's SMTP AUTH tokens are asked for.
pub const EXCHANGE_ONLINE_SCOPE: &str = "https://outlook.office365.com/.default";

/// An `https://` URL, taken apart for a client that connects itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    /// The host name or IP address (without brackets around IPv6).
    pub host: String,
    pub port: u16,
    /// The path and query, starting with `/`.
    pub path: String,
}

impl HttpsUrl {
    /// Parses `https://host[:port][/path]`; anything else (another scheme,
    /// user info, a fragment, a bad host) is `None`. Only https: the
    /// request carries the client secret.
    pub fn parse(text: &str) -> Option<HttpsUrl> {
        let rest = text.strip_prefix("https://")?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.contains('@') || path.contains('#') || path.bytes().any(|b| b <= b' ') {
            return None;
        }
        let port_of = |text: &str| text.parse::<u16>().ok().filter(|port| *port > 0);
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner.split_once(']')?;
            host.parse::<std::net::Ipv6Addr>().ok()?;
            match after {
                "" => (host, 443),
                after => (host, port_of(after.strip_prefix(':')?)?),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, port_of(port)?),
                None => (authority, 443),
            }
        };
        if !(is_hostname(host) || host.parse::<std::net::IpAddr>().is_ok()) {
            return None;
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Some(HttpsUrl {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// `host:port` for the Host header and for connecting.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The value of this environment variable.
    Env(String),
    /// The first line of this file.
    File(PathBuf),
}

impl GatewayConfig {
    /// The host part of `address` (without brackets around an IPv6 literal).
    pub fn host(&self) -> &str {
        split_host_port(&self.address).map_or(self.address.as_str(), |(host, _)| host)
    }

    /// True when the gateway is on this machine (loopback or `localhost`).
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// A time scale of the volume rule, on which receivers judge a gateway
/// beyond the minute (see `shaper::volume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Horizon {
    Hour,
    Day,
}

impl Horizon {
    pub const ALL: [Horizon; 2] = [Horizon::Hour, Horizon::Day];

    /// The window's length in minutes.
    pub fn minutes(self) -> i64 {
        match self {
            Horizon::Hour => 60,
            Horizon::Day => 1_440,
        }
    }

    pub fn seconds(self) -> i64 {
        self.minutes() * 60
    }

    /// The `window` label of the volume metrics.
    pub fn label(self) -> &'static str {
        match self {
            Horizon::Hour => "1h",
            Horizon::Day => "24h",
        }
    }
}

/// `[gateways.shaping]`: how fast the gateway may send (see `shaper`).
/// Rates are messages per second.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapingConfig {
    /// The minute baseline assumed for a gateway with no history.
    pub initial_rate: f64,
    /// The history an operator vouches for, per [`Horizon`] (in
    /// `Horizon::ALL` order): units sent in the gateway's busiest window of
    /// that length recently (`initial_rate = ["60/min", "200/h", "2000/day"]`).
    pub initial_volume: [Option<u64>; 2],
    /// The minute floor of the ceiling.
    pub min_rate: f64,
    /// The allowance of each [`Horizon`] with no history; `None` leaves that
    /// horizon unbudgeted (a `min_rate` that names only the minute).
    pub min_volume: [Option<u64>; 2],
    pub max_rate: f64,
    pub headroom: f64,
    /// Growth factor per day.
    pub warmup: f64,
    pub burst: u32,
    pub max_queue_delay: Duration,
    pub max_queued: usize,
    pub limits: Vec<Limit>,
    pub count: CountUnit,
    pub backoff_factor: f64,
    pub backoff_pause: Duration,
    /// How long the ceiling takes to climb back to where it was before a
    /// throttling cut, once the gateway accepts again.
    pub backoff_recovery: Duration,
    /// Enforce the shaping, or observe it (see [`ShapingMode`]).
    pub mode: ShapingMode,
    /// Observe until the gateway's own history covers this span, then
    /// enforce by itself.
    pub observe_until: Option<Duration>,
    pub baseline_half_life: Duration,
    /// The period the file writes this gateway's rates in (that of the
    /// first of initial_rate, min_rate, max_rate given; else the defaults'
    /// `/min`): logs say rates the same way.
    pub rate_period: units::Period,
}

/// One hard cap, `count` units per `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub count: u64,
    pub window: Duration,
}

/// Whether the shaping holds mail, or only says what it would hold
/// (`mode = "observe"`: relayed at once, the would-be holds counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShapingMode {
    #[default]
    Enforce,
    Observe,
}

impl ShapingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShapingMode::Enforce => "enforce",
            ShapingMode::Observe => "observe",
        }
    }
}

/// What the hard caps count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountUnit {
    Messages,
    Recipients,
}

/// What kind of mail an app sends, for the volume budgets: bulk mail never
/// takes the room the transactional apps normally need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppClass {
    #[default]
    Transactional,
    Bulk,
}

impl AppClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AppClass::Transactional => "transactional",
            AppClass::Bulk => "bulk",
        }
    }
}

/// A gateway's `alignment`: what happens to a message whose From: domain
/// aligns (DMARC, RFC 7489 3.1) neither with the envelope sender's domain
/// nor with the domain smtp-shaper signs it with (see `policy::alignment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlignmentMode {
    /// Refused with 550 5.7.1.
    Enforce,
    /// Accepted, logged and counted.
    #[default]
    Warn,
    /// Not checked.
    Off,
}

/// A bulk app's `unsubscribe`: what happens to a message without one-click
/// unsubscribe (RFC 8058), which Gmail, Yahoo and Outlook.com require of
/// bulk senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnsubscribeMode {
    /// Refused with 550 5.7.1.
    Require,
    /// Accepted, logged and counted.
    #[default]
    Warn,
    /// Not checked.
    Off,
}

/// One `[[apps]]` entry: an application sending through the proxy, matched
/// by client network and/or sender domain, with its share of the queue.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub networks: Vec<Network>,
    pub senders: Vec<SenderPattern>,
    /// Messages per round-robin turn (1 to 100).
    pub priority: u32,
    pub class: AppClass,
    /// One-click unsubscribe on bulk mail (a bulk app's setting only).
    pub unsubscribe: UnsubscribeMode,
    /// Send the envelope sender a delivery status notification (RFC 3464)
    /// for each recipient dead-lettered. Off by default: app senders are
    /// often no-reply addresses nobody reads, and a report to one the
    /// gateway refuses is only more traffic on the apps' gateway; turn it
    /// on for apps whose sender mailbox is read or processed (bounce
    /// handling that removes dead addresses).
    pub dsn: bool,
    /// The AUTH user name that identifies this app, with its password's
    /// argon2 hash (a PHC string, `smtp-shaper hash-password` makes one).
    pub user: Option<String>,
    pub password_hash: Option<String>,
    /// The longest wait in the queue this app's new mail takes before it
    /// is deferred (451) instead; `None` takes the gateway's.
    pub max_queue_delay: Option<Duration>,
    /// How long this app's mail may stay queued, held or retried, before
    /// it is dead-lettered (and reported with `dsn`); `None` takes the
    /// gateway's `max_age` (5 days, Postfix's `maximal_queue_lifetime`).
    pub expire_after: Option<Duration>,
    /// Held this long without being sent, the sender gets one delivery
    /// status notification with `Action: delayed` (Postfix's
    /// `delay_warning_time`); `None` (the default): none.
    pub notify_delay: Option<Duration>,
}

/// Every problem found in a configuration, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for problem in &self.problems {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

const SOCKET_FORMS: &str = "an IP address and port, e.g. \"127.0.0.1:2525\" or \"[::1]:2525\"";
const HOST_PORT_FORMS: &str = "host:port, e.g. \"127.0.0.1:25\" or \"smtp.example.com:587\"";
const NETWORK_FORMS: &str = "a list of networks, e.g. [\"127.0.0.0/8\", \"::1/128\"]";
const SENDER_FORMS: &str = "a list of sender domains or addresses, e.g. [\"example.com\", \"*.example.org\", \"alerts@example.net\"]";
const NAME_FORMS: &str = "a short name made of letters, digits, '-' and '_'";
const LIMIT_FORMS: &str = "a list of caps, e.g. [\"30/min\", \"10000/day\"]";

impl Config {
    /// What is valid but will not work as the file seems to mean (said by
    /// `check-config` and at start-up; never a reason to refuse).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let server = &self.server;
        let auth_offered = server.tls.is_some()
            || (server.plaintext_auth_on_loopback && server.listen.ip().is_loopback());
        for app in self.apps.iter().filter(|app| app.user.is_some()) {
            if !auth_offered {
                warnings.push(format!(
                    "apps \"{}\" has a user, but the listener cannot offer AUTH (no [server.tls] for STARTTLS, and plaintext_auth_on_loopback is off or server.listen is not on loopback): it can never log in, and mail from its senders is refused with 530",
                    app.name
                ));
            }
        }
        warnings
    }

    /// Parses and validates TOML text, reporting every problem at once.
    ///
    /// ```
    /// use smtp_shaper::config::Config;
    ///
    /// let config = Config::parse(
    ///     "[[gateways]]\nname = \"primary\"\naddress = \"127.0.0.1:25\"\n",
    /// )
    /// .unwrap();
    /// assert_eq!(config.server.max_message_size, 25 << 20);
    ///
    /// let error = Config::parse("[server]\nidle_timeout = \"soon\"\n").unwrap_err();
    /// assert_eq!(error.problems.len(), 2); // the bad duration, and no gateway
    /// assert!(error.problems[0].starts_with("line 2: server.idle_timeout: \"soon\" is not valid"));
    /// ```
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let root: toml::Table = text.parse().map_err(|error: toml::de::Error| {
            let said = error.message().trim();
            // The parser's words for a number past i64 name a Rust type.
            let said = if said.starts_with("invalid type: integer") && said.contains("i128") {
                "a whole number too large (at most 9223372036854775807)"
            } else {
                said
            };
            let message = format!("not valid TOML: {said}");
            ConfigError {
                problems: vec![match error.span() {
                    Some(span) => {
                        let (line, column) = reader::position(text, span.start);
                        match reader::key_at(text, span.start) {
                            Some(key) => format!("line {line}, column {column}: {key}: {message}"),
                            None => format!("line {line}, column {column}: {message}"),
                        }
                    }
                    None => message,
                }],
            }
        })?;
        let mut problems = Problems::new(reader::Lines::of(text));
        let mut root = Section::new(String::new(), root, &mut problems);
        let server = root.section("server");
        let spool = root.section("spool");
        let http = root.section("http");
        let cluster = root.optional_section("cluster");
        let gateway_tables = root.array_of_sections("gateways");
        let app_tables = root.array_of_sections("apps");
        let dkim_tables = root.array_of_sections("dkim");
        root.finish();

        let server = read_server(Section::new("server".into(), server, &mut problems));
        let spool = read_spool(Section::new("spool".into(), spool, &mut problems));
        let http = read_http(Section::new("http".into(), http, &mut problems));
        let cluster =
            cluster.map(|table| read_cluster(Section::new("cluster".into(), table, &mut problems)));
        let gateways: Vec<GatewayConfig> = gateway_tables
            .into_iter()
            .enumerate()
            .map(|(index, table)| {
                read_gateway(Section::new(
                    format!("gateways[{index}]"),
                    table,
                    &mut problems,
                ))
            })
            .collect();
        check_gateways(&gateways, &mut problems);
        if cluster.is_some() {
            for (index, gateway) in gateways.iter().enumerate() {
                if gateway.shaping.mode == ShapingMode::Observe {
                    problems.push(
                        &format!("gateways[{index}].shaping.mode"),
                        "\"observe\" is not available in cluster mode yet (the shared state in Redis enforces the budgets for every node): observe from one node without [cluster], or enforce",
                    );
                }
            }
        }
        let apps: Vec<AppConfig> = app_tables
            .into_iter()
            .enumerate()
            .map(|(index, table)| {
                read_app(Section::new(format!("apps[{index}]"), table, &mut problems))
            })
            .collect();
        check_unique(
            "apps",
            "name",
            apps.iter().map(|app| app.name.as_str()),
            &mut problems,
        );
        check_unique(
            "apps",
            "user",
            apps.iter().map(|app| app.user.as_deref().unwrap_or("")),
            &mut problems,
        );
        if server.require_auth && apps.iter().all(|app| app.user.is_none()) {
            problems.push(
                "server.require_auth",
                "no [[apps]] entry has a user and password_hash, so nobody could log in",
            );
        }

        let dkim: Vec<DkimConfig> = dkim_tables
            .into_iter()
            .enumerate()
            .map(|(index, table)| {
                let mut s = Section::new(format!("dkim[{index}]"), table, &mut problems);
                let entry = DkimConfig {
                    domain: s.required("domain", "a domain, e.g. \"example.com\"", |v| {
                        is_hostname(v).then(|| v.to_ascii_lowercase())
                    }),
                    selector: s.required("selector", "a selector, e.g. \"s1\"", |v| {
                        is_hostname(v).then(|| v.to_string())
                    }),
                    key: s.required(
                        "key",
                        "a PKCS#8 PEM private key file, e.g. \"/etc/smtp-shaper/dkim/example.com.pem\"",
                        parse_path,
                    ),
                };
                s.finish();
                entry
            })
            .collect();

        problems.into_result(Config {
            server,
            spool,
            http,
            gateways,
            apps,
            dkim,
            cluster,
        })
    }

    /// The embedded default (see [`EMBEDDED_DEFAULT`]).
    pub fn embedded_default() -> Config {
        Config::parse(EMBEDDED_DEFAULT).expect("the embedded default configuration is valid")
    }

    /// Reads and validates a file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            problems: vec![format!("cannot read {}: {error}", path.display())],
        })?;
        Config::parse(&text)
    }
}

fn read_server(mut s: Section<'_>) -> ServerConfig {
    let server = ServerConfig {
        listen: s.parsed("listen", "127.0.0.1:2525", SOCKET_FORMS, |v| v.parse().ok()),
        hostname: s.parsed(
            "hostname",
            "smtp-shaper.local",
            "a host name, e.g. \"relay.example.com\"",
            |v| is_hostname(v).then(|| v.to_string()),
        ),
        max_message_size: s.parsed(
            "max_message_size",
            "25MiB",
            units::SIZE_FORMS,
            units::parse_size,
        ),
        max_recipients: s.integer("max_recipients", 100, 1, 100_000),
        max_connections: s.integer("max_connections", 200, 1, 100_000),
        max_connections_per_client: s.integer("max_connections_per_client", 50, 1, 100_000),
        client_connection_rate: s.parsed(
            "client_connection_rate",
            "6000/min",
            units::ALLOWANCE_FORMS,
            units::parse_allowance,
        ),
        limit_exempt_networks: s.list(
            "limit_exempt_networks",
            &["127.0.0.0/8", "::1/128"],
            NETWORK_FORMS,
            |v| v.parse().ok(),
        ),
        pregreet_wait: s.duration("pregreet_wait", "300ms"),
        client_auth_failures: s.parsed(
            "client_auth_failures",
            "10/min",
            units::ALLOWANCE_FORMS,
            units::parse_allowance,
        ),
        max_errors: s.integer("max_errors", 10, 1, 1_000),
        max_junk_commands: s.integer("max_junk_commands", 100, 1, 100_000),
        command_deadline: s.duration("command_deadline", "5m"),
        data_deadline: s.duration("data_deadline", "1h"),
        idle_timeout: s.duration("idle_timeout", "5m"),
        data_timeout: s.duration("data_timeout", "10m"),
        shutdown_grace: s.duration("shutdown_grace", "30s"),
        allowed_networks: s.list(
            "allowed_networks",
            &["127.0.0.0/8", "::1/128"],
            NETWORK_FORMS,
            |v| v.parse().ok(),
        ),
        worker_threads: s.integer("worker_threads", 1, 1, 256),
        tls: read_server_tls(s.subsection("tls")),
        require_auth: s.boolean("require_auth", false),
        plaintext_auth_on_loopback: s.boolean("plaintext_auth_on_loopback", false),
        log_format: s.parsed("log_format", "text", "\"text\" or \"json\"", |v| match v {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }),
        dns_resolver: s.optional("dns_resolver", SOCKET_FORMS, |v| v.parse().ok()),
    };
    if server.max_message_size < 1024 {
        s.problem("max_message_size", "must be at least 1KiB");
    }
    // Zero would cut every session after its first reply.
    for (key, value) in [
        ("idle_timeout", server.idle_timeout),
        ("command_deadline", server.command_deadline),
        ("data_timeout", server.data_timeout),
        ("data_deadline", server.data_deadline),
    ] {
        if value.is_zero() {
            s.problem(
                key,
                "must be longer than 0 (every session would be cut after its first reply)",
            );
        }
    }
    s.finish();
    server
}

fn read_server_tls(mut s: Section<'_>) -> Option<ServerTlsConfig> {
    if s.is_empty() {
        s.finish();
        return None;
    }
    let file = "a PEM file path, e.g. \"/etc/smtp-shaper/tls/cert.pem\"";
    let tls = ServerTlsConfig {
        certificate: s.required("certificate", file, parse_path),
        key: s.required("key", file, parse_path),
        listen: s.optional("listen", SOCKET_FORMS, |v| v.parse().ok()),
    };
    s.finish();
    Some(tls)
}

fn parse_path(text: &str) -> Option<PathBuf> {
    (!text.is_empty()).then(|| PathBuf::from(text))
}

fn read_http(mut s: Section<'_>) -> HttpConfig {
    // Left out: the documented default; "" turns the endpoint off.
    let listen = if s.has("listen") {
        s.optional("listen", SOCKET_FORMS, |v| v.parse().ok())
    } else {
        Some(SocketAddr::from(([127, 0, 0, 1], 9325)))
    };
    let http = HttpConfig {
        listen,
        admin_token_file: s.optional("admin_token_file", "a file path", parse_path),
    };
    s.finish();
    http
}

fn read_cluster(mut s: Section<'_>) -> ClusterConfig {
    let redis = s.required(
        "redis",
        "a Redis URL, e.g. \"redis://127.0.0.1:6379/0\" (\"rediss://\" for TLS)",
        |v| (v.starts_with("redis://") || v.starts_with("rediss://")).then(|| v.to_string()),
    );
    if redis.split_once("://").is_some_and(|(_, rest)| {
        rest.split('/')
            .next()
            .is_some_and(|host| host.contains('@'))
    }) {
        s.problem(
            "redis",
            "keep credentials out of the URL: set password_file or password_env",
        );
    }
    let node = s
        .optional("node", "a node name, e.g. \"pod-a\"", |v| {
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                .then(|| v.to_string())
        })
        .unwrap_or_else(host_name);
    let cluster = ClusterConfig {
        redis,
        node,
        password_file: s.optional("password_file", "a file path", parse_path),
        password_env: s.optional("password_env", "an environment variable name", |v| {
            Some(v.to_string())
        }),
        ca_file: s.optional("ca_file", "a PEM file path", parse_path),
        // No default: a node that starts while Redis is away runs on its
        // share, and only the operator knows how many share the gateway
        // (a default of 1 let two such nodes each send the whole rate).
        expected_nodes: s.integer("expected_nodes", 0, 1, 10_000),
        timeout: s.parsed(
            "timeout",
            "250ms",
            "a duration, e.g. \"250ms\"",
            units::parse_duration,
        ),
    };
    if cluster.expected_nodes == 0 {
        s.problem(
            "expected_nodes",
            "required; accepted: a whole number from 1 to 10000, the nodes (replicas) that share the gateways: a node that starts while Redis is out of reach sends 1/expected_nodes of the limits (or less, when it has seen more nodes lately)",
        );
    }
    if cluster.ca_file.is_some() && !cluster.redis.starts_with("rediss://") {
        s.problem("ca_file", "only a rediss:// (TLS) URL checks a certificate");
    }
    s.finish();
    cluster
}

fn read_spool(mut s: Section<'_>) -> SpoolConfig {
    let spool = SpoolConfig {
        dir: s.parsed("dir", "smtp-shaper-spool", "a directory path", |v| {
            (!v.is_empty()).then(|| PathBuf::from(v))
        }),
        segment_size: s.parsed(
            "segment_size",
            "64MiB",
            units::SIZE_FORMS,
            units::parse_size,
        ),
        active_limit: s.integer("active_limit", 10_000, 1, 10_000_000),
    };
    if spool.segment_size < 64 * 1024 {
        s.problem("segment_size", "must be at least 64KiB");
    }
    s.finish();
    spool
}

fn read_gateway(mut s: Section<'_>) -> GatewayConfig {
    // Read first: the shaping's max_queue_delay stays under it.
    let max_age = s.duration("max_age", "5d");
    let mut gateway = GatewayConfig {
        name: s.required("name", NAME_FORMS, parse_name),
        address: s.required("address", HOST_PORT_FORMS, |v| {
            is_host_port(v).then(|| v.to_string())
        }),
        default: s.boolean("default", false),
        senders: s.list("senders", &[], SENDER_FORMS, |v| v.parse().ok()),
        max_connections: s.integer("max_connections", 10, 1, 1_000),
        connect_timeout: s.duration("connect_timeout", "30s"),
        command_timeout: s.duration("command_timeout", "5m"),
        data_reply_timeout: s.duration("data_reply_timeout", "10m"),
        idle_connection_timeout: s.duration("idle_connection_timeout", "30s"),
        retry_initial: s.duration("retry_initial", "1m"),
        retry_max: s.duration("retry_max", "1h"),
        max_age,
        tls: s.parsed("tls", "opportunistic", GATEWAY_TLS_FORMS, parse_gateway_tls),
        tls_ca_file: s.optional("tls_ca_file", "a PEM file path", parse_path),
        tls_server_name: s.optional(
            "tls_server_name",
            "a host name, e.g. \"smtp.example.com\"",
            |v| is_hostname(v).then(|| v.to_string()),
        ),
        auth: None,
        verify_senders: s.boolean("verify_senders", false),
        sending_ip: s.optional("sending_ip", "an IP address, e.g. \"192.0.2.25\"", |v| {
            v.parse().ok()
        }),
        dkim_selectors: s.list(
            "dkim_selectors",
            &[],
            "a list of DKIM selectors, e.g. [\"s1\"]",
            |v| is_hostname(v).then(|| v.to_string()),
        ),
        verify_interval: s.duration("verify_interval", "1h"),
        alignment: s.parsed("alignment", "warn", ALIGNMENT_FORMS, parse_alignment),
        shaping: read_shaping(s.subsection("shaping"), max_age),
    };
    // Read after `shaping`: an unknown key's message lists the accepted
    // keys in the order they are read.
    gateway.auth = read_gateway_auth(&mut s);
    check_gateway(&mut s, &gateway);
    s.finish();
    gateway
}

const GATEWAY_TLS_FORMS: &str = "\"none\", \"opportunistic\", \"required\" or \"implicit\"";

fn parse_gateway_tls(text: &str) -> Option<GatewayTls> {
    match text {
        "none" => Some(GatewayTls::None),
        "opportunistic" => Some(GatewayTls::Opportunistic),
        "required" => Some(GatewayTls::Required),
        "implicit" => Some(GatewayTls::Implicit),
        _ => None,
    }
}

const ALIGNMENT_FORMS: &str = "\"enforce\", \"warn\" or \"off\"";

fn parse_alignment(text: &str) -> Option<AlignmentMode> {
    match text {
        "enforce" => Some(AlignmentMode::Enforce),
        "warn" => Some(AlignmentMode::Warn),
        "off" => Some(AlignmentMode::Off),
        _ => None,
    }
}

/// The problems only the keys together show: a secret that would cross the
/// network in plain text, and retry intervals that cannot work.
fn check_gateway(s: &mut Section<'_>, gateway: &GatewayConfig) {
    if gateway.auth.is_some() && gateway.tls == GatewayTls::None && !gateway.is_loopback() {
        let secret = match gateway.auth.as_ref().map(|auth| &auth.mechanism) {
            Some(AuthMechanism::XOAuth2(_)) => "OAuth token",
            _ => "password",
        };
        s.problem(
            "auth_user",
            &format!("the gateway {secret} would go in plain text: set tls = \"required\" (or \"implicit\")"),
        );
    }
    if gateway.retry_initial.is_zero() {
        s.problem("retry_initial", "must be longer than 0");
    }
    if gateway.data_reply_timeout.is_zero() {
        s.problem("data_reply_timeout", "must be longer than 0");
    }
    if gateway.retry_max < gateway.retry_initial {
        s.problem("retry_max", "must not be shorter than retry_initial");
    }
}

/// The login keys of a gateway: `auth_user` with `auth_mechanism` and its
/// secret's source. Every inconsistency is a problem with its key named.
fn read_gateway_auth(s: &mut Section<'_>) -> Option<GatewayAuth> {
    let keys = LoginKeys::read(s);
    if keys.xoauth2 {
        xoauth2_login(s, keys)
    } else {
        password_login(s, keys)
    }
}

/// Every login key as given. All are read whatever the mechanism, so a key
/// of the other mechanism is reported as misplaced rather than unknown.
struct LoginKeys {
    user: Option<String>,
    xoauth2: bool,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    oauth: OAuthKeys,
}

/// The keys of an XOAUTH2 token's source.
struct OAuthKeys {
    token_file: Option<PathBuf>,
    token_url: Option<HttpsUrl>,
    client_id: Option<String>,
    secret_file: Option<PathBuf>,
    scope: Option<String>,
    ca_file: Option<PathBuf>,
}

impl LoginKeys {
    fn read(s: &mut Section<'_>) -> LoginKeys {
        LoginKeys {
            user: s.optional("auth_user", "a user name, e.g. \"app@example.com\"", |v| {
                Some(v.to_string())
            }),
            xoauth2: s.parsed(
                "auth_mechanism",
                "password",
                "\"password\" (AUTH PLAIN or LOGIN) or \"xoauth2\"",
                |v| match v {
                    "password" => Some(false),
                    "xoauth2" => Some(true),
                    _ => None,
                },
            ),
            password_env: s.optional(
                "auth_password_env",
                "an environment variable name, e.g. \"SMTP_SHAPER_GATEWAY_PASSWORD\"",
                |v| {
                    v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        .then(|| v.to_string())
                },
            ),
            password_file: s.optional("auth_password_file", "a file path", parse_path),
            oauth: OAuthKeys::read(s),
        }
    }
}

impl OAuthKeys {
    fn read(s: &mut Section<'_>) -> OAuthKeys {
        OAuthKeys {
            token_file: s.optional("oauth_token_file", "a file path", parse_path),
            token_url: s.optional(
                "oauth_token_url",
                "an https URL, e.g. \"https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token\"",
                HttpsUrl::parse,
            ),
            client_id: s.optional("oauth_client_id", "the app registration's client id", |v| {
                (!v.is_empty()).then(|| v.to_string())
            }),
            secret_file: s.optional("oauth_client_secret_file", "a file path", parse_path),
            scope: s.optional(
                "oauth_scope",
                "a scope, e.g. \"https://outlook.office365.com/.default\"",
                |v| (!v.is_empty()).then(|| v.to_string()),
            ),
            ca_file: s.optional("oauth_ca_file", "a PEM file path", parse_path),
        }
    }

    /// The keys of the client-credentials grant, each with whether it is given.
    fn grant_keys(&self) -> [(&'static str, bool); 4] {
        [
            ("oauth_client_id", self.client_id.is_some()),
            ("oauth_client_secret_file", self.secret_file.is_some()),
            ("oauth_scope", self.scope.is_some()),
            ("oauth_ca_file", self.ca_file.is_some()),
        ]
    }
}

/// `auth_mechanism = "password"`: `auth_user` with exactly one of
/// `auth_password_env` and `auth_password_file`, or no login at all.
fn password_login(s: &mut Section<'_>, keys: LoginKeys) -> Option<GatewayAuth> {
    let oauth = &keys.oauth;
    let token_keys = [
        ("oauth_token_file", oauth.token_file.is_some()),
        ("oauth_token_url", oauth.token_url.is_some()),
    ];
    for (key, given) in token_keys.into_iter().chain(oauth.grant_keys()) {
        if given {
            s.problem(key, "only with auth_mechanism = \"xoauth2\"");
        }
    }
    match (keys.user, keys.password_env, keys.password_file) {
        (None, None, None) => None,
        (Some(user), Some(env), None) => Some(GatewayAuth {
            user,
            mechanism: AuthMechanism::Password(SecretSource::Env(env)),
        }),
        (Some(user), None, Some(file)) => Some(GatewayAuth {
            user,
            mechanism: AuthMechanism::Password(SecretSource::File(file)),
        }),
        (None, _, _) => {
            s.problem(
                "auth_user",
                "required with auth_password_env or auth_password_file",
            );
            None
        }
        (Some(_), None, None) | (Some(_), Some(_), Some(_)) => {
            s.problem(
                "auth_user",
                "needs exactly one of auth_password_env and auth_password_file",
            );
            None
        }
    }
}

/// `auth_mechanism = "xoauth2"`: `auth_user` with a token instead of a
/// password.
fn xoauth2_login(s: &mut Section<'_>, keys: LoginKeys) -> Option<GatewayAuth> {
    for (key, given) in [
        ("auth_password_env", keys.password_env.is_some()),
        ("auth_password_file", keys.password_file.is_some()),
    ] {
        if given {
            s.problem(
                key,
                "not with auth_mechanism = \"xoauth2\" (the login is a bearer token: oauth_token_file or oauth_token_url)",
            );
        }
    }
    let Some(user) = keys.user else {
        s.problem(
            "auth_user",
            "required with auth_mechanism = \"xoauth2\" (the mailbox the token may send as)",
        );
        return None;
    };
    Some(GatewayAuth {
        user,
        mechanism: AuthMechanism::XOAuth2(token_source(s, keys.oauth)?),
    })
}

/// Exactly one source: a token file kept fresh outside, or the
/// client-credentials grant at `oauth_token_url`.
fn token_source(s: &mut Section<'_>, oauth: OAuthKeys) -> Option<TokenSource> {
    let grant_keys = oauth.grant_keys();
    match (oauth.token_file, oauth.token_url) {
        (Some(path), None) => {
            for (key, given) in grant_keys {
                if given {
                    s.problem(key, "only with oauth_token_url (oauth_token_file is given)");
                }
            }
            Some(TokenSource::File(path))
        }
        (None, Some(token_url)) => {
            let (Some(client_id), Some(client_secret_file)) = (oauth.client_id, oauth.secret_file)
            else {
                s.problem(
                    "oauth_token_url",
                    "needs oauth_client_id and oauth_client_secret_file (the client-credentials grant)",
                );
                return None;
            };
            Some(TokenSource::ClientCredentials(ClientCredentials {
                token_url,
                client_id,
                client_secret_file,
                scope: oauth
                    .scope
                    .unwrap_or_else(|| EXCHANGE_ONLINE_SCOPE.to_string()),
                ca_file: oauth.ca_file,
            }))
        }
        (None, None) | (Some(_), Some(_)) => {
            s.problem(
                "auth_mechanism",
                "\"xoauth2\" needs exactly one token source: oauth_token_file, or oauth_token_url with oauth_client_id and oauth_client_secret_file",
            );
            None
        }
    }
}

/// `[gateways.shaping]` of a gateway whose mail may stay queued `max_age`.
fn read_shaping(mut s: Section<'_>, max_age: Duration) -> ShapingConfig {
    let delay_given = s.has("max_queue_delay");
    let mut given = None;
    let mut rate = |s: &mut Section<'_>, key, default| {
        let present = s.has(key);
        let (rate, period) = s.parsed(key, default, units::RATE_FORMS, |v| {
            units::parse_rate_per(v).filter(|(rate, _)| *rate > 0.0)
        });
        if present {
            given = given.or(Some(period));
        }
        rate
    };
    let (initial_rate, initial_period, initial_volume) =
        horizon_rates(&mut s, "initial_rate", "60/min");
    let (min_rate, min_period, min_volume) = horizon_rates(&mut s, "min_rate", "10/min");
    let max_rate = rate(&mut s, "max_rate", "1000/min");
    let shaping = ShapingConfig {
        initial_rate,
        initial_volume,
        min_rate,
        min_volume,
        max_rate,
        rate_period: initial_period
            .or(min_period)
            .or(given)
            .unwrap_or(units::Period::Minute),
        headroom: s.number("headroom", 2.0, 1.0, 100.0),
        warmup: s.parsed("warmup", "2x/day", units::GROWTH_FORMS, units::parse_growth),
        burst: s.integer("burst", 5, 1, 100_000),
        max_queue_delay: s.duration("max_queue_delay", DEFAULT_MAX_QUEUE_DELAY),
        max_queued: s.integer("max_queued", 100_000, 1, 100_000_000),
        limits: s.list("limits", &[], LIMIT_FORMS, parse_limit),
        count: s.parsed(
            "count",
            "messages",
            "\"messages\" or \"recipients\"",
            |v| match v {
                "messages" => Some(CountUnit::Messages),
                "recipients" => Some(CountUnit::Recipients),
                _ => None,
            },
        ),
        backoff_factor: s.number("backoff_factor", 0.5, 0.01, 0.99),
        backoff_pause: s.duration("backoff_pause", "1m"),
        backoff_recovery: s.duration("backoff_recovery", "1h"),
        mode: s.parsed(
            "mode",
            "enforce",
            "\"enforce\" or \"observe\"",
            |v| match v {
                "enforce" => Some(ShapingMode::Enforce),
                "observe" => Some(ShapingMode::Observe),
                _ => None,
            },
        ),
        observe_until: s.optional_duration("observe_until"),
        baseline_half_life: s.duration("baseline_half_life", "7d"),
    };
    if shaping.min_rate > shaping.max_rate {
        s.problem("min_rate", "must not be above max_rate");
    }
    for (index, horizon) in Horizon::ALL.into_iter().enumerate() {
        if shaping.initial_volume[index].is_some() && shaping.min_volume[index].is_none() {
            s.problem(
                "initial_rate",
                &format!(
                    "names a {} volume but min_rate has no {} floor to budget it (e.g. min_rate = [\"10/min\", \"60/h\", \"300/day\"])",
                    horizon.label(),
                    horizon.label()
                ),
            );
        }
    }
    let mut shaping = shaping;
    if shaping.observe_until.is_some() && shaping.mode != ShapingMode::Observe {
        s.problem(
            "observe_until",
            "only applies with mode = \"observe\" (observe until the history covers this span, then enforce)",
        );
    }
    if shaping.observe_until.is_some_and(|until| until.is_zero()) {
        s.problem("observe_until", "must be longer than 0");
    }
    if shaping.backoff_recovery.is_zero() {
        s.problem(
            "backoff_recovery",
            "must be above 0 (the time the ceiling takes to climb back after a throttling cut)",
        );
    }
    if shaping.max_queue_delay.is_zero() {
        s.problem("max_queue_delay", "must be longer than 0");
    } else if !delay_given {
        // Held mail must leave before it expires: a short max_age shortens
        // the default.
        shaping.max_queue_delay = shaping
            .max_queue_delay
            .min(max_age.mul_f64(HELD_SHARE_OF_LIFETIME));
    } else if shaping.max_queue_delay >= max_age {
        s.problem(
            "max_queue_delay",
            "must be shorter than the gateway's max_age (5d by default), or mail accepted to wait that long expires first: shorten it, or raise max_age (e.g. max_age = \"8d\" for max_queue_delay = \"7d\")",
        );
    }
    if shaping.baseline_half_life < Duration::from_secs(3_600) {
        s.problem("baseline_half_life", "must be at least 1h");
    }
    s.finish();
    shaping
}

/// The gateway's `max_queue_delay` by default: long enough to hold a
/// thousand-message burst whole on a gateway with no history and the
/// shipped floors (the last leaves after about two days, see the README's
/// "Admission: hold, don't hand back"), and shorter than `max_age` (5
/// days), so mail accepted on its projection leaves before it would expire.
pub const DEFAULT_MAX_QUEUE_DELAY: &str = "4d";

/// The longest an app's mail may be held, as a share of how long it may
/// stay queued (`max_age`, an app's `expire_after`): it leaves before it
/// would expire, with room for the projection to be off.
pub const HELD_SHARE_OF_LIFETIME: f64 = 0.8;

/// What `min_rate` and `initial_rate` accept.
const HORIZON_RATE_FORMS: &str = "a rate such as \"10/min\", or one rate per horizon: [\"10/min\", \"60/h\", \"300/day\"] (the minute in /s or /min, the hour in /h, the day in /day)";

/// One rate of a `min_rate`/`initial_rate` list: the horizon its period
/// names (`None`: the minute, as events per second), its value, and the
/// period it is written in.
fn parse_horizon_rate(text: &str) -> Option<(Option<Horizon>, f64, units::Period)> {
    let (per_second, period) = units::parse_rate_per(text).filter(|(rate, _)| *rate > 0.0)?;
    let horizon = match period {
        units::Period::Second | units::Period::Minute => {
            return Some((None, per_second, period));
        }
        units::Period::Hour => Horizon::Hour,
        units::Period::Day => Horizon::Day,
    };
    let count = (per_second * period.seconds() * 1e6).round() / 1e6;
    (count >= 1.0 && count.fract() == 0.0).then_some((Some(horizon), count, period))
}

/// `key` as one minute rate or a list with one rate per horizon (there the
/// period names the horizon: `/s` or `/min` the minute, `/h` the hour,
/// `/day` the day): the minute rate (`default` when the list names none),
/// the period it was written in (when given), and the whole counts of the
/// hour and day.
fn horizon_rates(
    s: &mut Section<'_>,
    key: &'static str,
    default: &str,
) -> (f64, Option<units::Period>, [Option<u64>; 2]) {
    if !s.is_list(key) {
        // One rate is the minute's, whatever its period (`"100/h"` has
        // always meant a minute floor of 100 an hour).
        let present = s.has(key);
        let (rate, period) = s.parsed(key, default, units::RATE_FORMS, |v| {
            units::parse_rate_per(v).filter(|(rate, _)| *rate > 0.0)
        });
        return (rate, present.then_some(period), [None; 2]);
    }
    let present = s.has(key);
    let rates = s.list(key, &[default], HORIZON_RATE_FORMS, parse_horizon_rate);
    let mut minute = None;
    let mut written = None;
    let mut volumes = [None; 2];
    for (horizon, value, period) in rates {
        if horizon.is_none() && present {
            written = Some(period);
        }
        let twice = match horizon {
            None => minute.replace(value).is_some(),
            Some(horizon) => volumes[horizon as usize].replace(value as u64).is_some(),
        };
        if twice {
            s.problem(
                key,
                &format!(
                    "names the {} twice; accepted: {HORIZON_RATE_FORMS}",
                    horizon.map_or("minute", Horizon::label)
                ),
            );
        }
    }
    let minute =
        minute.unwrap_or_else(|| parse_horizon_rate(default).expect("defaults are valid").1);
    (minute, written, volumes)
}

/// `30/min` as a cap of 30 per 60 s: a whole count per period.
fn parse_limit(text: &str) -> Option<Limit> {
    let (count, _) = text.trim().split_once('/')?;
    let count: u64 = count.trim().parse().ok().filter(|count| *count > 0)?;
    let per_second = units::parse_rate(text)?;
    Some(Limit {
        count,
        window: Duration::from_secs_f64(count as f64 / per_second),
    })
}

fn parse_name(text: &str) -> Option<String> {
    (!text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| text.to_string())
}

fn read_app(mut s: Section<'_>) -> AppConfig {
    let unsubscribe_given = s.has("unsubscribe");
    let hash_given = s.has("password_hash");
    let app = AppConfig {
        name: s.required("name", NAME_FORMS, parse_name),
        networks: s.list("networks", &[], NETWORK_FORMS, |v| v.parse().ok()),
        senders: s.list("senders", &[], SENDER_FORMS, |v| v.parse().ok()),
        priority: s.integer("priority", 1, 1, 100),
        class: s.parsed(
            "class",
            "transactional",
            "\"transactional\" or \"bulk\"",
            |v| match v {
                "transactional" => Some(AppClass::Transactional),
                "bulk" => Some(AppClass::Bulk),
                _ => None,
            },
        ),
        unsubscribe: s.parsed(
            "unsubscribe",
            "warn",
            "\"require\", \"warn\" or \"off\"",
            |v| match v {
                "require" => Some(UnsubscribeMode::Require),
                "warn" => Some(UnsubscribeMode::Warn),
                "off" => Some(UnsubscribeMode::Off),
                _ => None,
            },
        ),
        dsn: s.boolean("dsn", false),
        user: s.optional(
            "user",
            "an AUTH user name without spaces or control characters",
            |v| {
                v.chars()
                    .all(|c| !c.is_control() && c != ' ')
                    .then(|| v.to_string())
            },
        ),
        password_hash: s.optional(
            "password_hash",
            "an argon2 hash such as \"$argon2id$v=19$m=19456,t=2,p=1$...\" (smtp-shaper hash-password)",
            |v| argon2::PasswordHash::new(v).ok().map(|_| v.to_string()),
        ),
        max_queue_delay: s.optional_duration("max_queue_delay"),
        expire_after: s.optional_duration("expire_after"),
        notify_delay: s.optional_duration("notify_delay"),
    };
    if app.notify_delay.is_some_and(|delay| delay.is_zero()) {
        s.problem("notify_delay", "must be longer than 0");
    }
    if let (Some(delay), Some(after)) = (app.notify_delay, app.expire_after)
        && delay >= after
    {
        s.problem(
            "notify_delay",
            "must be shorter than expire_after: mail held that long has expired already",
        );
    }
    if app.max_queue_delay.is_some_and(|delay| delay.is_zero()) {
        s.problem("max_queue_delay", "must be longer than 0");
    }
    if app.expire_after.is_some_and(|after| after.is_zero()) {
        s.problem("expire_after", "must be longer than 0");
    }
    if let (Some(delay), Some(after)) = (app.max_queue_delay, app.expire_after)
        && delay >= after
    {
        s.problem(
            "max_queue_delay",
            "must be shorter than expire_after: mail accepted to wait that long would expire first",
        );
    }
    if app.networks.is_empty() && app.senders.is_empty() && app.user.is_none() {
        s.problem(
            "networks",
            "an app needs a user, networks or senders to be recognised",
        );
    }
    if unsubscribe_given && app.class != AppClass::Bulk {
        s.problem(
            "unsubscribe",
            "applies to bulk mail only: set class = \"bulk\" too, or remove it",
        );
    }
    // A hash given but not valid is said once, above.
    if app.user.is_some() != hash_given {
        s.problem(
            "password_hash",
            "user and password_hash go together (an app that logs in needs both)",
        );
    }
    s.finish();
    app
}

/// Reports a value of `field` used twice in a list of tables (an empty
/// value, i.e. not given, never clashes).
fn check_unique<'a>(
    list: &str,
    field: &str,
    values: impl Iterator<Item = &'a str>,
    problems: &mut Problems,
) {
    let mut seen: Vec<&str> = Vec::new();
    for (index, value) in values.enumerate() {
        if !value.is_empty() && seen.contains(&value) {
            problems.push(
                &format!("{list}[{index}].{field}"),
                &format!("\"{value}\" is used by an earlier entry; {field}s must be unique"),
            );
        }
        seen.push(value);
    }
}

/// Checks that concern the gateway list as a whole.
fn check_gateways(gateways: &[GatewayConfig], problems: &mut Problems) {
    if gateways.is_empty() {
        problems.push(
            "gateways",
            "at least one [[gateways]] entry is required, e.g. name = \"primary\", address = \"127.0.0.1:25\"",
        );
        return;
    }
    check_unique(
        "gateways",
        "name",
        gateways.iter().map(|gateway| gateway.name.as_str()),
        problems,
    );
    let defaults = gateways.iter().filter(|gateway| gateway.default).count();
    if defaults > 1 {
        problems.push(
            "gateways",
            "more than one gateway has default = true; mark exactly one",
        );
    }
    if defaults == 0 && gateways.len() > 1 {
        problems.push(
            "gateways",
            "with several gateways, mark the one for unmatched senders with default = true",
        );
    }
}

fn is_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `host:port` split at the last colon, an IPv6 host without its brackets.
fn split_host_port(text: &str) -> Option<(&str, &str)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port))
}

fn is_host_port(text: &str) -> bool {
    split_host_port(text).is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok_and(|port| port > 0)
            && (is_hostname(host) || host.parse::<std::net::IpAddr>().is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_loopback_only() {
        let config = Config::embedded_default();
        assert_eq!(config.server.listen, "127.0.0.1:2525".parse().unwrap());
        assert!(config.server.listen.ip().is_loopback());
        assert_eq!(config.gateways[0].address, "127.0.0.1:25");
        assert_eq!(config.server.max_message_size, 25 << 20);
    }

    #[test]
    fn lists_every_problem_with_its_key_path() {
        let error = Config::parse(
            r#"
            [server]
            listen = "nowhere"
            max_message_size = "25MB"
            client_auth_failures = "0/min"
            colour = "blue"
            [spool]
            dir = "/tmp/x"
            [[gateways]]
            name = "a"
            address = "gw.example.com"
            retry_initial = "soon"
            [[gateways]]
            name = "a"
            address = "127.0.0.1:25"
            max_connections = 0
            "#,
        )
        .unwrap_err();
        let text = error.to_string();
        for expected in [
            "server.listen: \"nowhere\" is not valid; accepted: an IP address and port",
            "server.max_message_size: \"25MB\" is not valid; accepted: a whole number with a unit B, KiB",
            "server.client_auth_failures: \"0/min\" is not valid; accepted: a whole number from 1 to 1000000 per s, min, h or day",
            "server.colour: unknown key",
            "gateways[0].address: \"gw.example.com\" is not valid; accepted: host:port",
            "gateways[0].retry_initial: \"soon\" is not valid",
            "gateways[1].name: \"a\" is used by an earlier entry",
            "gateways[1].max_connections: 0 is out of range; accepted: a whole number from 1 to 1000",
            "gateways: with several gateways, mark the one for unmatched senders with default = true",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(error.problems.len(), 9, "{text}");
    }

    #[test]
    fn wrong_types_and_missing_keys_are_explained() {
        let error = Config::parse(
            r#"
            [server]
            max_recipients = "many"
            allowed_networks = "10.0.0.0/8"
            [[gateways]]
            default = "yes"
            "#,
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("server.max_recipients: expected a whole number"),
            "{text}"
        );
        assert!(
            text.contains("server.allowed_networks: expected a list"),
            "{text}"
        );
        assert!(text.contains("gateways[0].name: required"), "{text}");
        assert!(text.contains("gateways[0].address: required"), "{text}");
        assert!(
            text.contains("gateways[0].default: expected true or false"),
            "{text}"
        );
    }

    #[test]
    fn volume_floors_and_seeds_per_horizon() {
        let config = Config::parse(
            r#"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            [gateways.shaping]
            initial_rate = ["30/min", "2000/day"]
            min_rate = ["1/s", "60/h", "300/day"]
            [[apps]]
            name = "news"
            senders = ["news.example.com"]
            class = "bulk"
            "#,
        )
        .unwrap();
        let shaping = &config.gateways[0].shaping;
        assert_eq!((shaping.initial_rate, shaping.min_rate), (0.5, 1.0));
        assert_eq!(shaping.initial_volume, [None, Some(2_000)]);
        assert_eq!(shaping.min_volume, [Some(60), Some(300)]);
        assert_eq!(config.apps[0].class, AppClass::Bulk);
        // One rate is the minute only: hours and days are not budgeted.
        let config = Config::parse(
            "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\nmin_rate = \"10/min\"\n",
        )
        .unwrap();
        assert_eq!(config.gateways[0].shaping.min_volume, [None, None]);
        let config = Config::parse(
            "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\nmin_rate = \"100/h\"\n",
        )
        .unwrap();
        let shaping = &config.gateways[0].shaping;
        assert_eq!(
            shaping.min_volume,
            [None, None],
            "one rate: the minute floor"
        );
        assert!((shaping.min_rate - 100.0 / 3_600.0).abs() < 1e-12);
        let error = Config::parse(
            r#"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            [gateways.shaping]
            initial_rate = ["200/h"]
            min_rate = ["10/min", "1/min", "0.5/h", "300/week"]
            [[apps]]
            name = "news"
            senders = ["news.example.com"]
            class = "newsletter"
            "#,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "gateways[0].shaping.min_rate: names the minute twice",
            "gateways[0].shaping.min_rate[2]: \"0.5/h\" is not valid; accepted: a rate such as",
            "gateways[0].shaping.min_rate[3]: \"300/week\" is not valid",
            "gateways[0].shaping.initial_rate: names a 1h volume but min_rate has no 1h floor",
            "apps[0].class: \"newsletter\" is not valid; accepted: \"transactional\" or \"bulk\"",
        ] {
            assert!(error.contains(expected), "{expected}\nnot in\n{error}");
        }
    }

    #[test]
    fn dsn_is_off_unless_an_app_asks_for_it() {
        let config = Config::parse(
            r#"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            [[apps]]
            name = "alerts"
            senders = ["alerts.example.com"]
            dsn = true
            [[apps]]
            name = "quiet"
            senders = ["quiet.example.com"]
            "#,
        )
        .unwrap();
        assert!(config.apps[0].dsn);
        assert!(!config.apps[1].dsn);
        let error =
            Config::parse("[[apps]]\nname = \"a\"\nsenders = [\"a.example.com\"]\ndsn = \"yes\"\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("apps[0].dsn"), "{error}");
    }

    #[test]
    fn alignment_and_unsubscribe_have_safe_defaults_and_clear_errors() {
        let config = Config::parse(
            r#"
            [server]
            dns_resolver = "127.0.0.1:5353"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            [[gateways]]
            name = "strict"
            address = "127.0.0.1:26"
            default = true
            alignment = "enforce"
            [[apps]]
            name = "news"
            senders = ["news.example.com"]
            class = "bulk"
            [[apps]]
            name = "letters"
            senders = ["letters.example.com"]
            class = "bulk"
            unsubscribe = "require"
            "#,
        )
        .unwrap();
        assert_eq!(config.gateways[0].alignment, AlignmentMode::Warn);
        assert_eq!(config.gateways[1].alignment, AlignmentMode::Enforce);
        assert_eq!(config.apps[0].unsubscribe, UnsubscribeMode::Warn);
        assert_eq!(config.apps[1].unsubscribe, UnsubscribeMode::Require);
        assert_eq!(
            config.server.dns_resolver,
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(Config::embedded_default().server.dns_resolver, None);
        let error = Config::parse(
            r#"
            [server]
            dns_resolver = "localhost"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            alignment = "strict"
            [[apps]]
            name = "billing"
            senders = ["billing.example.com"]
            unsubscribe = "require"
            [[apps]]
            name = "news"
            senders = ["news.example.com"]
            class = "bulk"
            unsubscribe = "always"
            "#,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "line 3: server.dns_resolver: \"localhost\" is not valid; accepted: an IP address and port",
            "line 7: gateways[0].alignment: \"strict\" is not valid; accepted: \"enforce\", \"warn\" or \"off\"",
            "apps[0].unsubscribe: applies to bulk mail only: set class = \"bulk\" too, or remove it",
            "apps[1].unsubscribe: \"always\" is not valid; accepted: \"require\", \"warn\" or \"off\"",
        ] {
            assert!(error.contains(expected), "{expected}\nnot in\n{error}");
        }
    }

    #[test]
    fn shaping_and_apps() {
        let config = Config::parse(
            r#"
            [[gateways]]
            name = "exchange"
            address = "127.0.0.1:587"
            [gateways.shaping]
            initial_rate = "20/min"
            headroom = 1.5
            warmup = "1.5x/day"
            limits = ["30/min", "10000/day"]
            count = "recipients"
            [[apps]]
            name = "billing"
            networks = ["10.1.0.0/16"]
            priority = 3
            [[apps]]
            name = "auth"
            senders = ["auth.example.com"]
            "#,
        )
        .unwrap();
        let shaping = &config.gateways[0].shaping;
        assert_eq!(shaping.initial_rate, 20.0 / 60.0);
        assert_eq!(
            (shaping.headroom, shaping.warmup, shaping.burst),
            (1.5, 1.5, 5)
        );
        assert_eq!(
            shaping.limits,
            vec![
                Limit {
                    count: 30,
                    window: Duration::from_secs(60)
                },
                Limit {
                    count: 10_000,
                    window: Duration::from_secs(86_400)
                },
            ]
        );
        assert_eq!(shaping.count, CountUnit::Recipients);
        assert_eq!(config.apps.len(), 2);
        assert_eq!(config.apps[0].priority, 3);

        let error = Config::parse(
            r#"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            [gateways.shaping]
            min_rate = "100/min"
            max_rate = "10/min"
            headroom = 0.5
            warmup = "0.5x/day"
            limits = ["30/fortnight"]
            count = "bytes"
            rate = "1/s"
            [[apps]]
            name = "x"
            "#,
        )
        .unwrap_err();
        let text = error.to_string();
        for expected in [
            "gateways[0].shaping.min_rate: must not be above max_rate",
            "gateways[0].shaping.headroom: 0.5 is out of range; accepted: a number from 1 to 100",
            "gateways[0].shaping.warmup: \"0.5x/day\" is not valid; accepted: a factor above 1",
            "gateways[0].shaping.limits[0]: \"30/fortnight\" is not valid",
            "gateways[0].shaping.count: \"bytes\" is not valid; accepted: \"messages\" or \"recipients\"",
            "gateways[0].shaping.rate: unknown key",
            "apps[0].networks: an app needs a user, networks or senders",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn two_apps_cannot_log_in_as_one_user() {
        let hash =
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let error = Config::parse(&format!(
            "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n\
             [[apps]]\nname = \"a\"\nuser = \"u\"\npassword_hash = \"{hash}\"\n\
             [[apps]]\nname = \"b\"\nnetworks = [\"10.0.0.0/8\"]\n\
             [[apps]]\nname = \"c\"\nuser = \"u\"\npassword_hash = \"{hash}\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            error.problems,
            vec!["line 13: apps[2].user: \"u\" is used by an earlier entry; users must be unique"]
        );
    }

    #[test]
    fn gateway_logins_need_a_secret_source_and_tls() {
        let error = Config::parse(
            r#"
            [[gateways]]
            name = "a"
            address = "smtp.example.com:25"
            tls = "none"
            auth_user = "app@example.com"
            auth_password_env = "PASSWORD"
            [[gateways]]
            name = "b"
            address = "127.0.0.1:25"
            default = true
            auth_user = "app@example.com"
            "#,
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("gateways[0].auth_user: the gateway password would go in plain text"),
            "{text}"
        );
        assert!(text.contains("gateways[1].auth_user: needs exactly one of auth_password_env and auth_password_file"), "{text}");
        let config = Config::parse(
            "[[gateways]]\nname = \"local\"\naddress = \"[::1]:25\"\ntls = \"none\"\nauth_user = \"u\"\nauth_password_file = \"/run/secret\"\n",
        )
        .unwrap();
        assert!(
            config.gateways[0].is_loopback(),
            "a loopback gateway may take a plain login"
        );
        assert_eq!(config.gateways[0].host(), "::1");
    }

    #[test]
    fn xoauth2_logins_take_one_token_source() {
        let config = Config::parse(
            r#"
            [[gateways]]
            name = "file"
            address = "smtp.office365.com:587"
            default = true
            tls = "required"
            auth_user = "app@example.com"
            auth_mechanism = "xoauth2"
            oauth_token_file = "/run/token"
            [[gateways]]
            name = "grant"
            address = "smtp.office365.com:587"
            tls = "required"
            auth_user = "app@example.com"
            auth_mechanism = "xoauth2"
            oauth_token_url = "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
            oauth_client_id = "11111111-2222-3333-4444-555555555555"
            oauth_client_secret_file = "/run/client-secret"
            "#,
        )
        .unwrap();
        let mechanism = |index: usize| config.gateways[index].auth.clone().unwrap().mechanism;
        assert_eq!(
            mechanism(0),
            AuthMechanism::XOAuth2(TokenSource::File("/run/token".into()))
        );
        let AuthMechanism::XOAuth2(TokenSource::ClientCredentials(grant)) = mechanism(1) else {
            panic!("the client-credentials grant: {:?}", mechanism(1));
        };
        assert_eq!(grant.scope, EXCHANGE_ONLINE_SCOPE, "the default scope");
        assert_eq!(grant.token_url.host, "login.microsoftonline.com");
        assert_eq!(grant.token_url.port, 443);
        assert_eq!(grant.token_url.path, "/contoso.example/oauth2/v2.0/token");
        assert_eq!(grant.ca_file, None);

        let error = Config::parse(
            r#"
            [[gateways]]
            name = "none"
            address = "smtp.example.com:587"
            default = true
            tls = "required"
            auth_user = "app@example.com"
            auth_mechanism = "xoauth2"
            [[gateways]]
            name = "both"
            address = "smtp.example.com:587"
            tls = "required"
            auth_user = "app@example.com"
            auth_mechanism = "xoauth2"
            oauth_token_file = "/run/token"
            oauth_token_url = "https://login.example.com/token"
            [[gateways]]
            name = "nouser"
            address = "smtp.example.com:587"
            tls = "required"
            auth_mechanism = "xoauth2"
            oauth_token_file = "/run/token"
            [[gateways]]
            name = "halfgrant"
            address = "smtp.example.com:587"
            tls = "required"
            auth_user = "app@example.com"
            auth_mechanism = "xoauth2"
            oauth_token_url = "https://login.example.com/token"
            oauth_client_id = "id"
            [[gateways]]
            name = "mixed"
            address = "smtp.example.com:587"
            tls = "required"
            auth_user = "app@example.com"
            auth_mechanism = "xoauth2"
            auth_password_env = "PASSWORD"
            oauth_token_file = "/run/token"
            oauth_scope = "x"
            [[gateways]]
            name = "plaintext"
            address = "smtp.example.com:587"
            tls = "none"
            auth_user = "app@example.com"
            auth_mechanism = "xoauth2"
            oauth_token_file = "/run/token"
            [[gateways]]
            name = "stray"
            address = "smtp.example.com:587"
            tls = "required"
            auth_user = "app@example.com"
            auth_password_env = "PASSWORD"
            oauth_token_file = "/run/token"
            [[gateways]]
            name = "http"
            address = "smtp.example.com:587"
            tls = "required"
            auth_user = "app@example.com"
            auth_mechanism = "oauth"
            oauth_token_url = "http://login.example.com/token"
            "#,
        )
        .unwrap_err();
        let text = error.to_string();
        for expected in [
            "gateways[0].auth_mechanism: \"xoauth2\" needs exactly one token source",
            "gateways[1].auth_mechanism: \"xoauth2\" needs exactly one token source",
            "gateways[2].auth_user: required with auth_mechanism = \"xoauth2\"",
            "gateways[3].oauth_token_url: needs oauth_client_id and oauth_client_secret_file",
            "gateways[4].auth_password_env: not with auth_mechanism = \"xoauth2\"",
            "gateways[4].oauth_scope: only with oauth_token_url",
            "gateways[5].auth_user: the gateway OAuth token would go in plain text",
            "gateways[6].oauth_token_file: only with auth_mechanism = \"xoauth2\"",
            "gateways[7].auth_mechanism: \"oauth\" is not valid; accepted: \"password\" (AUTH PLAIN or LOGIN) or \"xoauth2\"",
            "gateways[7].oauth_token_url: \"http://login.example.com/token\" is not valid; accepted: an https URL",
        ] {
            assert!(text.contains(expected), "{expected}\n{text}");
        }
    }

    #[test]
    fn https_urls_are_taken_apart() {
        let url = HttpsUrl::parse("https://[::1]:8443/t/oauth2/v2.0/token?x=1").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("::1", 8443, "/t/oauth2/v2.0/token?x=1")
        );
        assert_eq!(
            url.to_string(),
            "https://[::1]:8443/t/oauth2/v2.0/token?x=1"
        );
        let url = HttpsUrl::parse("https://login.example.com").unwrap();
        assert_eq!((url.port, url.path.as_str()), (443, "/"));
        assert_eq!(url.authority(), "login.example.com:443");
        for bad in [
            "http://login.example.com/token",
            "https://user:pw@login.example.com/token",
            "https://login.example.com:0/token",
            "https://login.example.com:x/token",
            "https://[login]/token",
            "https:///token",
            "https://login.example.com/a b",
            "https://login.example.com/token#frag",
        ] {
            assert_eq!(HttpsUrl::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_gateway_may_name_its_sending_ip() {
        let config = Config::parse(
            "[[gateways]]\nname = \"billing\"\naddress = \"127.0.0.1:25\"\nsending_ip = \"192.0.2.25\"\n",
        )
        .unwrap();
        assert_eq!(
            config.gateways[0].sending_ip,
            Some("192.0.2.25".parse().unwrap())
        );
    }

    #[test]
    fn rates_keep_the_period_the_file_writes_them_in() {
        let period = |shaping: &str| {
            Config::parse(&format!(
                "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\n{shaping}"
            ))
            .unwrap()
            .gateways[0]
                .shaping
                .rate_period
        };
        assert_eq!(period(""), units::Period::Minute, "the defaults' /min");
        assert_eq!(period("initial_rate = \"2/s\"\n"), units::Period::Second);
        assert_eq!(
            period("min_rate = \"100/h\"\nmax_rate = \"1/s\"\n"),
            units::Period::Hour
        );
        assert_eq!(period("max_rate = \"50000/day\"\n"), units::Period::Day);
    }

    #[test]
    fn reports_bad_toml_syntax_at_its_line_and_column() {
        let error = Config::parse("[server]\nlisten = \"127.0.0.1:2525\"\nhostname = = \"x\"\n")
            .unwrap_err();
        assert_eq!(error.problems.len(), 1);
        assert!(
            error.problems[0].starts_with("line 3, column 12: server.hostname: not valid TOML: "),
            "{error}"
        );
        let error = Config::parse("[server\nlisten = 1").unwrap_err();
        assert!(
            error.problems[0].starts_with("line 1, column 8: not valid TOML: "),
            "{error}"
        );
    }

    #[test]
    fn every_problem_names_the_line_of_its_key_or_table() {
        let error = Config::parse(concat!(
            "[server]\n",
            "listen = \"nowhere\"\n",
            "allowed_networks = [\"127.0.0.0/8\", \"bad\"]\n",
            "\n",
            "[[gateways]]\n",
            "name = \"a\"\n",
            "\n",
            "[[gateways]]\n",
            "name = \"b\"\n",
            "address = \"127.0.0.1:25\"\n",
            "[gateways.shaping]\n",
            "min_rate = \"fast\"\n",
            "colour = \"blue\"\n",
        ))
        .unwrap_err();
        let at: Vec<&str> = error
            .problems
            .iter()
            .map(|problem| problem.split(": ").take(2).last().unwrap())
            .collect();
        let lines: Vec<&str> = error
            .problems
            .iter()
            .map(|problem| problem.split(": ").next().unwrap())
            .collect();
        let expected = [
            ("line 2", "server.listen"),
            ("line 3", "server.allowed_networks[1]"),
            // A missing key: the line of its table's header.
            ("line 5", "gateways[0].address"),
            ("line 12", "gateways[1].shaping.min_rate"),
            ("line 13", "gateways[1].shaping.colour"),
            ("line 5", "gateways"),
        ];
        for (line, path) in expected {
            let found = at.iter().position(|p| *p == path);
            assert_eq!(
                found.map(|index| lines[index]),
                Some(line),
                "{path} in:\n{error}"
            );
        }
        assert_eq!(error.problems.len(), expected.len(), "{error}");
    }

    #[test]
    fn held_mail_leaves_before_it_expires() {
        let gateway = |lines: &str| {
            Config::parse(&format!(
                "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n{lines}"
            ))
        };
        // The default max_queue_delay (4d) under the default max_age (5d);
        // a short max_age shortens it to four fifths of it.
        let config = gateway("").unwrap();
        assert_eq!(
            config.gateways[0].shaping.max_queue_delay,
            Duration::from_secs(4 * 86_400)
        );
        let config = gateway("max_age = \"1d\"").unwrap();
        assert_eq!(
            config.gateways[0].shaping.max_queue_delay,
            Duration::from_secs(86_400).mul_f64(0.8)
        );
        // Said outright, a wait past the lifetime is a contradiction.
        let error = gateway("[gateways.shaping]\nmax_queue_delay = \"7d\"").unwrap_err();
        assert!(
            error.to_string().contains(
                "gateways[0].shaping.max_queue_delay: must be shorter than the gateway's max_age"
            ),
            "{error}"
        );
        assert!(gateway("max_age = \"8d\"\n[gateways.shaping]\nmax_queue_delay = \"7d\"").is_ok());
        let app = |lines: &str| {
            Config::parse(&format!(
                "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[[apps]]\nname = \"a\"\nsenders = [\"a.test\"]\n{lines}"
            ))
        };
        let error = app("max_queue_delay = \"2d\"\nexpire_after = \"1d\"").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("apps[0].max_queue_delay: must be shorter than expire_after"),
            "{error}"
        );
        let error = app("notify_delay = \"1d\"\nexpire_after = \"1d\"").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("apps[0].notify_delay: must be shorter than expire_after"),
            "{error}"
        );
        let config = app("expire_after = \"2d\"\nnotify_delay = \"4h\"").unwrap();
        assert_eq!(
            config.apps[0].expire_after,
            Some(Duration::from_secs(2 * 86_400))
        );
        assert_eq!(
            config.apps[0].notify_delay,
            Some(Duration::from_secs(4 * 3_600))
        );
        assert_eq!(config.apps[0].max_queue_delay, None);
    }

    #[test]
    fn unknown_sections_are_errors() {
        let error = Config::parse(
            "[[gateways]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\n[servr]\nlisten = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(error.problems.len(), 1);
        assert!(error.problems[0].starts_with(
            "line 4: servr: unknown key; accepted here: server, spool, http, cluster, gateways"
        ));
    }

    #[test]
    fn a_duplicate_key_or_a_number_too_large_names_the_key() {
        let duplicate = Config::parse("[server]\nmax_errors = 5\nmax_errors = 6\n").unwrap_err();
        assert_eq!(
            duplicate.problems,
            vec!["line 3, column 1: server.max_errors: not valid TOML: duplicate key"]
        );
        let huge =
            Config::parse("[[gateways]]\nname = \"g\"\nmax_connections = 99999999999999999999\n")
                .unwrap_err();
        assert!(
            huge.problems[0].starts_with("line 3, column 19: gateways.max_connections: not valid TOML: a whole number too large"),
            "{huge:?}"
        );
    }

    #[test]
    fn an_invalid_password_hash_is_said_once() {
        let problems = Config::parse(
            "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[[apps]]\nname = \"portal\"\nuser = \"portal\"\npassword_hash = \"not-a-hash\"\n",
        )
        .unwrap_err()
        .problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("apps[0].password_hash"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("go together"), "{problems:?}");
    }

    #[test]
    fn a_zero_session_timeout_is_refused() {
        for key in ["idle_timeout = \"0s\"", "command_deadline = \"0ms\""] {
            let problems = Config::parse(&format!(
                "[server]\n{key}\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n"
            ))
            .unwrap_err()
            .problems;
            assert!(
                problems.iter().any(|p| p.contains("must be longer than 0")),
                "{key}: {problems:?}"
            );
        }
    }

    #[test]
    fn an_app_that_cannot_log_in_is_warned_about() {
        let file = |server: &str| {
            Config::parse(&format!(
                "[server]\n{server}\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[[apps]]\nname = \"portal\"\nuser = \"portal\"\npassword_hash = \"$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$yKBsPW3CNbM1OFNYeNb3+Q\"\n"
            ))
            .unwrap()
        };
        let warnings = file("listen = \"0.0.0.0:2525\"").warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("apps \"portal\" has a user"),
            "{warnings:?}"
        );
        let loopback = file("listen = \"127.0.0.1:2525\"\nplaintext_auth_on_loopback = true");
        assert!(loopback.warnings().is_empty());
    }

    #[test]
    fn a_cluster_section_names_redis_and_the_node() {
        let gateway = "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n";
        assert_eq!(Config::parse(gateway).unwrap().cluster, None);
        let config = Config::parse(&format!(
            "{gateway}[cluster]\nredis = \"rediss://redis:6380/1\"\nexpected_nodes = 3\n"
        ))
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.redis, "rediss://redis:6380/1");
        assert_eq!(cluster.node, host_name(), "the host name by default");
        assert_eq!(cluster.expected_nodes, 3);
        assert_eq!(cluster.timeout, Duration::from_millis(250));
        let problems = Config::parse(&format!(
            "{gateway}[cluster]\nredis = \"redis://:secret@redis:6379/0\"\nnode = \"a b\"\nexpected_nodes = 2\n"
        ))
        .unwrap_err()
        .problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("credentials"), "{problems:?}");
        assert!(problems[1].contains("cluster.node"), "{problems:?}");
        let unsized_cluster = Config::parse(&format!(
            "{gateway}[cluster]\nredis = \"redis://redis:6379/0\"\n"
        ))
        .unwrap_err();
        assert!(
            unsized_cluster.problems[0].contains("cluster.expected_nodes: required"),
            "{unsized_cluster:?}"
        );
        let missing = Config::parse(&format!("{gateway}[cluster]\n")).unwrap_err();
        assert!(
            missing.problems[0].contains("cluster.redis: required"),
            "{missing:?}"
        );
    }
}
