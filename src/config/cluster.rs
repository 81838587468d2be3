//! `[cluster]`: the sidecars sharing each gateway's budget through Redis
//! (its password and the default node name are read in [`super::secret`]).

use super::secret::host_name;
use super::*;

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

pub(super) fn read_cluster(mut s: Section<'_>) -> ClusterConfig {
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
