//! How the relay checks a gateway's certificate.
//!
//! With verification (gateway `tls = "required"` or `"implicit"`), the chain
//! must lead to a root in the gateway's `tls_ca_file` or, without one, in the
//! system's bundle, and name the gateway (`tls_server_name`, else the host
//! of its address). `"opportunistic"` encrypts whenever the gateway offers
//! STARTTLS but accepts any certificate, like Postfix's `may`: it protects
//! against listeners, not against an active attacker.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::provider;
use crate::config::{GatewayConfig, GatewayTls};

/// How to speak TLS to one gateway, built once at start.
#[derive(Clone)]
pub struct Upstream {
    pub mode: GatewayTls,
    pub config: Arc<ClientConfig>,
    /// The name its certificate must carry (with verification).
    pub server_name: ServerName<'static>,
}

impl Upstream {
    /// The settings for `gateway`; fails when its CA file (or the system
    /// bundle, for a verified mode) cannot be read.
    pub fn for_gateway(gateway: &GatewayConfig) -> io::Result<Upstream> {
        let config = match gateway.tls {
            GatewayTls::Required | GatewayTls::Implicit => {
                verifying(gateway.tls_ca_file.as_deref()).map_err(|error| {
                    io::Error::new(error.kind(), format!("gateway {}: {error}", gateway.name))
                })?
            }
            GatewayTls::Opportunistic | GatewayTls::None => unverified(),
        };
        let host = match &gateway.tls_server_name {
            Some(name) => name.clone(),
            None => {
                let host = gateway
                    .address
                    .rsplit_once(':')
                    .map_or(gateway.address.as_str(), |(host, _)| host);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }
        };
        let server_name = ServerName::try_from(host.clone()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "gateway {}: {host:?} is not a name TLS can verify",
                    gateway.name
                ),
            )
        })?;
        Ok(Upstream {
            mode: gateway.tls,
            config,
            server_name,
        })
    }
}

/// Where Debian, Ubuntu, Alpine and Fedora keep the system's roots.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A client configuration that verifies against `ca_file`, or the system's
/// roots when it is `None`.
pub fn verifying(ca_file: Option<&Path>) -> io::Result<Arc<ClientConfig>> {
    let path = match ca_file {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|path| path.exists())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "no system CA bundle found; set the gateway's tls_ca_file",
                )
            })?
            .to_path_buf(),
    };
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(&path)
        .map_err(|error| io::Error::other(format!("{}: {error}", path.display())))?;
    for certificate in certificates {
        let certificate = certificate
            .map_err(|error| io::Error::other(format!("{}: {error}", path.display())))?;
        // A bundle may hold a root rustls cannot use; skip it, keep the rest.
        let _ = roots.add(certificate);
    }
    if roots.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no usable CA certificate",
            path.display()
        )));
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that encrypts but accepts any certificate (see
/// the module notes).
pub fn unverified() -> Arc<ClientConfig> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts any certificate, but still checks the handshake signatures (so
/// the session keys belong to whoever holds that certificate).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
