//! `[[gateways]]`: where mail goes, how (TLS, login: password or OAuth),
//! what it keeps (max_age), and the checks across gateways.

use super::*;

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
    /// The period the file writes this gateway's rates in (that of the
    /// first of initial_rate, min_rate, max_rate given; else the defaults'
    /// `/min`): logs say rates the same way.
    pub rate_period: units::Period,
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

pub(super) fn read_gateway(mut s: Section<'_>) -> GatewayConfig {
    // Read first: the shaping's max_queue_delay stays under it.
    let max_age = s.duration("max_age", "5d");
    let rate_period;
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
        shaping: {
            let (shaping, period) = read_shaping(s.subsection("shaping"), Some(max_age));
            rate_period = period;
            shaping
        },
        rate_period,
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

/// Checks that concern the gateway list as a whole.
pub(super) fn check_gateways(gateways: &[GatewayConfig], problems: &mut Problems) {
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
