//! The application side: a raw SMTP client that sends exactly the bytes it
//! is given, and a line-level one over any stream (plain or TLS).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::Io;

/// A line-level SMTP client over any stream (plain or TLS), for the TLS
/// and AUTH tests: replies come back with every line's text.
pub struct Talk {
    stream: BufReader<Box<dyn Io>>,
}

impl Talk {
    pub fn new(stream: impl Io + 'static) -> Talk {
        Talk {
            stream: BufReader::new(Box::new(stream)),
        }
    }

    /// Reads one reply: its code and all its lines' texts.
    pub async fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(30), self.stream.read_line(&mut line))
                    .await
                    .expect("a reply within 30 s")
                    .expect("read");
            assert!(read > 0, "connection closed; lines so far: {lines:?}");
            let code = line[..3].parse().expect("a reply code");
            lines.push(line[4..].trim_end().to_string());
            if line.as_bytes()[3] != b'-' {
                return (code, lines);
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    pub async fn command(&mut self, line: &str) -> (u16, Vec<String>) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Hands the raw stream over for a TLS handshake (nothing buffered).
    pub fn into_inner(self) -> Box<dyn Io> {
        assert!(self.stream.buffer().is_empty(), "unread input before TLS");
        self.stream.into_inner()
    }
}

/// A raw SMTP client: sends exactly the bytes it is given.
pub struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

/// A reply as the client read it: the code and the last line's text.
#[derive(Debug, Clone)]
pub struct ClientReply {
    pub code: u16,
    pub text: String,
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(address: SocketAddr) -> (Client, ClientReply) {
        let stream = TcpStream::connect(address)
            .await
            .expect("connect to smtp-shaper");
        Client::greeted(stream).await
    }

    async fn greeted(stream: TcpStream) -> (Client, ClientReply) {
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = client.reply().await.expect("greeting");
        (client, greeting)
    }

    /// Like [`Client::connect`], from the local address `from` (another
    /// loopback address plays another client machine).
    pub async fn connect_from(
        from: std::net::IpAddr,
        address: SocketAddr,
    ) -> (Client, ClientReply) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind the client side");
        let stream = socket
            .connect(address)
            .await
            .expect("connect to smtp-shaper");
        Client::greeted(stream).await
    }

    /// Like [`Client::ready`], but None (no panic) when the server is down
    /// or goes away meanwhile.
    pub async fn try_ready(address: SocketAddr) -> Option<Client> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address))
            .await
            .ok()?
            .ok()?;
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(reader),
            writer,
        };
        (client.reply().await?.code == 220).then_some(())?;
        client.writer.write_all(b"EHLO app.test\r\n").await.ok()?;
        (client.reply().await?.code == 250).then_some(client)
    }

    /// Connects, says EHLO, expects 220 and 250.
    pub async fn ready(address: SocketAddr) -> Client {
        Client::said_ehlo(Client::connect(address).await).await
    }

    /// Like [`Client::ready`], from the local address `from`.
    pub async fn ready_from(from: std::net::IpAddr, address: SocketAddr) -> Client {
        Client::said_ehlo(Client::connect_from(from, address).await).await
    }

    async fn said_ehlo((mut client, greeting): (Client, ClientReply)) -> Client {
        assert_eq!(greeting.code, 220, "{greeting:?}");
        let ehlo = client.command("EHLO app.test").await;
        assert_eq!(ehlo.code, 250, "{ehlo:?}");
        client
    }

    /// The TCP connection back (for a TLS upgrade); nothing may be unread.
    pub fn into_stream(self) -> TcpStream {
        assert!(self.reader.buffer().is_empty(), "unread input");
        self.reader.into_inner().reunite(self.writer).unwrap()
    }

    /// Writes `bytes`; false when the connection is gone (no panic).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Reads one (possibly multi-line) reply; None when the server closed.
    pub async fn reply(&mut self) -> Option<ClientReply> {
        let mut line = String::new();
        loop {
            line.clear();
            let read =
                tokio::time::timeout(Duration::from_secs(60), self.reader.read_line(&mut line))
                    .await
                    .expect("reply within 60s")
                    .ok()?;
            if read == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(ClientReply {
                    code: line.get(..3)?.parse().ok()?,
                    text: line.get(4..).unwrap_or("").trim_end().to_string(),
                });
            }
        }
    }

    /// Reads one reply line into `line`; true when it was the reply's last.
    pub async fn reply_line(&mut self, line: &mut String) -> bool {
        self.reader
            .read_line(line)
            .await
            .expect("read a reply line");
        line.as_bytes().get(3) != Some(&b'-')
    }

    /// Reads `n` replies (to pipelined commands) and returns their codes.
    pub async fn reply_codes(&mut self, n: usize) -> Vec<u16> {
        let mut codes = Vec::with_capacity(n);
        for _ in 0..n {
            codes.push(self.reply().await.expect("a reply").code);
        }
        codes
    }

    /// Sends a command line (CRLF added) and reads the reply.
    pub async fn command(&mut self, line: &str) -> ClientReply {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.reply()
            .await
            .unwrap_or_else(|| panic!("connection closed after {line:?}"))
    }

    /// True when the server has closed the connection.
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(30), self.reader.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// One whole transaction that must be accepted; returns the queue id.
    pub async fn accepted(&mut self, from: &str, to: &[&str], body: &[u8]) -> String {
        let reply = self.send_message(from, to, body).await;
        assert_eq!(reply.code, 250, "{reply:?}");
        queue_id(&reply)
    }

    /// One transaction the service may defer at RCPT: returns the RCPT reply
    /// when it is not 250 (after RSET), else the reply to the end of DATA.
    pub async fn offer(&mut self, from: &str, to: &str, body: &[u8]) -> ClientReply {
        let mail = self.command(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(mail.code, 250, "MAIL: {mail:?}");
        let rcpt = self.command(&format!("RCPT TO:<{to}>")).await;
        if rcpt.code != 250 {
            assert_eq!(self.command("RSET").await.code, 250);
            return rcpt;
        }
        let reply = self.command("DATA").await;
        assert_eq!(reply.code, 354, "DATA: {reply:?}");
        self.send_raw(&stuff(body)).await;
        self.reply().await.expect("reply to end of DATA")
    }

    /// One whole transaction; `body` is sent dot-stuffed. Returns the final reply.
    pub async fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> ClientReply {
        let reply = self.command(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(reply.code, 250, "MAIL: {reply:?}");
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>")).await;
            assert_eq!(reply.code, 250, "RCPT: {reply:?}");
        }
        let reply = self.command("DATA").await;
        assert_eq!(reply.code, 354, "DATA: {reply:?}");
        self.send_raw(&stuff(body)).await;
        self.reply().await.expect("reply to end of DATA")
    }
}

/// Dot-stuffs a CRLF body and appends the terminator (the test's own copy).
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The queue id in a "250 2.0.0 Ok: queued as ID" reply (which may go on
/// with "; leaves in about ...").
pub fn queue_id(reply: &ClientReply) -> String {
    let (_, after) = reply
        .text
        .split_once("queued as ")
        .unwrap_or_else(|| panic!("no queue id in {reply:?}"));
    after
        .split([';', ' '])
        .next()
        .unwrap_or_default()
        .to_string()
}
