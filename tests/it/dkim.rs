//! DKIM signing checked by an independent verifier: Python's dkimpy
//! (Debian package python3-dkim), given the public key as the DNS answer.
//! Without dkimpy (or openssl for the RSA key) the test says SKIPPED,
//! unless SMTP_SHAPER_REQUIRE_TOOLS=1 (CI), where that fails.

use std::process::Command;

use smtp_shaper::config::DkimConfig;
use smtp_shaper::outbound::dkim::{SIGNED_HEADERS, Signer};

use crate::support::{self, Client, Harness, eventually};

/// A python3 that can `import dkim`, or None after saying why.
fn dkimpy() -> Option<&'static str> {
    support::python_with("dkim", "python3-dkim python3-nacl")
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// An RSA key of `bits` in `dir`: the PEM file and its DKIM TXT record.
fn rsa_key(dir: &std::path::Path, name: &str, bits: u32) -> (std::path::PathBuf, String) {
    let key = dir.join(name);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        &format!("rsa_keygen_bits:{bits}"),
        "-out",
        key.to_str().unwrap(),
    ]);
    let public = openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    use base64ct::Encoding;
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        base64ct::Base64::encode_string(&public)
    );
    (key, record)
}

/// True when dkimpy verifies `message` with `record` as the key's TXT record.
fn verifies(python: &str, dir: &std::path::Path, message: &[u8], record: &str) -> bool {
    dkimpy_verifies(python, dir, message, record, false)
}

/// As [`verifies`], for an RSA signature, without the `from` that dkimpy
/// adds to every h= it verifies (its bug 644046): the verdict of a verifier
/// that follows RFC 6376 to the letter, as most do.
fn verifies_strictly(python: &str, dir: &std::path::Path, message: &[u8], record: &str) -> bool {
    dkimpy_verifies(python, dir, message, record, true)
}

fn dkimpy_verifies(
    python: &str,
    dir: &std::path::Path,
    message: &[u8],
    record: &str,
    strict: bool,
) -> bool {
    let path = dir.join("message.eml");
    std::fs::write(&path, message).unwrap();
    let script = format!(
        r#"
import dkim, sys
record = {record:?}.encode()
message = open({path:?}, "rb").read()
if {strict}:
    hash_headers = dkim.hash_headers
    def as_signed(hasher, canon, headers, include, sigheader, sig):
        assert include[-1] == b"from", include
        return hash_headers(hasher, canon, headers, include[:-1], sigheader, sig)
    dkim.hash_headers = as_signed
ok = dkim.verify(message, dnsfunc=lambda name, timeout=5: record)
sys.exit(0 if ok else 1)
"#,
        path = path.display().to_string(),
        strict = if strict { "True" } else { "False" },
    );
    Command::new(python)
        .args(["-c", &script])
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_mail_carries_a_signature_dkimpy_verifies() {
    let Some(python) = dkimpy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = rsa_key(dir.path(), "example.com.pem", 2048);
    // And an Ed25519 key (RFC 8463) for a second domain.
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_key = dir.path().join("example.net.pem");
    std::fs::write(&ed_key, ed25519.serialize_pem()).unwrap();
    let ed_record = {
        use base64ct::Encoding;
        format!(
            "v=DKIM1; k=ed25519; p={}",
            base64ct::Base64::encode_string(ed25519.public_key_raw())
        )
    };
    let dkim = vec![
        DkimConfig {
            domain: "example.com".into(),
            selector: "s1".into(),
            key: key.clone(),
        },
        DkimConfig {
            domain: "example.net".into(),
            selector: "ed".into(),
            key: ed_key,
        },
    ];
    let h = Harness::with(move |config| config.dkim = dkim).await;
    let body = b"From: Billing <billing@example.com>\r\nTo: You <you@example.org>\r\nSubject:  Your   invoice \r\n\tfor May\r\nMessage-ID: <1@example.com>\r\n\r\nHello,\r\n.line with a dot\r\n  spaced   out  \r\n\r\n\r\n";
    Client::ready(h.service.smtp_address())
        .await
        .accepted("bounces@example.com", &["you@example.org"], body)
        .await;
    eventually("delivered", || h.sink.count() == 1).await;
    let relayed = h.sink.messages()[0].data.clone();
    let text = String::from_utf8_lossy(&relayed);
    assert!(
        text.starts_with(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s1;"
        ),
        "{text}"
    );
    assert!(
        text.replace("\r\n\t", "")
            .contains("h=from:from:to:subject:message-id;"),
        "{text}"
    );
    assert!(
        verifies(python, dir.path(), &relayed, &record),
        "dkimpy rejects:\n{text}"
    );
    // The verifier is not a rubber stamp: a changed body fails.
    let tampered = text.replace("Hello,", "Hullo,");
    assert!(!verifies(python, dir.path(), tampered.as_bytes(), &record));

    // Another domain is not signed.
    Client::ready(h.service.smtp_address())
        .await
        .accepted(
            "app@other.test",
            &["you@example.org"],
            b"From: app@other.test\r\n\r\nhi\r\n",
        )
        .await;
    eventually("delivered", || h.sink.count() == 2).await;
    assert!(!String::from_utf8_lossy(&h.sink.messages()[1].data).contains("DKIM-Signature"));

    Client::ready(h.service.smtp_address())
        .await
        .accepted(
            "app@example.net",
            &["you@example.org"],
            b"From: app@example.net\r\nSubject: ed\r\n\r\nsigned with ed25519\r\n",
        )
        .await;
    eventually("delivered", || h.sink.count() == 3).await;
    let relayed = h.sink.messages()[2].data.clone();
    let text = String::from_utf8_lossy(&relayed);
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{text}"
    );
    assert!(
        verifies(python, dir.path(), &relayed, &ed_record),
        "dkimpy rejects:\n{text}"
    );
    h.shutdown().await;
}

#[test]
fn a_long_signature_is_folded_and_a_second_from_breaks_it() {
    let Some(python) = dkimpy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = rsa_key(dir.path(), "long.pem", 4096);
    // Longer than the 46 characters past which one line passed 998 octets.
    let domain = "transactional-mail.billing-department.example-corp.com";
    let signer = Signer::load(&DkimConfig {
        domain: domain.into(),
        selector: "s2026".into(),
        key,
    })
    .unwrap();
    let mut message = String::new();
    for name in SIGNED_HEADERS {
        let value = match *name {
            "from" => format!("Billing <billing@{domain}>"),
            "message-id" => format!("<1@{domain}>"),
            other => format!("the {other} field"),
        };
        message.push_str(&format!("{name}: {value}\r\n"));
    }
    message.push_str("\r\nHello,\r\nyour invoice.\r\n");
    let field = signer.sign(message.as_bytes(), 1_700_000_000).unwrap();
    let field = String::from_utf8(field).unwrap();
    for line in field.split("\r\n") {
        assert!(line.len() <= 78, "{} octets: {line:?}", line.len());
    }
    let signed = format!("{field}{message}");
    assert!(
        verifies(python, dir.path(), signed.as_bytes(), &record),
        "dkimpy rejects:\n{signed}"
    );
    assert!(
        verifies_strictly(python, dir.path(), signed.as_bytes(), &record),
        "dkimpy without its own extra from rejects:\n{signed}"
    );
    // A From: added above the signed one: with `from` once in h=, a verifier
    // pairs it with the bottom From: only and accepts the message.
    let forged = format!("{field}From: CEO <ceo@{domain}>\r\n{message}");
    assert!(
        !verifies_strictly(python, dir.path(), forged.as_bytes(), &record),
        "a second From: goes unnoticed:\n{forged}"
    );
    assert!(!verifies(python, dir.path(), forged.as_bytes(), &record));
}
