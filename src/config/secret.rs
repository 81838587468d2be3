//! What the file points at rather than says: the secrets it names a file
//! or an environment variable for (the cluster's Redis password, the admin
//! token, a gateway's password, OAuth tokens and client secrets), and this
//! machine's host name (a node's default name).
//!
//! One place reads them, so every secret is read the same way: a file's
//! first line or a variable's value, surrounding whitespace trimmed, never
//! empty. An error names the key and the file or variable, never the
//! content. They are read when needed, not when the file is parsed: a
//! rotated secret is taken at the next read, and `check-config` reads them
//! to say what `run` would fail on.

use std::io;
use std::path::{Path, PathBuf};

use super::{ClusterConfig, HttpConfig};

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The value of this environment variable.
    Env(String),
    /// The first line of this file.
    File(PathBuf),
}

impl SecretSource {
    /// The secret; `file_key` and `env_key` are the keys that name the
    /// file or the variable, for the error.
    pub fn read(&self, file_key: &str, env_key: &str) -> io::Result<String> {
        match self {
            SecretSource::Env(name) => read_env(name, env_key),
            SecretSource::File(path) => read_first_line(path, file_key),
        }
    }
}

/// The first line of `path`, trimmed, which must not be empty.
pub fn read_first_line(path: &Path, key: &str) -> io::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot read {} ({key}): {error}", path.display()),
        )
    })?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} ({key}) is empty", path.display()),
        ));
    }
    Ok(line.to_string())
}

/// The value of the environment variable `name`, trimmed, which must be
/// set and not empty.
fn read_env(name: &str, key: &str) -> io::Result<String> {
    env_value(name, key, std::env::var(name).ok())
}

/// [`read_env`]'s rule for the `value` found (`None`: not set).
fn env_value(name: &str, key: &str, value: Option<String>) -> io::Result<String> {
    let value = value.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("the environment variable {name} ({key}) is not set"),
        )
    })?;
    let value = value.trim();
    if value.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the environment variable {name} ({key}) is empty"),
        ));
    }
    Ok(value.to_string())
}

/// The shortest admin token accepted: a guessable one is no protection for
/// an API that deletes mail.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl HttpConfig {
    /// The admin bearer token from `admin_token_file`, if one is
    /// configured. The service and the `queue` command both read it here,
    /// so a token one of them takes the other takes too.
    pub fn admin_token(&self) -> io::Result<Option<String>> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let token = read_first_line(path, "http.admin_token_file")?;
        if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "http.admin_token_file {}: the token must be at least {MIN_ADMIN_TOKEN_LEN} characters",
                    path.display()
                ),
            ));
        }
        Ok(Some(token))
    }
}

impl ClusterConfig {
    /// The Redis password, if one is configured (a file wins over the
    /// variable).
    pub fn password(&self) -> io::Result<Option<String>> {
        match (&self.password_file, &self.password_env) {
            (Some(path), _) => read_first_line(path, "cluster.password_file").map(Some),
            (None, Some(name)) => read_env(name, "cluster.password_env").map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// This machine's host name (the pod name in Kubernetes).
pub(super) fn host_name() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_its_first_line_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "  s3cret \nsecond line\n").unwrap();
        let source = SecretSource::File(file.clone());
        assert_eq!(source.read("x_file", "x_env").unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        let error = source.read("x_file", "x_env").unwrap_err().to_string();
        assert!(error.ends_with("(x_file) is empty"), "{error}");
        assert!(!error.contains("s3cret"));
        let missing = SecretSource::File(dir.path().join("missing"));
        let error = missing.read("x_file", "x_env").unwrap_err().to_string();
        assert!(error.starts_with("cannot read ") && error.contains("(x_file)"));
        // A variable is trimmed too; an empty one is refused (the rule on
        // a value found: setting variables races with other tests).
        let padded = env_value("V", "x_env", Some(" s3cret\n".into()));
        assert_eq!(padded.unwrap(), "s3cret");
        let error = env_value("V", "x_env", Some("  ".into())).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the environment variable V (x_env) is empty"
        );
        let unset = SecretSource::Env("SMTP_SHAPER_TEST_SURELY_UNSET".into());
        let error = unset.read("x_file", "x_env").unwrap_err().to_string();
        assert_eq!(
            error,
            "the environment variable SMTP_SHAPER_TEST_SURELY_UNSET (x_env) is not set"
        );
    }

    #[test]
    fn the_admin_token_is_its_first_line_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let http = |file: &Path| HttpConfig {
            listen: None,
            admin_token_file: Some(file.to_path_buf()),
        };
        std::fs::write(&file, " 0123456789abcdef \nrest\n").unwrap();
        assert_eq!(
            http(&file).admin_token().unwrap().as_deref(),
            Some("0123456789abcdef")
        );
        std::fs::write(&file, "short\n0123456789abcdef\n").unwrap();
        let error = http(&file).admin_token().unwrap_err().to_string();
        assert!(
            error.ends_with("the token must be at least 16 characters"),
            "{error}"
        );
    }
}
