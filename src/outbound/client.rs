//! The upstream SMTP client: one connection to a gateway, reused for many
//! transactions, with per-recipient results.
//!
//! It pipelines MAIL, every RCPT and DATA in one write when the gateway offers
//! PIPELINING (RFC 2920), so a transaction costs two round trips. Every read
//! has a timeout. A connection whose state is unknown after an error is
//! dropped, never reused.
//!
//! TLS per the gateway's `tls`: `implicit` handshakes before the greeting;
//! `required` and `opportunistic` say STARTTLS when the gateway offers it,
//! then EHLO again (capabilities are only believed from inside TLS).
//! `required` never falls back: no STARTTLS offered, or a certificate that
//! does not verify, fails the connection (the message is retried later).
//! `opportunistic` reconnects in plain text once if the handshake fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The default wait for the reply to the end of a message (RFC 5321
/// 4.5.3.2.6).
pub const DATA_REPLY_TIMEOUT: Duration = Duration::from_secs(600);
use tokio_rustls::TlsConnector;

use super::oauth::{Secret, TokenProvider};
use crate::config::GatewayTls;
use crate::tls::Stream;
use crate::tls::client::Upstream;

use crate::smtp::{Body, MailParams, Reply, dot_stuff};
use crate::spool::Envelope;

/// What the gateway offered in its EHLO reply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub size: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    pub auth_xoauth2: bool,
}

/// A login at the gateway. The password or token never appears in `Debug`
/// output.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub secret: Login,
    /// The gateway is on this machine: the login may go without TLS.
    pub loopback: bool,
}

/// What proves `Credentials::user` to the gateway.
#[derive(Clone)]
pub enum Login {
    /// AUTH PLAIN, or LOGIN when the gateway offers only that.
    Password(String),
    /// AUTH XOAUTH2 with a bearer token from this source.
    Token(Arc<TokenProvider>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Credentials");
        debug.field("user", &self.user);
        match &self.secret {
            Login::Password(_) => debug.field("password", &"(redacted)"),
            Login::Token(tokens) => debug.field("xoauth2", tokens),
        };
        debug.finish()
    }
}

impl Credentials {
    /// Reads the secret the gateway's configuration names (for XOAUTH2:
    /// checks its token source, see `oauth::TokenProvider::load`).
    pub fn load(gateway: &crate::config::GatewayConfig) -> std::io::Result<Option<Credentials>> {
        use crate::config::AuthMechanism;
        let Some(auth) = &gateway.auth else {
            return Ok(None);
        };
        let source = match &auth.mechanism {
            AuthMechanism::Password(source) => source,
            AuthMechanism::XOAuth2(source) => {
                return Ok(Some(Credentials {
                    user: auth.user.clone(),
                    secret: Login::Token(Arc::new(TokenProvider::load(
                        source,
                        gateway.connect_timeout,
                    )?)),
                    loopback: gateway.is_loopback(),
                }));
            }
        };
        let password = source.read("auth_password_file", "auth_password_env")?;
        Ok(Some(Credentials {
            user: auth.user.clone(),
            secret: Login::Password(password),
            loopback: gateway.is_loopback(),
        }))
    }
}

/// How a transaction or connection failed before it produced replies.
#[derive(Debug)]
pub struct ClientError {
    pub message: String,
    /// True when it failed before the gateway answered MAIL: nothing of this
    /// message can have been accepted, so trying again at once is safe.
    pub before_mail_reply: bool,
    /// The gateway's refusal, when the failure was one (e.g. a 421 greeting),
    /// so the shaper can hear a throttling signal in it.
    pub refusal: Option<Reply>,
    /// The TLS handshake failed (the connection is unusable).
    pub handshake_failed: bool,
    /// The message was sent whole and no reply to its end came in time:
    /// the gateway may have taken it. Trying again may deliver it twice
    /// (at-least-once), so it is counted and logged as such.
    pub outcome_unknown: bool,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The result of one transaction.
pub struct Transaction {
    /// One reply per recipient, in the order given.
    pub replies: Vec<Reply>,
    /// False when the connection must not be used again.
    pub reusable: bool,
}

/// An open, greeted connection to a gateway.
pub struct Connection {
    stream: Stream,
    buffer: Vec<u8>,
    capabilities: Capabilities,
    command_timeout: Duration,
    /// The wait for the reply to the end of a message (RFC 5321
    /// 4.5.3.2.6 gives it 10 minutes: a gateway may scan the content first).
    data_reply_timeout: Duration,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO (HELO if EHLO is refused),
    /// sets up TLS as `tls` says (see the module notes) and logs in with
    /// `credentials`. An XOAUTH2 token the gateway refuses with 535 is
    /// renewed and tried once more on a new connection (see `oauth`).
    pub async fn open(
        address: &str,
        helo_name: &str,
        tls: &Upstream,
        credentials: Option<&Credentials>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let connect =
            || Connection::connect(address, helo_name, tls, connect_timeout, command_timeout);
        let mut connection = connect().await?;
        let Some(credentials) = credentials else {
            return Ok(connection);
        };
        match &credentials.secret {
            Login::Password(password) => {
                connection.login_password(credentials, password).await?;
            }
            Login::Token(tokens) => {
                let no_token = |error: std::io::Error| {
                    early(format!("no OAuth token for the gateway login: {error}"))
                };
                let token = tokens.token().await.map_err(no_token)?;
                match connection.login_xoauth2(credentials, &token).await {
                    Err(refused) if refused.refusal.as_ref().is_some_and(|r| r.code == 535) => {
                        let Some(fresh) = tokens.renew(&token).await.map_err(no_token)? else {
                            return Err(refused);
                        };
                        tracing::info!(%address, error = %refused, "the gateway refused the OAuth token; logging in once more with a new one");
                        // A new connection: a server may count (or end the
                        // session on) failed logins.
                        connection.quit().await;
                        connection = connect().await?;
                        connection.login_xoauth2(credentials, &fresh).await?;
                    }
                    other => other?,
                }
            }
        }
        Ok(connection)
    }

    /// Connects and greets, falling back once to plain text when
    /// opportunistic TLS fails.
    async fn connect(
        address: &str,
        helo_name: &str,
        tls: &Upstream,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let opened = Connection::open_with(
            address,
            helo_name,
            tls,
            tls.mode,
            connect_timeout,
            command_timeout,
        )
        .await;
        match opened {
            Err(error) if error.handshake_failed && tls.mode == GatewayTls::Opportunistic => {
                tracing::warn!(%address, %error, "opportunistic TLS failed; delivering without TLS on a new connection");
                Connection::open_with(
                    address,
                    helo_name,
                    tls,
                    GatewayTls::None,
                    connect_timeout,
                    command_timeout,
                )
                .await
            }
            other => other,
        }
    }

    /// A secret goes only under TLS, or to a gateway on loopback.
    fn may_send_secret(&self, credentials: &Credentials) -> Result<(), ClientError> {
        if self.stream.is_tls() || credentials.loopback {
            Ok(())
        } else {
            Err(early(
                "will not send the gateway password or token without TLS (set tls = \"required\")"
                    .into(),
            ))
        }
    }

    /// AUTH PLAIN (or LOGIN) with the password.
    async fn login_password(
        &mut self,
        credentials: &Credentials,
        password: &str,
    ) -> Result<(), ClientError> {
        use base64ct::{Base64, Encoding};
        self.may_send_secret(credentials)?;
        let refused = |reply: Reply| {
            // Exchange Online's answer once Basic authentication is off
            // for the tenant or mailbox: say what to do about it.
            let hint = if reply.lines.join(" ").starts_with("5.7.139") {
                " (Exchange Online no longer takes a password here: use auth_mechanism = \"xoauth2\")"
            } else {
                ""
            };
            refused_with(
                format!(
                    "gateway refused our login as {}: {reply}{hint}",
                    credentials.user
                ),
                reply,
            )
        };
        if self.capabilities.auth_plain {
            let token =
                Base64::encode_string(format!("\0{}\0{password}", credentials.user).as_bytes());
            self.write(format!("AUTH PLAIN {token}\r\n").as_bytes())
                .await
                .map_err(mark_early)?;
            let reply = self.read_reply().await.map_err(mark_early)?;
            return if reply.code == 235 {
                Ok(())
            } else {
                Err(refused(reply))
            };
        }
        if self.capabilities.auth_login {
            // AUTH LOGIN, then the user name, then the password: 334, 334, 235.
            let steps = [
                ("AUTH LOGIN".to_string(), 334),
                (Base64::encode_string(credentials.user.as_bytes()), 334),
                (Base64::encode_string(password.as_bytes()), 235),
            ];
            for (line, expected) in steps {
                self.write(format!("{line}\r\n").as_bytes())
                    .await
                    .map_err(mark_early)?;
                let reply = self.read_reply().await.map_err(mark_early)?;
                if reply.code != expected {
                    return Err(refused(reply));
                }
            }
            return Ok(());
        }
        Err(early(
            "the gateway offers neither AUTH PLAIN nor AUTH LOGIN, and auth_user is set".into(),
        ))
    }

    /// AUTH XOAUTH2 with `token`: one command with the initial response
    /// base64("user=" user ^A "auth=Bearer " token ^A ^A). A refused token
    /// draws a 334 with a base64 JSON error; the client answers it with an
    /// empty line and the server then sends its final (5xx) reply.
    async fn login_xoauth2(
        &mut self,
        credentials: &Credentials,
        token: &Secret,
    ) -> Result<(), ClientError> {
        use base64ct::{Base64, Encoding};
        self.may_send_secret(credentials)?;
        if !self.capabilities.auth_xoauth2 {
            return Err(early(
                "the gateway does not offer AUTH XOAUTH2, and auth_mechanism = \"xoauth2\"".into(),
            ));
        }
        let initial = Base64::encode_string(
            format!(
                "user={}\x01auth=Bearer {}\x01\x01",
                credentials.user,
                token.expose()
            )
            .as_bytes(),
        );
        self.write(format!("AUTH XOAUTH2 {initial}\r\n").as_bytes())
            .await
            .map_err(mark_early)?;
        let mut reply = self.read_reply().await.map_err(mark_early)?;
        let mut challenge = String::new();
        if reply.code == 334 {
            // The error challenge (RFC 7628 section 3.2.2): status, schemes
            // and scope in JSON, no secret; kept for the operator's log.
            let encoded = reply.lines.join("");
            if let Ok(decoded) = Base64::decode_vec(encoded.trim()) {
                challenge = format!(
                    " (the gateway's challenge: {})",
                    String::from_utf8_lossy(&decoded)
                );
            }
            self.write(b"\r\n").await.map_err(mark_early)?;
            reply = self.read_reply().await.map_err(mark_early)?;
        }
        if reply.code == 235 {
            return Ok(());
        }
        Err(refused_with(
            format!(
                "gateway refused our XOAUTH2 login as {}: {reply}{challenge}",
                credentials.user
            ),
            reply,
        ))
    }

    /// Connects and reads the greeting, then says QUIT: is the gateway
    /// there and taking mail? Nothing more (no TLS, no login: no token
    /// fetched, no login counted against us). A gateway that speaks TLS
    /// from the first byte is only connected to.
    pub async fn greeting(
        address: &str,
        tls: &Upstream,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<(), ClientError> {
        let mut connection = Connection::tcp(address, connect_timeout, command_timeout).await?;
        if tls.mode == GatewayTls::Implicit {
            return Ok(());
        }
        let greeted = connection.greeted().await;
        connection.quit().await;
        greeted
    }

    /// A plain TCP connection to `address`, nothing said yet.
    async fn tcp(
        address: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let stream = timeout(connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| early(format!("connect to {address} timed out")))?
            .map_err(|error| early(format!("connect to {address} failed: {error}")))?;
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream: Stream::Plain(stream),
            buffer: Vec::with_capacity(4096),
            capabilities: Capabilities::default(),
            command_timeout,
            data_reply_timeout: DATA_REPLY_TIMEOUT.max(command_timeout),
        })
    }

    /// Reads the greeting: a 220, or the gateway's refusal kept.
    async fn greeted(&mut self) -> Result<(), ClientError> {
        let greeting = self.read_reply().await.map_err(mark_early)?;
        if greeting.code == 220 {
            Ok(())
        } else {
            Err(refused_with(
                format!("gateway greeting refused: {greeting}"),
                greeting,
            ))
        }
    }

    async fn open_with(
        address: &str,
        helo_name: &str,
        tls: &Upstream,
        mode: GatewayTls,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let mut connection = Connection::tcp(address, connect_timeout, command_timeout).await?;
        if mode == GatewayTls::Implicit {
            connection.handshake(tls).await?;
        }
        connection.greeted().await?;
        connection.hello(helo_name).await?;
        if matches!(mode, GatewayTls::Required | GatewayTls::Opportunistic) {
            if connection.capabilities.starttls {
                connection
                    .write(b"STARTTLS\r\n")
                    .await
                    .map_err(mark_early)?;
                let reply = connection.read_reply().await.map_err(mark_early)?;
                if reply.code == 421 {
                    // Closing: there is no going on without TLS either.
                    return Err(refused_with(
                        format!("gateway refused STARTTLS: {reply}"),
                        reply,
                    ));
                } else if reply.code != 220 {
                    if mode == GatewayTls::Required {
                        return Err(refused_with(
                            format!("gateway refused STARTTLS ({reply}) and tls = \"required\""),
                            reply,
                        ));
                    }
                } else {
                    if !connection.buffer.is_empty() {
                        return Err(early(
                            "gateway sent data after its STARTTLS reply (injection?); not using this connection".into(),
                        ));
                    }
                    connection.handshake(tls).await?;
                    connection.hello(helo_name).await?;
                }
            } else if mode == GatewayTls::Required {
                return Err(early(
                    "gateway does not offer STARTTLS and tls = \"required\"".into(),
                ));
            }
        }
        Ok(connection)
    }

    /// EHLO (HELO if EHLO is refused as unknown, 5xx), keeping the
    /// capabilities it lists. A 4xx to EHLO (a 421 closes the connection)
    /// is the gateway's refusal, not a reason to try HELO.
    async fn hello(&mut self, helo_name: &str) -> Result<(), ClientError> {
        self.write(format!("EHLO {helo_name}\r\n").as_bytes())
            .await
            .map_err(mark_early)?;
        let ehlo = self.read_reply().await.map_err(mark_early)?;
        if ehlo.is_positive() {
            self.capabilities = parse_capabilities(&ehlo);
            return Ok(());
        }
        if ehlo.is_transient() {
            return Err(refused_with(format!("gateway refused EHLO: {ehlo}"), ehlo));
        }
        self.capabilities = Capabilities::default();
        self.write(format!("HELO {helo_name}\r\n").as_bytes())
            .await
            .map_err(mark_early)?;
        let helo = self.read_reply().await.map_err(mark_early)?;
        if !helo.is_positive() {
            return Err(refused_with(
                format!("gateway refused EHLO and HELO: {helo}"),
                helo,
            ));
        }
        Ok(())
    }

    /// The TLS handshake as the client, verifying as `tls` says.
    async fn handshake(&mut self, tls: &Upstream) -> Result<(), ClientError> {
        let Some(tcp) = self.stream.take_plain() else {
            return Err(early("TLS is already active".into()));
        };
        let connector = TlsConnector::from(tls.config.clone());
        match timeout(
            self.command_timeout,
            connector.connect(tls.server_name.clone(), tcp),
        )
        .await
        {
            Ok(Ok(stream)) => {
                self.stream = Stream::Client(Box::new(stream));
                Ok(())
            }
            Ok(Err(error)) => {
                let mut failure = early(format!("TLS handshake with the gateway failed: {error}"));
                failure.handshake_failed = true;
                Err(failure)
            }
            Err(_) => {
                let mut failure = early("TLS handshake with the gateway timed out".into());
                failure.handshake_failed = true;
                Err(failure)
            }
        }
    }

    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Sends one message to the recipients at `recipients` (indices into the envelope).
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        recipients: &[u32],
        body: &[u8],
    ) -> Result<Transaction, ClientError> {
        if envelope.params.smtputf8 && !self.capabilities.smtputf8 {
            let refusal = Reply::new(
                550,
                "5.6.7 the gateway does not offer SMTPUTF8, needed for this message's addresses",
            );
            return Ok(Transaction {
                replies: vec![refusal; recipients.len()],
                reusable: true,
            });
        }
        let mail = self.mail_command(envelope, body.len());
        let rcpt_commands: Vec<String> = recipients
            .iter()
            .map(|&index| format!("RCPT TO:<{}>\r\n", envelope.recipients[index as usize]))
            .collect();
        let (mail_reply, rcpt_replies, data_reply) = self.envelope(mail, &rcpt_commands).await?;
        let accepted = mail_reply.is_positive() && rcpt_replies.iter().any(Reply::is_positive);
        let final_reply = match data_reply {
            Some(data) if data.code == 354 => {
                let mut wire = Vec::new();
                if accepted {
                    dot_stuff(body, &mut wire);
                } else {
                    // A gateway that said 354 with nobody to deliver to: end DATA empty.
                    wire.extend_from_slice(b".\r\n");
                }
                self.write(&wire).await?;
                self.read_reply_within(self.data_reply_timeout)
                    .await
                    .map_err(|error| {
                        if error.message.ends_with("timed out") {
                            ClientError {
                                message: format!(
                                    "no reply to the end of the message within {}s: the gateway may have taken it (outcome unknown)",
                                    self.data_reply_timeout.as_secs()
                                ),
                                outcome_unknown: true,
                                ..error
                            }
                        } else {
                            error
                        }
                    })?
            }
            Some(refused) => refused,
            None => Reply::new(554, "5.5.1 no valid recipients"),
        };
        let replies = per_recipient(mail_reply, rcpt_replies, &final_reply, recipients.len());
        let reusable = if accepted && final_reply.is_positive() {
            true
        } else {
            self.reset().await
        };
        Ok(Transaction { replies, reusable })
    }

    /// MAIL FROM with what this gateway is told: 8-bit only where it
    /// offers 8BITMIME, the size only where it offers SIZE (and the real
    /// one, `size`).
    fn mail_command(&self, envelope: &Envelope, size: usize) -> String {
        let params = MailParams {
            size: self.capabilities.size.then_some(size as u64),
            body: if self.capabilities.eight_bit_mime {
                envelope.params.body
            } else {
                Body::SevenBit
            },
            smtputf8: envelope.params.smtputf8,
        };
        let words = params.to_words();
        let mut mail = format!("MAIL FROM:<{}>", envelope.sender);
        if !words.is_empty() {
            mail.push(' ');
            mail.push_str(&words);
        }
        mail.push_str("\r\n");
        mail
    }

    /// Sends MAIL, the RCPTs and DATA, in one batch where the gateway
    /// offers PIPELINING, else each after the last one's reply (and DATA
    /// only when a recipient was accepted). The replies: MAIL's, each
    /// RCPT's, DATA's if it was sent. A failure before MAIL's reply is
    /// marked early (nothing was accepted).
    async fn envelope(
        &mut self,
        mail: String,
        rcpt_commands: &[String],
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), ClientError> {
        let mut rcpt_replies = Vec::with_capacity(rcpt_commands.len());
        if self.capabilities.pipelining {
            let mut batch = mail.into_bytes();
            for command in rcpt_commands {
                batch.extend_from_slice(command.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.write(&batch).await.map_err(mark_early)?;
            let mail_reply = self.read_reply().await.map_err(mark_early)?;
            for _ in rcpt_commands {
                match self.read_reply().await {
                    Ok(reply) => rcpt_replies.push(reply),
                    Err(error) => {
                        return heard_before(error, mail_reply, rcpt_replies, rcpt_commands.len());
                    }
                }
            }
            return match self.read_reply().await {
                Ok(data_reply) => Ok((mail_reply, rcpt_replies, Some(data_reply))),
                Err(error) => heard_before(error, mail_reply, rcpt_replies, rcpt_commands.len()),
            };
        }
        self.write(mail.as_bytes()).await.map_err(mark_early)?;
        let mail_reply = self.read_reply().await.map_err(mark_early)?;
        if mail_reply.is_positive() {
            for command in rcpt_commands {
                let reply = match self.write(command.as_bytes()).await {
                    Ok(()) => self.read_reply().await,
                    Err(error) => Err(error),
                };
                match reply {
                    Ok(reply) => rcpt_replies.push(reply),
                    Err(error) => {
                        return heard_before(error, mail_reply, rcpt_replies, rcpt_commands.len());
                    }
                }
            }
        }
        let data_reply = if rcpt_replies.iter().any(Reply::is_positive) {
            let reply = match self.write(b"DATA\r\n").await {
                Ok(()) => self.read_reply().await,
                Err(error) => Err(error),
            };
            match reply {
                Ok(reply) => Some(reply),
                Err(error) => {
                    return heard_before(error, mail_reply, rcpt_replies, rcpt_commands.len());
                }
            }
        } else {
            None
        };
        Ok((mail_reply, rcpt_replies, data_reply))
    }

    /// Asks whether the gateway takes mail for `address` (MAIL FROM:<>,
    /// RCPT TO, RSET: nothing is sent). Returns the RCPT reply, or the MAIL
    /// reply when MAIL was refused.
    pub async fn probe(&mut self, address: &str) -> Result<Reply, ClientError> {
        self.write(b"MAIL FROM:<>\r\n").await?;
        let mail = self.read_reply().await?;
        if !mail.is_positive() {
            return Ok(mail);
        }
        self.write(format!("RCPT TO:<{address}>\r\n").as_bytes())
            .await?;
        let rcpt = self.read_reply().await?;
        if !self.reset().await {
            return Err(late("the gateway did not accept RSET after a probe".into()));
        }
        Ok(rcpt)
    }

    /// Says QUIT and closes; errors do not matter any more.
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = timeout(Duration::from_secs(5), self.read_reply()).await;
        }
    }

    /// RSET after a failed transaction; false when the connection is unusable.
    async fn reset(&mut self) -> bool {
        self.write(b"RSET\r\n").await.is_ok()
            && self
                .read_reply()
                .await
                .is_ok_and(|reply| reply.is_positive())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match timeout(self.command_timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(late(format!("write to gateway failed: {error}"))),
            Err(_) => Err(late("write to gateway timed out".into())),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        self.read_reply_within(self.command_timeout).await
    }

    /// Sets the wait for the reply to the end of a message (the gateway's
    /// `data_reply_timeout`; by default 10 minutes, never shorter than
    /// the command timeout).
    pub fn set_data_reply_timeout(&mut self, wait: Duration) {
        self.data_reply_timeout = wait;
    }

    async fn read_reply_within(&mut self, wait: Duration) -> Result<Reply, ClientError> {
        loop {
            match Reply::parse(&self.buffer) {
                Ok(Some((reply, used))) => {
                    self.buffer.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(error) => return Err(late(format!("gateway protocol error: {}", error.0))),
            }
            let mut chunk = [0u8; 4096];
            let read = timeout(wait, self.stream.read(&mut chunk))
                .await
                .map_err(|_| late("gateway reply timed out".into()))?
                .map_err(|error| late(format!("read from gateway failed: {error}")))?;
            if read == 0 {
                return Err(late("gateway closed the connection".into()));
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// The envelope broke off (the gateway closed, a read failed) after these
/// replies: when one of them refused, that is what the gateway said (RFC
/// 5321 has a server close after a 421), and it counts as the answer: MAIL's
/// refusal for every recipient, or each RCPT's refusal, the others (of
/// `recipients`) deferred since no DATA followed. Without a refusal the
/// failure stands.
fn heard_before(
    error: ClientError,
    mail_reply: Reply,
    rcpt_replies: Vec<Reply>,
    recipients: usize,
) -> Result<(Reply, Vec<Reply>, Option<Reply>), ClientError> {
    if mail_reply.is_positive() && rcpt_replies.iter().all(Reply::is_positive) {
        return Err(error);
    }
    if !mail_reply.is_positive() {
        return Ok((mail_reply, Vec::new(), None));
    }
    let deferred = Reply::new(451, format!("4.4.2 {error}"));
    let rcpt_replies = rcpt_replies
        .into_iter()
        .map(|reply| {
            if reply.is_positive() {
                deferred.clone()
            } else {
                reply
            }
        })
        .chain(std::iter::repeat(deferred.clone()))
        .take(recipients)
        .collect();
    Ok((mail_reply, rcpt_replies, None))
}

fn parse_capabilities(ehlo: &Reply) -> Capabilities {
    let mut capabilities = Capabilities::default();
    for line in ehlo.lines.iter().skip(1) {
        let keyword = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match keyword.as_str() {
            "PIPELINING" => capabilities.pipelining = true,
            "8BITMIME" => capabilities.eight_bit_mime = true,
            "SMTPUTF8" => capabilities.smtputf8 = true,
            "SIZE" => capabilities.size = true,
            "STARTTLS" => capabilities.starttls = true,
            "AUTH" => {
                for mechanism in line.split(' ').skip(1) {
                    match mechanism.to_ascii_uppercase().as_str() {
                        "PLAIN" => capabilities.auth_plain = true,
                        "LOGIN" => capabilities.auth_login = true,
                        "XOAUTH2" => capabilities.auth_xoauth2 = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    capabilities
}

fn early(message: String) -> ClientError {
    ClientError {
        message,
        before_mail_reply: true,
        refusal: None,
        handshake_failed: false,
        outcome_unknown: false,
    }
}

/// The gateway refused before any transaction (greeting, EHLO, STARTTLS,
/// AUTH): what it said is kept, to be counted and heeded.
fn refused_with(message: String, reply: Reply) -> ClientError {
    ClientError {
        refusal: Some(reply),
        ..early(message)
    }
}

fn late(message: String) -> ClientError {
    ClientError {
        message,
        before_mail_reply: false,
        refusal: None,
        handshake_failed: false,
        outcome_unknown: false,
    }
}

/// What each recipient got: MAIL's refusal for all, or its RCPT refusal,
/// or (accepted) the reply to the message's end.
/// `recipients` counts them (no RCPT was sent after a refused MAIL
/// without pipelining).
fn per_recipient(
    mail_reply: Reply,
    rcpt_replies: Vec<Reply>,
    final_reply: &Reply,
    recipients: usize,
) -> Vec<Reply> {
    if !mail_reply.is_positive() {
        return vec![mail_reply; recipients];
    }
    rcpt_replies
        .into_iter()
        .map(|rcpt| {
            if rcpt.is_positive() {
                final_reply.clone()
            } else {
                rcpt
            }
        })
        .collect()
}

fn mark_early(error: ClientError) -> ClientError {
    ClientError {
        before_mail_reply: true,
        ..error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_before_a_close_are_the_answer_when_one_refused() {
        let closed = || late("gateway closed the connection".into());
        let ok = || Reply::new(250, "2.1.5 ok");
        // MAIL refused, then closed: its refusal is everyone's.
        let (mail, rcpt, data) =
            heard_before(closed(), Reply::new(421, "4.7.0 busy"), Vec::new(), 3).unwrap();
        assert_eq!((mail.code, rcpt.len(), data), (421, 0, None));
        // A refused RCPT, then closed: it keeps its reply; the accepted one
        // and the unanswered one are deferred (no DATA was sent).
        let (_, rcpt, _) = heard_before(
            closed(),
            ok(),
            vec![ok(), Reply::new(450, "4.2.1 mailbox busy")],
            3,
        )
        .unwrap();
        let codes: Vec<u16> = rcpt.iter().map(|reply| reply.code).collect();
        assert_eq!(codes, [451, 450, 451]);
        assert!(
            rcpt[0]
                .to_string()
                .contains("gateway closed the connection")
        );
        // Nothing refused: the failure stands (the outcome is not known).
        assert!(heard_before(closed(), ok(), vec![ok()], 2).is_err());
    }

    #[test]
    fn each_recipient_gets_its_refusal_or_the_final_reply() {
        let ok = Reply::new(250, "2.1.0 ok");
        let unknown = Reply::new(550, "5.1.1 no such user");
        let queued = Reply::new(250, "2.0.0 queued");
        assert_eq!(
            per_recipient(ok.clone(), vec![ok.clone(), unknown.clone()], &queued, 2),
            vec![queued.clone(), unknown]
        );
        // Without pipelining no RCPT follows a refused MAIL: every
        // recipient still gets MAIL's refusal.
        let refused = Reply::new(550, "5.7.1 sender refused");
        assert_eq!(
            per_recipient(refused.clone(), Vec::new(), &queued, 3),
            vec![refused.clone(); 3]
        );
        assert_eq!(
            per_recipient(refused.clone(), vec![ok.clone(), ok], &queued, 2),
            vec![refused; 2]
        );
    }
}
