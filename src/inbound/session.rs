//! The ESMTP session state machine (RFC 5321), with no I/O.
//!
//! It takes parsed commands and framing errors and answers with the reply to
//! send and what the connection must do next. Every error reply carries the
//! code and enhanced status a client can act on, and counts towards
//! `max_errors`, after which the session ends with 421. It also runs the
//! STARTTLS (RFC 3207) and AUTH (RFC 4954) exchanges, asking the connection
//! to do the handshake and the password check, and applies the relay rules
//! at MAIL: login required, the app's own senders (rule 2), senders the
//! gateway knows (rule 3); and admission (shaping) at RCPT. The rules on
//! the message's header run after [`Session::data_end`] in the acceptance
//! pipeline (`checks`: they may wait for DNS), and their refusals come
//! back through [`Session::refuse`]. Every refusal names its [`RefusalReason`] where it
//! is decided, for the rejections metric.

use std::net::IpAddr;

use super::{Refusal, RefusalReason};
use crate::config::ServerConfig;
use crate::config::units::format_duration;
use crate::policy::Policy;
use crate::shaper::{Admission, DeferReason, Deferral, Projection, fingerprints};
use crate::smtp::{Command, CommandError, DataError, LineError, MailParams, Reply, trace};

/// Recipients past `max_recipients` a session may send before each further
/// one counts as an error (Postfix's `smtpd_recipient_overshoot_limit`).
pub const RECIPIENT_OVERSHOOT: u32 = 1_000;

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the reply, read the next command.
    Reply(Reply),
    /// Send the reply (354), then read the message body.
    Data(Reply),
    /// Send the refusal, count it under its reason, read the next command.
    Refuse(Refusal),
    /// Send the reply and close the connection.
    Close(Reply),
    /// Send the refusal, count it under its reason, and close the
    /// connection: the client used up an allowance (errors, junk commands,
    /// AUTH failures).
    RefuseAndClose(Refusal),
    /// Send the reply (220), then discard any buffered input and start the
    /// TLS handshake; call [`Session::tls_started`] when it succeeds.
    StartTls(Reply),
    /// Check these credentials (off the async threads: argon2 is slow on
    /// purpose), then call [`Session::login_result`].
    Authenticate { user: String, password: Vec<u8> },
}

/// A refusal as the session answers it: the client may go on, or it has
/// used up its allowance of errors and the connection closes (what the end
/// of DATA and the message rules after it can answer, where a whole
/// [`Step`] would allow more).
#[derive(Debug)]
pub enum Refused {
    Continue(Refusal),
    Close(Refusal),
}

impl Step {
    /// The command succeeded (a 2xx or 3xx reply, the connection stays).
    fn is_positive(&self) -> bool {
        match self {
            Step::Reply(reply) | Step::Data(reply) | Step::StartTls(reply) => reply.code < 400,
            _ => false,
        }
    }
}

impl From<Refused> for Step {
    fn from(refused: Refused) -> Step {
        match refused {
            Refused::Continue(refusal) => Step::Refuse(refusal),
            Refused::Close(refusal) => Step::RefuseAndClose(refusal),
        }
    }
}

/// Where an AUTH exchange stands while the client owes a response line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthExchange {
    /// PLAIN without an initial response: waiting for it.
    Plain,
    /// LOGIN: waiting for the user name, then the password.
    LoginUser,
    LoginPassword {
        user: String,
    },
}

/// The envelope being built by MAIL and RCPT.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub sender: String,
    pub params: MailParams,
    /// Index of the gateway chosen for the sender.
    pub gateway: usize,
    /// The app (lane) sending it.
    pub lane: usize,
    pub recipients: Vec<String>,
    /// The receiver of each recipient as known at its RCPT (its domain's
    /// name, or MX hosts already cached): what admission weighed.
    pub receivers: Vec<Option<usize>>,
    /// The wait admission projects for the message (at its last RCPT):
    /// the `250` after DATA says it when it is long.
    pub projection: Projection,
}

/// One client's session.
pub struct Session<'a> {
    server: &'a ServerConfig,
    policy: &'a Policy,
    admission: &'a dyn Admission,
    pub client_ip: IpAddr,
    helo: Option<String>,
    esmtp: bool,
    transaction: Option<Transaction>,
    errors: u32,
    /// Recipients refused past `max_recipients` in this session.
    overshoot: u32,
    /// Commands since the last message that moved no mail (see
    /// `max_junk_commands`).
    junk: u32,
    /// The client may say RSET or NOOP once without it counting as junk:
    /// its MAIL or RCPT was refused (Python's smtplib says RSET then), or a
    /// message ended (clients that keep a connection reset or probe it
    /// between messages).
    reset_owed: bool,
    /// The connection is encrypted (after STARTTLS or on the TLS listener).
    tls: bool,
    /// The app the client logged in as (its lane).
    login: Option<usize>,
    auth_exchange: Option<AuthExchange>,
}

impl<'a> Session<'a> {
    /// A session for a client at `client_ip`, before the greeting.
    /// `admission` decides at each RCPT whether the gateway can take more.
    pub fn new(
        server: &'a ServerConfig,
        policy: &'a Policy,
        admission: &'a dyn Admission,
        client_ip: IpAddr,
    ) -> Self {
        Session {
            server,
            policy,
            admission,
            client_ip,
            helo: None,
            esmtp: false,
            transaction: None,
            errors: 0,
            overshoot: 0,
            junk: 0,
            reset_owed: false,
            tls: false,
            login: None,
            auth_exchange: None,
        }
    }

    /// The TLS handshake succeeded: everything said before it is forgotten
    /// (RFC 3207 4.2), so the client starts again with EHLO.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.transaction = None;
        self.login = None;
        self.auth_exchange = None;
    }

    /// AUTH is offered when some app logs in, and the connection is
    /// encrypted or (when configured) the listener is on loopback.
    fn auth_offered(&self) -> bool {
        self.policy.apps.has_logins()
            && (self.tls
                || (self.server.plaintext_auth_on_loopback
                    && self.server.listen.ip().is_loopback()))
    }

    /// True while the next line is an AUTH response, not a command.
    pub fn auth_pending(&self) -> bool {
        self.auth_exchange.is_some()
    }

    /// The 220 banner.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, format!("{} ESMTP smtp-shaper", self.server.hostname))
    }

    /// True while a MAIL transaction is open (shutdown waits for it).
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// The gateway and app of the open transaction (for the log of a
    /// deferral at RCPT).
    pub fn transaction_names(&self) -> Option<(&str, &str)> {
        self.transaction.as_ref().map(|transaction| {
            (
                self.policy.gateways[transaction.gateway].as_str(),
                self.policy.apps.name(transaction.lane),
            )
        })
    }

    /// The name the client gave in EHLO/HELO.
    pub fn helo(&self) -> &str {
        self.helo.as_deref().unwrap_or("unknown")
    }

    /// `ESMTP`, `SMTP` or `UTF8SMTP`, with `S` under TLS (RFC 3848), for
    /// the trace header.
    pub fn protocol(&self, transaction: &Transaction) -> &'static str {
        match (self.esmtp, transaction.params.smtputf8, self.tls) {
            (true, true, false) => "UTF8SMTP",
            (true, true, true) => "UTF8SMTPS",
            (true, false, false) => "ESMTP",
            (true, false, true) => "ESMTPS",
            (false, _, false) => "SMTP",
            (false, _, true) => "SMTPS",
        }
    }

    /// Answers one parsed command line.
    pub fn command(&mut self, command: Result<Command, CommandError>) -> Step {
        let command = match command {
            Ok(command) => command,
            Err(error) => return self.refuse(command_error_reply(error)).into(),
        };
        let junk = match &command {
            Command::Noop | Command::Rset if std::mem::take(&mut self.reset_owed) => false,
            Command::Noop | Command::Rset | Command::Vrfy | Command::Help => true,
            Command::Ehlo(_) | Command::Helo(_) => self.helo.is_some(),
            _ => false,
        };
        if junk {
            self.junk += 1;
            if self.junk > self.server.max_junk_commands {
                return Step::RefuseAndClose(Refusal::new(
                    RefusalReason::TooManyErrors,
                    421,
                    format!(
                        "4.7.0 {} Error: too many commands without mail, closing connection",
                        self.server.hostname
                    ),
                ));
            }
        }
        match command {
            Command::Ehlo(host) => {
                self.helo = Some(host.clone());
                self.esmtp = true;
                self.transaction = None;
                let mut lines = vec![
                    format!("{} greets {host}", self.server.hostname),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.server.max_message_size),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "SMTPUTF8".into(),
                ];
                if self.server.tls.is_some() && !self.tls {
                    lines.push("STARTTLS".into());
                }
                if self.auth_offered() {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                lines.push("HELP".into());
                Step::Reply(Reply { code: 250, lines })
            }
            Command::Helo(host) => {
                self.helo = Some(host);
                self.esmtp = false;
                self.transaction = None;
                Step::Reply(Reply::new(250, self.server.hostname.clone()))
            }
            Command::Mail { from, params } => {
                let step = self.mail(from, params);
                self.reset_owed = !step.is_positive();
                step
            }
            Command::Rcpt { to } => {
                let step = self.rcpt(to);
                self.reset_owed = !step.is_positive();
                step
            }
            Command::Data => match &self.transaction {
                None => self.out_of_sequence("5.5.1 Error: need MAIL and RCPT commands first"),
                Some(transaction) if transaction.recipients.is_empty() => {
                    self.out_of_sequence("5.5.1 Error: need RCPT command first")
                }
                Some(_) => Step::Data(Reply::new(354, "End data with <CR><LF>.<CR><LF>")),
            },
            Command::Rset => {
                self.transaction = None;
                Step::Reply(Reply::new(250, "2.0.0 Ok"))
            }
            Command::Noop => Step::Reply(Reply::new(250, "2.0.0 Ok")),
            Command::Quit => Step::Close(Reply::new(221, "2.0.0 Bye")),
            Command::Vrfy => Step::Reply(Reply::new(
                252,
                "2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => Step::Reply(Reply {
                code: 214,
                lines: vec![
                    "2.0.0 smtp-shaper relays application mail to its gateways".into(),
                    "2.0.0 Commands: EHLO HELO STARTTLS MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
                        .into(),
                ],
            }),
            Command::StartTls => {
                if self.tls {
                    self.out_of_sequence("5.5.1 Error: TLS already active")
                } else if self.server.tls.is_none() {
                    self.refuse(Refusal::new(
                        RefusalReason::TlsUnavailable,
                        454,
                        "4.7.0 TLS not available",
                    ))
                    .into()
                } else {
                    Step::StartTls(Reply::new(220, "2.0.0 Ready to start TLS"))
                }
            }
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial.as_deref()),
            Command::NotImplemented(verb) => self
                .refuse(Refusal::new(
                    RefusalReason::Syntax,
                    502,
                    format!("5.5.1 Error: {verb} not implemented"),
                ))
                .into(),
        }
    }

    fn mail(&mut self, from: String, params: MailParams) -> Step {
        let lane = match self.mail_lane(&from, &params) {
            Ok(lane) => lane,
            Err(refusal) => return self.refuse(refusal).into(),
        };
        let reply = Reply::new(250, format!("2.1.0 Sender <{from}> ok"));
        self.transaction = Some(Transaction {
            lane,
            gateway: self.policy.router.route(&from),
            sender: from,
            params,
            recipients: Vec::new(),
            receivers: Vec::new(),
            projection: Projection::AT_ONCE,
        });
        Step::Reply(reply)
    }

    /// The app lane a MAIL FROM `from` opens its transaction in, or why
    /// it is refused: out of order, parameters without EHLO, too big, AUTH
    /// required, relay rules 2 and 3.
    fn mail_lane(&self, from: &str, params: &MailParams) -> Result<usize, Refusal> {
        if self.helo.is_none() {
            return Err(Refusal::out_of_sequence(
                "5.5.1 Error: send EHLO or HELO first",
            ));
        }
        if self.transaction.is_some() {
            return Err(Refusal::out_of_sequence("5.5.1 Error: nested MAIL command"));
        }
        if !self.esmtp
            && (params.size.is_some() || params.smtputf8 || *params != MailParams::default())
        {
            return Err(Refusal::new(
                RefusalReason::Syntax,
                555,
                "5.5.4 Error: MAIL parameters need EHLO",
            ));
        }
        let max_size = self.server.max_message_size;
        if params.size.is_some_and(|size| size > max_size) {
            return Err(Refusal::new(
                RefusalReason::TooBig,
                552,
                format!("5.3.4 Message size exceeds the limit of {max_size} octets"),
            ));
        }
        if self.server.require_auth && self.login.is_none() {
            return Err(Refusal::new(
                RefusalReason::AuthRequired,
                530,
                "5.7.0 Authentication required",
            ));
        }
        let apps = &self.policy.apps;
        // A sender that belongs to an app with a login comes with that
        // login, whatever require_auth says.
        match (apps.login_owner(from), self.login) {
            (Some(owner), None) => {
                return Err(Refusal::new(
                    RefusalReason::AuthRequired,
                    530,
                    format!(
                        "5.7.0 Authentication required: sender <{from}> belongs to app {}, which logs in",
                        apps.name(owner)
                    ),
                ));
            }
            // Unless the app logged in lists that sender too.
            (Some(owner), Some(login)) if owner != login && !apps.owns(login, from) => {
                return Err(Refusal::new(
                    RefusalReason::RelayDenied,
                    550,
                    format!(
                        "5.7.1 Sender <{from}> belongs to app {}, not to app {} you logged in as (relay rule 2)",
                        apps.name(owner),
                        apps.name(login)
                    ),
                ));
            }
            _ => {}
        }
        let lane = self
            .login
            .unwrap_or_else(|| apps.lane(self.client_ip, from));
        if !apps.sender_allowed(lane, from) {
            return Err(Refusal::new(
                RefusalReason::RelayDenied,
                550,
                format!(
                    "5.7.1 Sender <{from}> is not allowed for app {}: each app sends only from its own addresses or domain (relay rule 2)",
                    apps.name(lane)
                ),
            ));
        }
        if let Some(refusal) = self.policy.senders.missing(from) {
            return Err(Refusal::new(
                RefusalReason::SenderRejected,
                550,
                format!(
                    "5.1.0 Sender <{from}> does not exist at the gateway ({refusal}): apps send from a valid, existing address (relay rule 3)"
                ),
            ));
        }
        Ok(lane)
    }

    fn rcpt(&mut self, to: String) -> Step {
        let max = self.server.max_recipients;
        let Some(transaction) = self.transaction.as_mut() else {
            return self.out_of_sequence("5.5.1 Error: need MAIL command first");
        };
        if !to.is_ascii() && !transaction.params.smtputf8 {
            return self
                .refuse(Refusal::new(
                    RefusalReason::BadContent,
                    553,
                    "5.6.7 Error: non-ASCII recipient needs MAIL FROM with SMTPUTF8",
                ))
                .into();
        }
        if transaction.recipients.len() >= max {
            return self.one_recipient_too_many();
        }
        let fingerprint = fingerprints(
            &transaction.sender,
            transaction
                .recipients
                .iter()
                .map(String::as_str)
                .chain([to.as_str()]),
        )
        .last()
        .unwrap_or_default();
        transaction
            .receivers
            .push(self.policy.receivers.cached(transaction.gateway, &to));
        match self.admission.admit(
            &self.policy.gateways[transaction.gateway],
            self.policy.apps.name(transaction.lane),
            &transaction.receivers,
            fingerprint,
        ) {
            Ok(projection) => transaction.projection = projection,
            // Not counted as an error: the client did nothing wrong.
            Err(deferral) => {
                transaction.receivers.pop();
                return Step::Reply(deferral_reply(&deferral));
            }
        }
        let reply = Reply::new(250, format!("2.1.5 Recipient <{to}> ok"));
        transaction.recipients.push(to);
        Step::Reply(reply)
    }

    /// `AUTH mechanism [initial-response]`.
    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Step {
        if !self.auth_offered() {
            return if self.policy.apps.has_logins() && !self.tls {
                self.refuse(Refusal::new(
                    RefusalReason::AuthRequired,
                    538,
                    "5.7.11 Encryption required for requested authentication mechanism (STARTTLS first)",
                )).into()
            } else {
                self.out_of_sequence("5.5.1 Error: AUTH not available")
            };
        }
        if self.helo.is_none() || !self.esmtp {
            return self.out_of_sequence("5.5.1 Error: send EHLO first");
        }
        if self.login.is_some() {
            return self.out_of_sequence("5.5.1 Error: already authenticated");
        }
        if self.transaction.is_some() {
            return self.out_of_sequence("5.5.1 Error: AUTH not allowed during a mail transaction");
        }
        match (mechanism, initial) {
            ("PLAIN", None) => {
                self.auth_exchange = Some(AuthExchange::Plain);
                Step::Reply(Reply::new(334, ""))
            }
            ("PLAIN", Some(response)) => self.plain_response(response.as_bytes()),
            ("LOGIN", None) => {
                self.auth_exchange = Some(AuthExchange::LoginUser);
                Step::Reply(Reply::new(334, "VXNlcm5hbWU6"))
            }
            ("LOGIN", Some(user)) => match decode_base64(user.as_bytes()) {
                Some(user) => self.login_user(user),
                None => self.refuse(bad_base64()).into(),
            },
            _ => self
                .refuse(Refusal::new(
                    RefusalReason::Syntax,
                    504,
                    "5.5.4 Unrecognized authentication type (PLAIN or LOGIN)",
                ))
                .into(),
        }
    }

    /// A response line during an AUTH exchange.
    pub fn auth_line(&mut self, line: &[u8]) -> Step {
        let Some(exchange) = self.auth_exchange.take() else {
            return self.out_of_sequence("5.5.1 Error: no AUTH in progress");
        };
        if line == b"*" {
            return self
                .refuse(Refusal::new(
                    RefusalReason::AuthFailed,
                    501,
                    "5.0.0 Authentication cancelled",
                ))
                .into();
        }
        match exchange {
            AuthExchange::Plain => self.plain_response(line),
            AuthExchange::LoginUser => match decode_base64(line) {
                Some(user) => self.login_user(user),
                None => self.refuse(bad_base64()).into(),
            },
            AuthExchange::LoginPassword { user } => match decode_base64(line) {
                Some(password) => Step::Authenticate { user, password },
                None => self.refuse(bad_base64()).into(),
            },
        }
    }

    fn login_user(&mut self, user: Vec<u8>) -> Step {
        match String::from_utf8(user) {
            Ok(user) => {
                self.auth_exchange = Some(AuthExchange::LoginPassword { user });
                Step::Reply(Reply::new(334, "UGFzc3dvcmQ6"))
            }
            Err(_) => self.refuse(bad_base64()).into(),
        }
    }

    /// PLAIN: base64 of `authzid NUL authcid NUL password` (RFC 4616).
    fn plain_response(&mut self, response: &[u8]) -> Step {
        let decoded = if response == b"=" {
            Some(Vec::new())
        } else {
            decode_base64(response)
        };
        let Some(decoded) = decoded else {
            return self.refuse(bad_base64()).into();
        };
        let mut parts = decoded.splitn(3, |&b| b == 0);
        let (Some(authzid), Some(user), Some(password)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return self.refuse(malformed_plain()).into();
        };
        let Ok(user) = String::from_utf8(user.to_vec()) else {
            return self.refuse(malformed_plain()).into();
        };
        if !authzid.is_empty() && authzid != user.as_bytes() {
            return self
                .refuse(Refusal::new(
                    RefusalReason::AuthFailed,
                    535,
                    "5.7.8 Authentication credentials invalid (no proxy authorization)",
                ))
                .into();
        }
        Step::Authenticate {
            user,
            password: password.to_vec(),
        }
    }

    /// The outcome of [`Step::Authenticate`]: `lane` is the app the
    /// credentials belong to, `None` when they are wrong.
    pub fn login_result(&mut self, lane: Option<usize>) -> Result<Reply, Refused> {
        match lane {
            Some(lane) => {
                self.login = Some(lane);
                Ok(Reply::new(235, "2.7.0 Authentication successful"))
            }
            None => Err(self.refuse(Refusal::new(
                RefusalReason::AuthFailed,
                535,
                "5.7.8 Authentication credentials invalid",
            ))),
        }
    }

    /// Answers a command line that could not be framed; `line` is what was
    /// received of it. A CR, LF or NUL inside a MAIL or RCPT address is an
    /// address error (501), anywhere else a syntax error (500).
    pub fn line_error(&mut self, error: LineError, line: &[u8]) -> Step {
        let starts =
            |verb: &[u8]| line.len() >= verb.len() && line[..verb.len()].eq_ignore_ascii_case(verb);
        // Every framing error is a syntax error, whatever its code.
        let reply = match error {
            LineError::TooLong => {
                Reply::new(500, "5.5.2 Error: command line longer than 512 octets")
            }
            LineError::BareCrOrLf | LineError::Nul if starts(b"MAIL FROM:") => Reply::new(
                501,
                "5.1.7 Bad sender address syntax: CR, LF or NUL inside the address",
            ),
            LineError::BareCrOrLf | LineError::Nul if starts(b"RCPT TO:") => Reply::new(
                501,
                "5.1.3 Bad recipient address syntax: CR, LF or NUL inside the address",
            ),
            LineError::BareCrOrLf => Reply::new(
                500,
                "5.5.2 Error: bare CR or LF in command; lines must end with CRLF",
            ),
            LineError::Nul => Reply::new(500, "5.5.2 Error: NUL octet in command"),
        };
        self.refuse(Refusal::with_reply(RefusalReason::Syntax, reply))
            .into()
    }

    /// The body has ended; returns the transaction to store, or the refusal.
    /// Either way the transaction is over.
    pub fn data_end(
        &mut self,
        body: Result<Vec<u8>, DataError>,
    ) -> Result<(Transaction, Vec<u8>), Refused> {
        let transaction = self
            .transaction
            .take()
            .expect("DATA is only entered with an open transaction");
        self.reset_owed = true;
        match body {
            Ok(body) if trace::received_count(&body) >= trace::MAX_HOPS => {
                Err(self.refuse(Refusal::new(
                    RefusalReason::MailLoop,
                    554,
                    format!(
                        "5.4.6 Message refused: {} or more Received: headers, a mail loop?",
                        trace::MAX_HOPS
                    ),
                )))
            }
            Ok(body) => {
                // Mail moved: the junk count starts again (a client that
                // says RSET before each message on a kept-open connection
                // is not idling).
                self.junk = 0;
                Ok((transaction, body))
            }
            Err(error) => {
                let refusal = match error {
                    DataError::TooBig => Refusal::new(
                        RefusalReason::TooBig,
                        552,
                        format!(
                            "5.3.4 Message size exceeds the limit of {} octets",
                            self.server.max_message_size
                        ),
                    ),
                    DataError::BareCrOrLf => Refusal::new(
                        RefusalReason::BadContent,
                        554,
                        "5.6.0 Message refused: bare CR or LF in the body; lines must end with CRLF",
                    ),
                    DataError::Nul => Refusal::new(
                        RefusalReason::BadContent,
                        554,
                        "5.6.0 Message refused: NUL octet in the body",
                    ),
                    DataError::LineTooLong => Refusal::new(
                        RefusalReason::BadContent,
                        554,
                        "5.6.0 Message refused: a line is longer than 1000 octets",
                    ),
                };
                Err(self.refuse(refusal))
            }
        }
    }

    /// A command out of order (503 5.5.1), which counts as an error.
    fn out_of_sequence(&mut self, text: &'static str) -> Step {
        self.refuse(Refusal::out_of_sequence(text)).into()
    }

    /// A recipient past `max_recipients`: 452, not an error (RFC 5321
    /// 4.5.3.1.8 has clients send the rest in another transaction), until
    /// [`RECIPIENT_OVERSHOOT`] of them in the session; each one past that
    /// counts toward `max_errors`, as Postfix's
    /// `smtpd_recipient_overshoot_limit`. The first is logged, the rest
    /// only counted.
    fn one_recipient_too_many(&mut self) -> Step {
        let max = self.server.max_recipients;
        self.overshoot += 1;
        let refusal = Refusal::new(
            RefusalReason::TooManyRecipients,
            452,
            format!("4.5.3 Error: too many recipients (at most {max} per message)"),
        );
        let refusal = if self.overshoot > 1 {
            refusal.quiet()
        } else {
            refusal
        };
        if self.overshoot > RECIPIENT_OVERSHOOT {
            return self.refuse(refusal).into();
        }
        Step::Refuse(refusal)
    }

    /// Counts an error reply; past `max_errors` the session ends with 421
    /// (counted as `too_many_errors`, not as the refusal that tipped it).
    /// The acceptance pipeline calls it for the message rules it applies
    /// after DATA (they may wait for DNS, which the state machine never
    /// does).
    pub fn refuse(&mut self, refusal: Refusal) -> Refused {
        self.errors += 1;
        if self.errors >= self.server.max_errors {
            return Refused::Close(Refusal::new(
                RefusalReason::TooManyErrors,
                421,
                format!(
                    "4.7.0 {} Error: too many errors, closing connection",
                    self.server.hostname
                ),
            ));
        }
        Refused::Continue(refusal)
    }
}

fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    use base64ct::Encoding;
    base64ct::Base64::decode_vec(text.trim()).ok()
}

fn malformed_plain() -> Refusal {
    Refusal::new(RefusalReason::Syntax, 501, "5.5.2 Malformed PLAIN response")
}

fn bad_base64() -> Refusal {
    Refusal::new(
        RefusalReason::Syntax,
        501,
        "5.5.2 Cannot decode the response (base64 expected)",
    )
}

/// The `250` to a stored message: its queue id, and when it is expected to
/// leave and why, when that is more than a minute away (mail waiting for
/// room is held, not refused: the app learns the wait without having to
/// retry).
pub fn accepted_reply(queue_id: &str, projection: &Projection) -> Reply {
    if projection.wait <= 60.0 || !projection.wait.is_finite() {
        return Reply::new(250, format!("2.0.0 Ok: queued as {queue_id}"));
    }
    Reply::new(
        250,
        format!(
            "2.0.0 Ok: queued as {queue_id}; leaves in about {} ({})",
            format_duration(projection.wait),
            projection.reason.describe()
        ),
    )
}

/// `451 4.7.1` with why and when to come back, before the body is sent.
fn deferral_reply(deferral: &Deferral) -> Reply {
    if deferral.reason == DeferReason::Recipients {
        // RFC 5321 4.5.3.1.10: the client sends the rest in another
        // transaction, which the budgets can let through.
        return Reply::new(
            452,
            "4.5.3 Too many recipients for this gateway's volume budget in one message; send the rest in another transaction",
        );
    }
    let why = match deferral.reason {
        DeferReason::QueueDelay => format!(
            "the gateway is sending slowly and new mail would wait about {} here",
            format_duration(deferral.projected_wait)
        ),
        DeferReason::QueueFull => "the queue for this gateway is full".to_string(),
        DeferReason::Cap => format!(
            "the gateway's sending cap leaves no room for about {}",
            format_duration(deferral.projected_wait)
        ),
        reason => {
            let hourly = matches!(
                reason,
                DeferReason::HourBudget | DeferReason::ReceiverHourBudget
            );
            let receiver = matches!(
                reason,
                DeferReason::ReceiverHourBudget | DeferReason::ReceiverDayBudget
            );
            format!(
                "{} {} volume budget ({}) leaves no room for about {}",
                if receiver {
                    "a receiver's own"
                } else {
                    "the gateway's"
                },
                if hourly { "hourly" } else { "daily" },
                if receiver {
                    "what that mailbox provider has seen from the gateway"
                } else {
                    "what receivers accept from it"
                },
                format_duration(deferral.projected_wait)
            )
        }
    };
    Reply::new(
        451,
        format!(
            "4.7.1 Rate limited: {why}; try again in {}",
            format_duration(deferral.retry_after)
        ),
    )
}

/// Every command that does not parse is a syntax error, whatever its code.
fn command_error_reply(error: CommandError) -> Refusal {
    let reply = match error {
        CommandError::Unrecognized => Reply::new(500, "5.5.1 Error: command not recognized"),
        CommandError::Syntax(why) => Reply::new(501, format!("5.5.4 Syntax error: {why}")),
        CommandError::BadAddress { sender: true, why } => {
            Reply::new(501, format!("5.1.7 Bad sender address syntax: {why}"))
        }
        CommandError::BadAddress { sender: false, why } => {
            Reply::new(501, format!("5.1.3 Bad recipient address syntax: {why}"))
        }
        CommandError::RouteAddress { sender } => {
            let (status, whose) = if sender {
                ("5.1.7", "sender")
            } else {
                ("5.1.3", "recipient")
            };
            Reply::new(
                553,
                format!(
                    "{status} Error: more than one '@' in the {whose} address: routing through an address is not relayed (quote the local part if the '@' belongs to it)"
                ),
            )
        }
        CommandError::UnknownParameter(param) => {
            Reply::new(555, format!("5.5.4 Unsupported parameter: {param}"))
        }
    };
    Refusal::with_reply(RefusalReason::Syntax, reply)
}

#[cfg(test)]
mod tests;
