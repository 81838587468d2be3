//! Configuration: the TOML schema, its defaults and its validation.
//!
//! The file is read section by section through [`reader::Section`], which
//! collects every problem (with its key path and the accepted values) instead of
//! stopping at the first, so `check-config` can list them all at once. Unknown
//! keys are errors: a misspelt limit silently falling back to its default is
//! the kind of surprise a mail relay must not have.

mod reader;
pub mod units;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::policy::{Network, Router, SenderPattern};
use reader::{Problems, Section};

/// The configuration used by `smtp-shaper run` without `--config`: loopback
/// only, a spool in the working directory, relaying to a gateway on port 25.
pub const EMBEDDED_DEFAULT: &str = include_str!("embedded-default.toml");

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    pub gateways: Vec<GatewayConfig>,
}

/// `[server]`: the listener applications send to.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_errors: u32,
    pub idle_timeout: Duration,
    pub data_timeout: Duration,
    pub shutdown_grace: Duration,
    pub allowed_networks: Vec<Network>,
    /// Threads running sessions and deliveries (the spool writer has its own).
    pub worker_threads: usize,
}

/// `[spool]`: where accepted mail waits for delivery.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub segment_size: u64,
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
    pub idle_connection_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
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
const SENDER_FORMS: &str = "a list of sender domains, e.g. [\"example.com\", \"*.example.org\"]";

impl Config {
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
    /// assert!(error.problems[0].starts_with("server.idle_timeout: \"soon\" is not valid"));
    /// ```
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let root: toml::Table = text.parse().map_err(|error: toml::de::Error| ConfigError {
            problems: vec![
                format!("not valid TOML: {}", error.message().trim())
                    + &error
                        .span()
                        .map(|span| format!(" (at byte {})", span.start))
                        .unwrap_or_default(),
            ],
        })?;
        let mut problems = Problems::default();
        let mut root = Section::new(String::new(), root, &mut problems);
        let server = root.section("server");
        let spool = root.section("spool");
        let gateway_tables = root.array_of_sections("gateways");
        root.finish();

        let server = read_server(Section::new("server".into(), server, &mut problems));
        let spool = read_spool(Section::new("spool".into(), spool, &mut problems));
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

        problems.into_result(Config {
            server,
            spool,
            gateways,
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

    /// The router that picks a gateway index for a sender.
    pub fn router(&self) -> Router {
        let default = self
            .gateways
            .iter()
            .position(|gateway| gateway.default)
            .unwrap_or(0);
        Router::new(
            self.gateways
                .iter()
                .enumerate()
                .map(|(index, gateway)| (index, gateway.senders.clone()))
                .collect(),
            default,
        )
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
        max_errors: s.integer("max_errors", 10, 1, 1_000),
        idle_timeout: s.parsed(
            "idle_timeout",
            "5m",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
        data_timeout: s.parsed(
            "data_timeout",
            "10m",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
        shutdown_grace: s.parsed(
            "shutdown_grace",
            "30s",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
        allowed_networks: s.list(
            "allowed_networks",
            &["127.0.0.0/8", "::1/128"],
            NETWORK_FORMS,
            |v| v.parse().ok(),
        ),
        worker_threads: s.integer("worker_threads", 1, 1, 256),
    };
    if server.max_message_size < 1024 {
        s.problem("max_message_size", "must be at least 1KiB");
    }
    s.finish();
    server
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
    };
    if spool.segment_size < 64 * 1024 {
        s.problem("segment_size", "must be at least 64KiB");
    }
    s.finish();
    spool
}

fn read_gateway(mut s: Section<'_>) -> GatewayConfig {
    let gateway = GatewayConfig {
        name: s.required(
            "name",
            "a short name made of letters, digits, '-' and '_'",
            |v| {
                (!v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
                .then(|| v.to_string())
            },
        ),
        address: s.required("address", HOST_PORT_FORMS, |v| {
            is_host_port(v).then(|| v.to_string())
        }),
        default: s.boolean("default", false),
        senders: s.list("senders", &[], SENDER_FORMS, |v| v.parse().ok()),
        max_connections: s.integer("max_connections", 10, 1, 1_000),
        connect_timeout: s.parsed(
            "connect_timeout",
            "30s",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
        command_timeout: s.parsed(
            "command_timeout",
            "5m",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
        idle_connection_timeout: s.parsed(
            "idle_connection_timeout",
            "30s",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
        retry_initial: s.parsed(
            "retry_initial",
            "1m",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
        retry_max: s.parsed(
            "retry_max",
            "1h",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
        max_age: s.parsed(
            "max_age",
            "5d",
            units::DURATION_FORMS,
            units::parse_duration,
        ),
    };
    if gateway.retry_initial.is_zero() {
        s.problem("retry_initial", "must be longer than 0");
    }
    if gateway.retry_max < gateway.retry_initial {
        s.problem("retry_max", "must not be shorter than retry_initial");
    }
    s.finish();
    gateway
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
    for (index, gateway) in gateways.iter().enumerate() {
        if !gateway.name.is_empty()
            && gateways[..index]
                .iter()
                .any(|other| other.name == gateway.name)
        {
            problems.push(
                &format!("gateways[{index}].name"),
                &format!(
                    "\"{}\" is used by an earlier gateway; names must be unique",
                    gateway.name
                ),
            );
        }
    }
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

fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    port.parse::<u16>().is_ok_and(|port| port > 0)
        && (is_hostname(host) || host.parse::<std::net::IpAddr>().is_ok())
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
            "server.colour: unknown key",
            "gateways[0].address: \"gw.example.com\" is not valid; accepted: host:port",
            "gateways[0].retry_initial: \"soon\" is not valid",
            "gateways[1].name: \"a\" is used by an earlier gateway",
            "gateways[1].max_connections: 0 is out of range; accepted: a whole number from 1 to 1000",
            "gateways: with several gateways, mark the one for unmatched senders with default = true",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(error.problems.len(), 8, "{text}");
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
    fn reports_bad_toml_syntax() {
        let error = Config::parse("[server\nlisten = 1").unwrap_err();
        assert!(error.to_string().contains("not valid TOML"));
    }

    #[test]
    fn unknown_sections_are_errors() {
        let error = Config::parse(
            "[[gateways]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\n[servr]\nlisten = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(error.problems.len(), 1);
        assert!(
            error.problems[0]
                .starts_with("servr: unknown key; accepted here: server, spool, gateways")
        );
    }
}
