//! DKIM signing (RFC 6376, with ed25519-sha256 from RFC 8463) of relayed
//! mail, per sender domain: `[[dkim]] domain, selector, key`.
//!
//! Signed at delivery, on the message as relayed (our Received: header is not
//! signed, being a trace field). The signing domain is the From: header's
//! (what DMARC aligns on), else the envelope sender's: policy chooses it
//! (`policy::alignment::signing_domain`), so that the alignment check after
//! DATA predicts this signature. Relaxed canonicalization for headers and
//! body; the signed headers are those of [`SIGNED_HEADERS`] that the message
//! has, and From: is over-signed (named once more than it occurs, RFC 6376
//! 8.15) so that a From: added on the way breaks the signature instead of
//! being shown to the reader. The DKIM-Signature field is folded at
//! [`LINE_WIDTH`] octets where RFC 6376 allows folding whitespace: an
//! RSA-4096 signature alone is 684 octets of base64, and RFC 5322 caps a line
//! at 998. Canonicalization is pure and tested against an independent
//! verifier (Python's dkimpy) in tests/it/dkim.rs.

use std::io;

use base64ct::{Base64, Encoding};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::DkimConfig;
use crate::smtp::header;

/// Header fields signed when present, in this order. `from` is always in
/// `h=`, once for each From: field and once more for the one that must not
/// be added.
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

    /// The DKIM-Signature header field (folded, with CRLF) for `message`
    /// (headers, blank line, body), signed at `unix_seconds`.
    pub fn sign(&self, message: &[u8], unix_seconds: u64) -> io::Result<Vec<u8>> {
        let (headers, body) = header::split(message);
        let fields = header::fields(headers);
        let mut signed_names = Vec::new();
        let mut signed = Vec::new();
        for name in SIGNED_HEADERS {
            let mut instances = fields
                .iter()
                .rev()
                .filter(|field| header::field_name(field).eq_ignore_ascii_case(name));
            if *name == "from" {
                // A verifier pairs the names of h= with the fields from the
                // bottom up, and a name left without a field hashes as
                // nothing: so every From: is signed and one more `from`
                // claims that there is no other.
                for field in instances {
                    signed.extend_from_slice(&relaxed_header(field));
                    signed_names.push(*name);
                }
                signed_names.push(*name);
            } else if let Some(field) = instances.next() {
                // The last instance of a field is the one a verifier takes first.
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
        let mut field = Folded::new("DKIM-Signature:");
        for tag in [
            "v=1;".to_string(),
            format!("a={algorithm};"),
            "c=relaxed/relaxed;".to_string(),
            format!("d={};", self.domain),
            format!("s={};", self.selector),
            format!("t={unix_seconds};"),
        ] {
            field.word(&tag);
        }
        // h= may fold on either side of each colon (RFC 6376 3.5).
        let last = signed_names.len() - 1;
        for (index, name) in signed_names.iter().enumerate() {
            let end = if index == last { ";" } else { "" };
            if index == 0 {
                field.word(&format!("h={name}{end}"));
            } else {
                field.glued(&format!(":{name}{end}"));
            }
        }
        field.word(&format!("bh={body_hash};"));
        field.word("b=");
        let mut input = signed;
        // A verifier hashes this field with the value of b= (folding
        // included) taken out, and without its final CRLF: what we have
        // before the signature is appended.
        let canonical = relaxed_header(field.text.as_bytes());
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
        field.base64(&Base64::encode_string(&signature));
        field.text.push_str("\r\n");
        Ok(field.text.into_bytes())
    }
}

/// Where the DKIM-Signature field is folded (RFC 5322 2.1.1's
/// recommendation); only a d= or s= value longer than that, which cannot be
/// folded, makes a longer line.
pub const LINE_WIDTH: usize = 78;

/// A header field built by words, folded (CRLF TAB) before a word that
/// would pass [`LINE_WIDTH`].
struct Folded {
    text: String,
    /// Octets on the current line.
    line: usize,
}

impl Folded {
    fn new(name: &str) -> Folded {
        Folded {
            text: name.to_string(),
            line: name.len(),
        }
    }

    fn fold(&mut self) {
        self.text.push_str("\r\n\t");
        self.line = 1;
    }

    /// `word` after a space, or on the next line when it does not fit.
    fn word(&mut self, word: &str) {
        if self.line + 1 + word.len() > LINE_WIDTH && self.line > 1 {
            self.fold();
        } else {
            self.text.push(' ');
            self.line += 1;
        }
        self.text.push_str(word);
        self.line += word.len();
    }

    /// `word` right after the text, or on the next line when it does not fit.
    fn glued(&mut self, word: &str) {
        if self.line + word.len() > LINE_WIDTH {
            self.fold();
        }
        self.text.push_str(word);
        self.line += word.len();
    }

    /// Base64 text, which may fold anywhere: each line filled.
    fn base64(&mut self, mut text: &str) {
        while !text.is_empty() {
            if self.line >= LINE_WIDTH {
                self.fold();
            }
            let (now, rest) = text.split_at((LINE_WIDTH - self.line).min(text.len()));
            self.text.push_str(now);
            self.line += now.len();
            text = rest;
        }
    }
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

    fn ed25519_signer(domain: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer {
            domain: domain.into(),
            selector: "s1".into(),
            key: Key::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
        }
    }

    /// The value of `tag` in a folded DKIM-Signature field, unfolded.
    fn tag_value(field: &str, tag: &str) -> String {
        let unfolded = field.replace("\r\n\t", "");
        unfolded
            .split(';')
            .find_map(|part| part.trim().strip_prefix(&format!("{tag}=")))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn the_signature_field_is_folded_within_the_line_width() {
        let domain = "mail.billing-department.example-corporation.com".to_string();
        let mut message = String::new();
        for name in SIGNED_HEADERS {
            message.push_str(&format!("{name}: the {name} field\r\n"));
        }
        message.push_str("\r\nbody\r\n");
        let field = ed25519_signer(&domain)
            .sign(message.as_bytes(), 1_700_000_000)
            .unwrap();
        let field = String::from_utf8(field).unwrap();
        assert!(field.ends_with("\r\n") && !field.ends_with("\r\n\r\n"));
        let lines: Vec<&str> = field.trim_end_matches("\r\n").split("\r\n").collect();
        assert!(lines.len() > 3, "{field}");
        for line in &lines {
            assert!(line.len() <= LINE_WIDTH, "{} octets: {line:?}", line.len());
        }
        for line in &lines[1..] {
            assert!(line.starts_with('\t'), "continuation without FWS: {line:?}");
        }
        assert_eq!(
            tag_value(&field, "h"),
            format!("from:{}", SIGNED_HEADERS.join(":"))
        );
        assert_eq!(tag_value(&field, "d"), domain);
        assert_eq!(
            Base64::decode_vec(&tag_value(&field, "b")).unwrap().len(),
            64
        );
    }

    #[test]
    fn from_is_named_once_more_than_it_occurs() {
        let signer = ed25519_signer("example.com");
        let h = |message: &[u8]| {
            tag_value(
                &String::from_utf8(signer.sign(message, 0).unwrap()).unwrap(),
                "h",
            )
        };
        assert_eq!(
            h(b"From: a@example.com\r\nTo: b@c\r\n\r\nx\r\n"),
            "from:from:to"
        );
        assert_eq!(
            h(b"From: a@example.com\r\nSubject: s\r\nFrom: b@example.com\r\n\r\nx\r\n"),
            "from:from:from:subject"
        );
        assert_eq!(h(b"Subject: s\r\n\r\nx\r\n"), "from:subject");
    }
}
