//! `[server]` and `[server.tls]`: the listener applications send to, its
//! limits, timeouts and logins.

use super::*;

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

/// How log lines are written: for people, or one JSON object per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub(super) fn read_server(mut s: Section<'_>) -> ServerConfig {
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
