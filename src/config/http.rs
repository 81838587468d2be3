//! `[http]`: the operators' endpoint and its admin token.

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
