//! The certificate the proxy shows applications (STARTTLS and the implicit
//! TLS listener). The PEM files are read at start (a bad file stops the
//! start with a clear error) and read again when their modification time
//! changes, so a renewed certificate is used without a restart; a renewal
//! that does not load is logged and the previous certificate stays.

use crate::poison::LockRecovered;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::provider;

/// The server side's certificate and key, reloaded when they change.
pub struct ServerTls {
    certificate: PathBuf,
    key: PathBuf,
    current: Mutex<Loaded>,
}

struct Loaded {
    modified: (Option<SystemTime>, Option<SystemTime>),
    acceptor: TlsAcceptor,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Builds an acceptor from the two PEM files.
fn load(certificate: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|error| invalid(certificate, &format!("cannot read certificates: {error}")))?
        .collect::<Result<_, _>>()
        .map_err(|error| invalid(certificate, &format!("bad PEM: {error}")))?;
    if chain.is_empty() {
        return Err(invalid(certificate, "no CERTIFICATE block in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| invalid(key, &format!("no usable private key: {error}")))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| {
            invalid(
                certificate,
                &format!("certificate and key do not fit: {error}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl ServerTls {
    /// Loads the certificate chain and key (PEM).
    pub fn load(certificate: &Path, key: &Path) -> io::Result<ServerTls> {
        let acceptor = load(certificate, key)?;
        Ok(ServerTls {
            current: Mutex::new(Loaded {
                modified: (modified(certificate), modified(key)),
                acceptor,
            }),
            certificate: certificate.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// The acceptor for a new handshake, reloading the files first if they
    /// changed since the last load.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut current = self.current.lock_recovered();
        let now = (modified(&self.certificate), modified(&self.key));
        if now != current.modified {
            current.modified = now;
            match load(&self.certificate, &self.key) {
                Ok(acceptor) => {
                    tracing::info!(certificate = %self.certificate.display(), "TLS certificate reloaded");
                    current.acceptor = acceptor;
                }
                Err(error) => {
                    tracing::error!(%error, "TLS certificate changed but does not load; keeping the previous one");
                }
            }
        }
        current.acceptor.clone()
    }
}
