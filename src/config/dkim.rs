//! `[[dkim]]`: the keys smtp-shaper signs mail with, one per sender domain
//! (the keys themselves are loaded by `outbound::dkim`).

use super::*;

/// One `[[dkim]]` entry: sign mail from `domain` with this key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    /// A PKCS#8 PEM private key, RSA (rsa-sha256) or Ed25519 (ed25519-sha256).
    pub key: PathBuf,
}

pub(super) fn read_dkim(mut s: Section<'_>) -> DkimConfig {
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
}
