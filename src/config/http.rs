//! `[http]`: the operators' endpoint (its admin token is read in
//! [`super::secret`]).

use super::*;

/// `[http]`: the operators' endpoint (metrics, health, status, queue admin).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `None` (`listen = ""`) turns the endpoint off.
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token the admin API requires. Without one
    /// the admin API answers loopback clients only.
    pub admin_token_file: Option<PathBuf>,
}

pub(super) fn read_http(mut s: Section<'_>) -> HttpConfig {
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
