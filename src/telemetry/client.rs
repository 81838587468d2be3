//! A blocking HTTP/1.1 client for the endpoint: what the `smtp-shaper queue`
//! command (and the tests) use to talk to a running service. hyper's client
//! does the HTTP (status line, any header spelling, chunked or sized bodies);
//! this module adds the timeouts, a bound on the body, and the encoding of
//! the names a user types into a path.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// The largest answer body taken: a listing of 100,000 queued messages is
/// about 15 MiB, and a peer that sends without end must not exhaust memory.
pub const MAX_BODY: usize = 64 << 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: the status code and the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` to the endpoint at `address`, with the bearer
/// `token` when given; `accept` is the media type wanted. `path` must be
/// encoded already (see [`encode`] for the parts a user typed).
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    accept: &str,
    token: Option<&str>,
) -> io::Result<Answer> {
    request_within(address, method, path, accept, token, MAX_BODY)
}

/// [`request`], refusing an answer whose body exceeds `max_body` bytes.
pub fn request_within(
    address: SocketAddr,
    method: &str,
    path: &str,
    accept: &str,
    token: Option<&str>,
    max_body: usize,
) -> io::Result<Answer> {
    // A runtime of its own, on a thread of its own: callers are the command
    // line, blocking tasks, and tests that call this from async code, where
    // a runtime cannot be started on the caller's thread.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    tokio::time::timeout(
                        ANSWER_TIMEOUT,
                        exchange(address, method, path, accept, token, max_body),
                    )
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no complete answer within {}s", ANSWER_TIMEOUT.as_secs()),
                        )
                    })?
                })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

async fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    accept: &str,
    token: Option<&str>,
    max_body: usize,
) -> io::Result<Answer> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(invalid)?;
    // The connection is driven beside the request; it ends with the answer.
    let driver = tokio::spawn(connection);
    let method = Method::from_bytes(method.as_bytes()).map_err(invalid)?;
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, address.to_string())
        .header(ACCEPT, accept);
    if let Some(token) = token {
        builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder.body(Empty::<Bytes>::new()).map_err(invalid)?;
    let response = sender.send_request(request).await.map_err(invalid)?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the answer is larger than {max_body} bytes"),
                )
            } else {
                io::Error::new(io::ErrorKind::InvalidData, error)
            }
        })?
        .to_bytes();
    driver.abort();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn invalid(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// `text` as one path segment or query value: every byte but RFC 3986's
/// unreserved characters percent-encoded, so an id with `/`, `?`, `%` or a
/// space reaches the endpoint as one name (it decodes with
/// `telemetry::http`'s `decode`).
pub fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP peer on loopback: reads a request's head, returns
    /// it through the join handle, and answers `answer` verbatim.
    fn peer(answer: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            // The client may give up before the whole answer is written.
            let _ = stream.write_all(&answer);
            String::from_utf8(head).unwrap()
        });
        (address, handle)
    }

    #[test]
    fn a_chunked_answer_is_read_whatever_the_header_spelling() {
        let (address, peer) = peer(
            b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING:  Chunked\r\nConnection: close\r\n\r\n\
              6\r\nqueue \r\n9;ext=1\r\nis empty\n\r\n0\r\n\r\n"
                .to_vec(),
        );
        let answer = request(address, "GET", "/admin/queue", "text/plain", None).unwrap();
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "queue is empty\n")
        );
        let head = peer.join().unwrap();
        assert!(head.starts_with("GET /admin/queue HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("accept: text/plain\r\n"),
            "{head}"
        );
    }

    #[test]
    fn the_token_goes_out_and_an_error_status_comes_back() {
        let (address, peer) =
            peer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n".to_vec());
        let answer = request(
            address,
            "DELETE",
            "/admin/queue/x",
            "text/plain",
            Some("t0k"),
        )
        .unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (404, "no\n"));
        let head = peer.join().unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("delete /admin/queue/x http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("authorization: bearer t0k\r\n"), "{head}");
    }

    #[test]
    fn an_oversize_body_is_refused_sized_or_chunked() {
        let mut sized = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
        sized.extend(std::iter::repeat_n(b'x', 5000));
        let (address, _peer) = peer(sized);
        let error = request_within(address, "GET", "/status", "text/plain", None, 4096)
            .expect_err("5000 bytes exceed 4096");
        assert!(
            error.to_string().contains("larger than 4096 bytes"),
            "{error}"
        );

        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..5 {
            chunked.extend(b"400\r\n");
            chunked.extend(std::iter::repeat_n(b'y', 0x400));
            chunked.extend(b"\r\n");
        }
        chunked.extend(b"0\r\n\r\n");
        let (address, _peer) = peer(chunked);
        let error = request_within(address, "GET", "/status", "text/plain", None, 4096)
            .expect_err("5 KiB of chunks exceed 4096");
        assert!(
            error.to_string().contains("larger than 4096 bytes"),
            "{error}"
        );

        // The same answers under the bound are taken whole.
        let mut fits = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n".to_vec();
        fits.extend(std::iter::repeat_n(b'z', 4096));
        let (address, _peer) = peer(fits);
        let answer = request_within(address, "GET", "/status", "text/plain", None, 4096).unwrap();
        assert_eq!(answer.body.len(), 4096);
    }

    #[test]
    fn encoding_keeps_a_typed_name_one_segment() {
        assert_eq!(encode("3F2A-01_b.c~"), "3F2A-01_b.c~");
        assert_eq!(encode("a b/c?d%e&f#"), "a%20b%2Fc%3Fd%25e%26f%23");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
