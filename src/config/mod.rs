//! Configuration: the TOML schema, its defaults and its validation.
//!
//! The file is read section by section through [`reader::Section`], which
//! collects every problem (with its line, key path and the accepted values)
//! instead of stopping at the first, so `check-config` can list them all at
//! once. Unknown keys are errors: a misspelt limit silently falling back to
//! its default is the kind of surprise a mail relay must not have.
//!
//! Each section's types live beside its reader: [`server`], [`http`],
//! [`spool`], [`cluster`], [`gateway`] (with its login), [`shaping`],
//! [`apps`], [`dkim`]; the secrets and the host name the file points at are read in
//! [`secret`]; this file holds the whole [`Config`], the orchestration of
//! [`Config::parse`] and the checks across sections.

mod apps;
mod cluster;
mod dkim;
mod gateway;
mod http;
mod network;
mod reader;
mod receivers;
mod restart;
mod secret;
mod sender;
mod server;
mod shaping;
mod spool;
#[cfg(test)]
mod tests;
pub mod units;

pub use apps::*;
pub use cluster::*;
pub use dkim::DkimConfig;
pub use gateway::*;
pub use http::*;
pub use network::Network;
pub use receivers::*;
pub use secret::{MIN_ADMIN_TOKEN_LEN, SecretSource, read_first_line};
pub use sender::SenderPattern;
pub use server::*;
pub use shaping::*;
pub use spool::*;

use std::net::SocketAddr;

use crate::shaper::rules::{
    AppClass, CountUnit, HELD_SHARE_OF_LIFETIME, Horizon, Limit, ShapingConfig, ShapingMode,
};
use std::path::PathBuf;
use std::time::Duration;

use apps::read_app;
use cluster::read_cluster;
use dkim::read_dkim;
use gateway::{check_gateways, read_gateway};
use http::read_http;
use reader::{Problems, Section};
use receivers::{merge_receivers, read_receiver};
#[cfg(test)]
use secret::host_name;
use server::read_server;
use shaping::read_shaping;
use spool::read_spool;

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
    /// The receivers whose own view is budgeted: the built-in ones with
    /// `[[receivers]]` applied.
    pub receivers: ReceiversConfig,
    /// `None`: every node shapes alone (no `[cluster]` section).
    pub cluster: Option<ClusterConfig>,
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
        let receiver_tables = root.array_of_sections("receivers");
        root.finish();

        let server = read_server(Section::new("server".into(), server, &mut problems));
        let spool = read_spool(Section::new("spool".into(), spool, &mut problems));
        let http = read_http(Section::new("http".into(), http, &mut problems));
        let cluster =
            cluster.map(|table| read_cluster(Section::new("cluster".into(), table, &mut problems)));
        let receiver_entries: Vec<_> = receiver_tables
            .into_iter()
            .enumerate()
            .map(|(index, table)| {
                read_receiver(Section::new(
                    format!("receivers[{index}]"),
                    table,
                    &mut problems,
                ))
            })
            .collect();
        check_unique(
            "receivers",
            "name",
            receiver_entries
                .iter()
                .map(|(entry, _)| entry.name.as_str()),
            &mut problems,
        );
        let receivers = merge_receivers(receiver_entries);
        let mut gateways: Vec<GatewayConfig> = gateway_tables
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
        for gateway in &mut gateways {
            gateway.shaping.receivers = receivers.rules(&gateway.shaping);
        }
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
                read_dkim(Section::new(format!("dkim[{index}]"), table, &mut problems))
            })
            .collect();

        problems.into_result(Config {
            server,
            spool,
            http,
            gateways,
            apps,
            dkim,
            receivers,
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

fn parse_path(text: &str) -> Option<PathBuf> {
    (!text.is_empty()).then(|| PathBuf::from(text))
}

fn parse_name(text: &str) -> Option<String> {
    (!text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| text.to_string())
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
