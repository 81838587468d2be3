//! TLS for both sides of the relay, with rustls and its `ring` provider.
//!
//! [`Stream`] is what a session or a gateway connection reads and writes:
//! plain TCP until STARTTLS (or from the first byte on an implicit-TLS
//! listener), TLS after. [`server`] holds the certificate applications see,
//! reloaded when its files change; [`client`] the verification settings for
//! gateways. Whoever upgrades a stream must discard the plaintext it had
//! buffered before the handshake (CVE-2011-0411): nothing read before TLS may
//! be taken as said inside it.

pub mod client;
pub mod server;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The crypto provider every TLS configuration here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The TCP connection was taken for a TLS handshake that has not
    /// finished (or failed); any I/O here is an error.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection is in (or lost in) a TLS handshake",
    )
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Server(_) | Stream::Client(_))
    }

    /// Takes the TCP connection out for an upgrade, leaving `Detached`;
    /// `None` (and nothing taken) when the stream is not plain.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Detached) {
            Stream::Plain(stream) => Some(stream),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The TLS version and cipher suite, for logs and trace headers.
    pub fn tls_description(&self) -> Option<String> {
        let (version, suite) = match self {
            Stream::Plain(_) | Stream::Detached => return None,
            Stream::Server(stream) => {
                let (_, connection) = stream.get_ref();
                (
                    connection.protocol_version(),
                    connection.negotiated_cipher_suite(),
                )
            }
            Stream::Client(stream) => {
                let (_, connection) = stream.get_ref();
                (
                    connection.protocol_version(),
                    connection.negotiated_cipher_suite(),
                )
            }
        };
        Some(format!(
            "{} {}",
            version.map_or_else(|| "TLS".into(), |v| format!("{v:?}")),
            suite.map_or_else(String::new, |s| format!("{:?}", s.suite()))
        ))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Server(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Stream::Client(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Server(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Stream::Client(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Server(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Stream::Client(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Server(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Stream::Client(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}
