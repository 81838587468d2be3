//! TLS for the tests: a self-signed certificate, with the server and client
//! configurations that use it.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::{Io, Talk};

/// A self-signed certificate for `localhost`, in files, for TLS tests.
pub struct TestCertificate {
    /// Holds the files: they are removed with the certificate.
    _dir: tempfile::TempDir,
    pub certificate: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestCertificate {
    pub fn new() -> TestCertificate {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generate a certificate");
        let dir = tempfile::tempdir().unwrap();
        let certificate = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&certificate, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        TestCertificate {
            _dir: dir,
            certificate,
            key,
        }
    }

    /// A server-side acceptor with this certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        use rustls_pki_types::pem::PemObject;
        let chain =
            vec![rustls_pki_types::CertificateDer::from_pem_file(&self.certificate).unwrap()];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// A line-level client over TLS on `stream`, trusting this certificate
    /// for the name `localhost`.
    pub async fn talk(&self, stream: Box<dyn Io>) -> Talk {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = self
            .connector()
            .connect(name, stream)
            .await
            .expect("TLS handshake with smtp-shaper");
        Talk::new(stream)
    }

    /// A client-side connector that trusts this certificate.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_file(&self.certificate).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}
