//! DKIM signing (RFC 6376, with ed25519-sha256 from RFC 8463) of relayed
//! mail, per sender domain: `[[dkim]] domain, selector, key`.
//!
//! Signed at delivery, on the message as relayed (our Received: header is
//! not signed, being a trace field). The signing domain is the From:
//! header's (what DMARC aligns on), else the envelope sender's. Relaxed
//! canonicalization for headers and body; the signed headers are those of
//! [`SIGNED_HEADERS`] that the message has. Canonicalization is pure and
//! tested against an independent verifier (Python's dkimpy) in tests/dkim.rs.

use std::io;

use base64ct::{Base64, Encoding};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::DkimConfig;
use crate::smtp::header;

/// Header fields signed when present, in this order (From always is).
pub const SIGNED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
];

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One domain's signing key.
pub struct Signer {
    pub domain: String,
    pub selector: String,
    key: Key,
}

impl Signer {
    /// Loads the PKCS#8 PEM key (RSA or Ed25519) of `config`.
    pub fn load(config: &DkimConfig) -> io::Result<Signer> {
        let invalid = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("DKIM key {}: {why}", config.key.display()),
            )
        };
        let key = match PrivateKeyDer::from_pem_file(&config.key)
            .map_err(|error| invalid(error.to_string()))?
        {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let der = pkcs8.secret_pkcs8_der();
                match RsaKeyPair::from_pkcs8(der) {
                    Ok(rsa) => Key::Rsa(rsa),
                    Err(_) => {
                        Key::Ed25519(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(
                            |error| invalid(format!("neither an RSA nor an Ed25519 key: {error}")),
                        )?)
                    }
                }
            }
            _ => {
                return Err(invalid(
                    "expected a PKCS#8 \"PRIVATE KEY\" PEM block".into(),
                ));
            }
        };
        Ok(Signer {
            domain: config.domain.to_ascii_lowercase(),
            selector: config.selector.clone(),
            key,
        })
    }

    /// The DKIM-Signature header field (with CRLF) for `message` (headers,
    /// blank line, body), signed at `unix_seconds`.
    pub fn sign(&self, message: &[u8], unix_seconds: u64) -> io::Result<Vec<u8>> {
        let (headers, body) = header::split(message);
        let fields = header::fields(headers);
        let mut signed_names = Vec::new();
        let mut signed = Vec::new();
        for name in SIGNED_HEADERS {
            // The last instance of a field is the one a verifier takes first.
            if let Some(field) = fields
                .iter()
                .rev()
                .find(|field| header::field_name(field).eq_ignore_ascii_case(name))
            {
                signed.extend_from_slice(&relaxed_header(field));
                signed_names.push(*name);
            }
        }
        let body_hash = Base64::encode_string(
            ring::digest::digest(&ring::digest::SHA256, &relaxed_body(body)).as_ref(),
        );
        let algorithm = match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        };
        let unsigned = format!(
            "DKIM-Signature: v=1; a={algorithm}; c=relaxed/relaxed; d={}; s={}; t={unix_seconds}; h={}; bh={body_hash}; b=",
            self.domain,
            self.selector,
            signed_names.join(":")
        );
        let mut input = signed;
        let canonical = relaxed_header(unsigned.as_bytes());
        // The signature field itself is hashed without its final CRLF.
        input.extend_from_slice(&canonical[..canonical.len() - 2]);
        let signature = match &self.key {
            Key::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    &input,
                    &mut signature,
                )
                .map_err(|_| io::Error::other("RSA signing failed"))?;
                signature
            }
            Key::Ed25519(key) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, &input);
                key.sign(digest.as_ref()).as_ref().to_vec()
            }
        };
        Ok(format!("{unsigned}{}\r\n", Base64::encode_string(&signature)).into_bytes())
    }
}

/// The domain to sign as: the From: header's address, else `sender`'s.
pub fn signing_domain(message: &[u8], sender: &str) -> Option<String> {
    let (headers, _) = header::split(message);
    let from = header::fields(headers)
        .into_iter()
        .rev()
        .find(|field| header::field_name(field).eq_ignore_ascii_case("from"))
        .and_then(|field| {
            let value = String::from_utf8_lossy(&field[header::field_name(&field).len() + 1..])
                .into_owned();
            let address = match (value.rfind('<'), value.rfind('>')) {
                (Some(open), Some(close)) if open < close => value[open + 1..close].to_string(),
                _ => value.trim().to_string(),
            };
            address
                .rsplit_once('@')
                .map(|(_, domain)| domain.trim().to_ascii_lowercase())
        });
    from.or_else(|| {
        sender
            .rsplit_once('@')
            .map(|(_, domain)| domain.to_ascii_lowercase())
    })
}

/// Relaxed header canonicalization (RFC 6376 3.4.2), CRLF-terminated.
pub fn relaxed_header(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    let name = String::from_utf8_lossy(&field[..colon])
        .trim()
        .to_ascii_lowercase();
    let value = field.get(colon + 1..).unwrap_or(&[]);
    let mut out = name.into_bytes();
    out.push(b':');
    let mut pending_space = false;
    let mut started = false;
    for &byte in value {
        match byte {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = started,
            _ => {
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(byte);
                started = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Relaxed body canonicalization (RFC 6376 3.4.4).
pub fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = body
        .split(|&b| b == b'\n')
        .map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let mut out = Vec::with_capacity(line.len());
            let mut pending_space = false;
            for &byte in line {
                if byte == b' ' || byte == b'\t' {
                    pending_space = true;
                } else {
                    if pending_space {
                        out.push(b' ');
                        pending_space = false;
                    }
                    out.push(byte);
                }
            }
            out
        })
        .collect();
    while lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    let mut out = Vec::with_capacity(body.len());
    for line in lines {
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Loads every configured key; fails on the first that does not load.
pub fn load_all(configs: &[DkimConfig]) -> io::Result<Vec<Signer>> {
    configs.iter().map(Signer::load).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_canonicalization_follows_rfc_6376_examples() {
        // RFC 6376 3.4.5.
        assert_eq!(relaxed_header(b"A: X\r\n"), b"a:X\r\n");
        assert_eq!(relaxed_header(b"B : Y\t\r\n\tZ  \r\n"), b"b:Y Z\r\n");
        assert_eq!(relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
    }

    #[test]
    fn the_signing_domain_is_the_from_headers() {
        let message =
            b"Received: x\r\nFrom: Billing <billing@Example.COM>\r\nTo: a@b\r\n\r\nhi\r\n";
        assert_eq!(
            signing_domain(message, "bounce@other.test").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            signing_domain(b"To: a@b\r\n\r\nhi\r\n", "app@other.test").as_deref(),
            Some("other.test")
        );
    }
}
