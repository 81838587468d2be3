//! Parsing one SMTP command line (CRLF already removed by the framer).
//!
//! Addresses are kept exactly as the client wrote them (quotes, `%`, `!` and
//! all) apart from a leading source route, which RFC 5321 4.1.1.3 says to
//! ignore: we always relay to a configured gateway, so none of those forms can
//! route mail anywhere, and rewriting them would change what the gateway sees.
//! An address that could be read two ways (control characters, a stray `>`,
//! unbalanced quotes) is refused instead.

/// `BODY=` of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// The MAIL FROM parameters we support.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the client's estimate of the message size.
    pub size: Option<u64>,
    pub body: Body,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

impl MailParams {
    /// The ESMTP words of these parameters, as MAIL FROM carries them:
    /// `BODY=8BITMIME` (7BIT is the default and not written), `SMTPUTF8`,
    /// `SIZE=n`; [`MailParams::from_words`] reads them back.
    pub fn to_words(&self) -> String {
        let mut words = Vec::new();
        if self.body == Body::EightBitMime {
            words.push("BODY=8BITMIME".to_string());
        }
        if self.smtputf8 {
            words.push("SMTPUTF8".to_string());
        }
        if let Some(size) = self.size {
            words.push(format!("SIZE={size}"));
        }
        words.join(" ")
    }

    /// Reads the parameter words of MAIL FROM (any case, any order).
    pub fn from_words(words: &str) -> Result<MailParams, CommandError> {
        let mut parsed = MailParams::default();
        for param in words.split(' ').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => {
                    parsed.size = Some(value.parse().map_err(|_| {
                        CommandError::Syntax("SIZE= takes a whole number of octets")
                    })?);
                }
                "BODY" => {
                    parsed.body = match value.to_ascii_uppercase().as_str() {
                        "7BIT" => Body::SevenBit,
                        "8BITMIME" => Body::EightBitMime,
                        _ => return Err(CommandError::UnknownParameter(param.to_string())),
                    };
                }
                "SMTPUTF8" if value.is_empty() => parsed.smtputf8 = true,
                _ => return Err(CommandError::UnknownParameter(param.to_string())),
            }
        }
        Ok(parsed)
    }
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: String,
        params: MailParams,
    },
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954); both as sent.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// A known command we do not offer (EXPN, TURN, ...).
    NotImplemented(String),
}

/// Why a command line could not be parsed; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// 500 5.5.1: no such command.
    Unrecognized,
    /// 501 5.5.4 / 5.5.2: bad arguments; the text says what was expected.
    Syntax(&'static str),
    /// 501 5.1.7 (sender) or 5.1.3 (recipient): the address itself is malformed.
    BadAddress { sender: bool, why: &'static str },
    /// 553 5.1.7 (sender) or 5.1.3 (recipient): more than one unquoted
    /// `@` (`user@example.org@[192.0.2.1]`): a gateway may route it to the
    /// last domain, so it is refused, as Postfix does by default
    /// (`allow_untrusted_routing = no`).
    RouteAddress { sender: bool },
    /// 555 5.5.4: a MAIL/RCPT parameter we do not support.
    UnknownParameter(String),
}

/// Longest path RFC 5321 4.5.3.1.3 allows, brackets included.
const MAX_PATH: usize = 256;

/// Parses one command line.
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line)
        .map_err(|_| CommandError::Syntax("command is not valid UTF-8"))?;
    let (verb, rest) = match line.find(' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_argument = |command: Command| {
        if rest.trim().is_empty() {
            Ok(command)
        } else {
            Err(CommandError::Syntax("this command takes no argument"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let host = rest.trim();
            if host.is_empty() || host.contains(' ') || host.len() > 255 {
                return Err(CommandError::Syntax(
                    "expected EHLO/HELO followed by your host name",
                ));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(host.to_string())
            } else {
                Command::Helo(host.to_string())
            })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_argument(Command::Data),
        "RSET" => no_argument(Command::Rset),
        "QUIT" => no_argument(Command::Quit),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_argument(Command::StartTls),
        "AUTH" => {
            let mut words = rest.split_whitespace();
            let mechanism = words
                .next()
                .ok_or(CommandError::Syntax(
                    "expected AUTH mechanism [initial-response]",
                ))?
                .to_ascii_uppercase();
            let initial = words.next().map(str::to_string);
            if words.next().is_some() {
                return Err(CommandError::Syntax(
                    "expected AUTH mechanism [initial-response]",
                ));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "EXPN" | "TURN" | "ETRN" | "ATRN" | "BDAT" | "SEND" | "SOML" | "SAML" => {
            Ok(Command::NotImplemented(verb))
        }
        _ => Err(CommandError::Unrecognized),
    }
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    const SYNTAX: &str = "expected MAIL FROM:<address> [parameters]";
    let path = strip_keyword(rest, "FROM:").ok_or(CommandError::Syntax(SYNTAX))?;
    let (from, params) = parse_path(path, true)?;
    let parsed = MailParams::from_words(params)?;
    if !parsed.smtputf8 && !from.is_ascii() {
        return Err(CommandError::BadAddress {
            sender: true,
            why: "non-ASCII address without SMTPUTF8",
        });
    }
    Ok(Command::Mail {
        from,
        params: parsed,
    })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    const SYNTAX: &str = "expected RCPT TO:<address>";
    let path = strip_keyword(rest, "TO:").ok_or(CommandError::Syntax(SYNTAX))?;
    let (to, params) = parse_path(path, false)?;
    if let Some(param) = params.split(' ').find(|p| !p.is_empty()) {
        return Err(CommandError::UnknownParameter(param.to_string()));
    }
    if to.is_empty() {
        return Err(CommandError::BadAddress {
            sender: false,
            why: "a recipient address is required",
        });
    }
    Ok(Command::Rcpt { to })
}

/// Strips `FROM:` / `TO:` (any case) and the optional space some clients add.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| rest[keyword.len()..].trim_start_matches(' '))
}

/// Parses `<address> params`, returning the address (source route removed) and
/// the parameter text.
fn parse_path(text: &str, sender: bool) -> Result<(String, &str), CommandError> {
    let bad = |why| CommandError::BadAddress { sender, why };
    let inner = text.strip_prefix('<').ok_or(CommandError::Syntax(
        "the address must be enclosed in <angle brackets>",
    ))?;
    let mut quotes = Quotes::default();
    let mut end = None;
    for (index, ch) in inner.char_indices() {
        if ch.is_control() {
            return Err(bad("control characters are not allowed in an address"));
        }
        match ch {
            _ if !quotes.is_plain(ch) => {}
            '>' => {
                end = Some(index);
                break;
            }
            '<' => return Err(bad("'<' inside an address")),
            ' ' => return Err(bad("unquoted space inside an address")),
            _ => {}
        }
    }
    let end = end.ok_or_else(|| bad("missing closing '>' (or unbalanced quotes)"))?;
    let address = &inner[..end];
    let after = &inner[end + 1..];
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(bad("unexpected text after the closing '>'"));
    }
    if end + 2 > MAX_PATH {
        return Err(bad("address longer than 256 octets"));
    }
    let address = strip_source_route(address).ok_or_else(|| bad("malformed source route"))?;
    if unquoted_ats(address) > 1 {
        return Err(CommandError::RouteAddress { sender });
    }
    if !address.is_empty() {
        check_mailbox(address).map_err(bad)?;
    }
    Ok((address.to_string(), after.trim_start_matches(' ')))
}

/// `@relay1,@relay2:user@host` -> `user@host` (RFC 5321 4.1.1.3, appendix C).
fn strip_source_route(address: &str) -> Option<&str> {
    if !address.starts_with('@') {
        return Some(address);
    }
    let (route, mailbox) = address.split_once(':')?;
    let hops_valid = route
        .split(',')
        .all(|hop| hop.len() > 1 && hop.starts_with('@') && !hop[1..].contains('@'));
    hops_valid.then_some(mailbox)
}

/// `local@domain` with a non-empty local part (quoted or not) and a domain
/// that is a host name or an address literal. `Postmaster` alone is allowed
/// (RFC 5321 4.5.1).
fn check_mailbox(address: &str) -> Result<(), &'static str> {
    if address.eq_ignore_ascii_case("postmaster") {
        return Ok(());
    }
    let at = last_unquoted_at(address).ok_or("expected local-part@domain")?;
    let (local, domain) = (&address[..at], &address[at + 1..]);
    if local.is_empty() {
        return Err("empty local part");
    }
    if local.starts_with('"') != local.ends_with('"') || (local.len() == 1 && local == "\"") {
        return Err("misplaced quotes in the local part");
    }
    let domain_ok = if let Some(literal) = domain.strip_prefix('[') {
        literal.ends_with(']')
            && literal.len() > 1
            && !literal[..literal.len() - 1].contains(['[', ']'])
    } else {
        !domain.is_empty()
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '-' || !c.is_ascii())
            })
    };
    if domain_ok {
        Ok(())
    } else {
        Err("invalid domain")
    }
}

/// How many `@` stand outside quoted strings in `address`.
fn unquoted_ats(address: &str) -> usize {
    let mut quotes = Quotes::default();
    address
        .chars()
        .filter(|&ch| quotes.is_plain(ch) && ch == '@')
        .count()
}

fn last_unquoted_at(address: &str) -> Option<usize> {
    let mut quotes = Quotes::default();
    address
        .char_indices()
        .filter(|&(_, ch)| quotes.is_plain(ch))
        .filter(|&(_, ch)| ch == '@')
        .last()
        .map(|(index, _)| index)
}

/// Tracks quoted strings (RFC 5321 Quoted-string, with backslash escapes)
/// while scanning an address character by character.
#[derive(Default)]
struct Quotes {
    inside: bool,
    escaped: bool,
}

impl Quotes {
    /// Feeds the next character; true when it stands outside any quoted
    /// string and is not a quote itself, so it has its plain meaning.
    fn is_plain(&mut self, ch: char) -> bool {
        if self.escaped {
            self.escaped = false;
            return false;
        }
        match ch {
            '\\' if self.inside => self.escaped = true,
            '"' => self.inside = !self.inside,
            _ => return !self.inside,
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_parameters_are_written_as_they_are_read() {
        for words in [
            "",
            "BODY=8BITMIME",
            "SMTPUTF8",
            "BODY=8BITMIME SMTPUTF8 SIZE=1000",
        ] {
            let params = MailParams::from_words(words).unwrap();
            assert_eq!(params.to_words(), words);
        }
        let read = MailParams::from_words("size=7 smtputf8 body=7bit").unwrap();
        assert_eq!(read.to_words(), "SMTPUTF8 SIZE=7");
        assert!(MailParams::from_words("BODY=BINARYMIME").is_err());
    }

    fn mail(line: &str) -> Result<Command, CommandError> {
        parse(line.as_bytes())
    }

    fn from(line: &str) -> String {
        match mail(line).unwrap() {
            Command::Mail { from, .. } => from,
            other => panic!("not MAIL: {other:?}"),
        }
    }

    fn to(line: &str) -> String {
        match mail(line).unwrap() {
            Command::Rcpt { to } => to,
            other => panic!("not RCPT: {other:?}"),
        }
    }

    #[test]
    fn parses_verbs_case_insensitively() {
        assert_eq!(
            mail("ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(mail("QUIT"), Ok(Command::Quit));
        assert_eq!(mail("noop anything"), Ok(Command::Noop));
        assert_eq!(
            mail("EXPN list"),
            Ok(Command::NotImplemented("EXPN".into()))
        );
        assert_eq!(mail("FOO"), Err(CommandError::Unrecognized));
        assert!(matches!(mail("DATA now"), Err(CommandError::Syntax(_))));
        assert!(matches!(mail("EHLO"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn parses_mail_parameters() {
        assert_eq!(
            mail("MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8"),
            Ok(Command::Mail {
                from: "a@b.test".into(),
                params: MailParams {
                    size: Some(1000),
                    body: Body::EightBitMime,
                    smtputf8: true
                }
            })
        );
        assert_eq!(from("MAIL FROM:<>"), "");
        assert_eq!(from("mail from: <a@b.test>"), "a@b.test");
        assert!(matches!(
            mail("MAIL FROM:<a@b.test> RET=FULL"),
            Err(CommandError::UnknownParameter(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<a@b.test> SIZE=big"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:a@b.test"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            mail("RCPT TO:<a@b.test> NOTIFY=NEVER"),
            Err(CommandError::UnknownParameter(_))
        ));
    }

    #[test]
    fn keeps_relay_tricks_as_plain_addresses() {
        assert_eq!(
            to("RCPT TO:<user%other.test@gw.test>"),
            "user%other.test@gw.test"
        );
        assert_eq!(to("RCPT TO:<host!user@gw.test>"), "host!user@gw.test");
        assert_eq!(
            to("RCPT TO:<\"user@evil.test\"@gw.test>"),
            "\"user@evil.test\"@gw.test"
        );
        assert_eq!(to("RCPT TO:<\"odd>name\"@gw.test>"), "\"odd>name\"@gw.test");
        assert_eq!(
            to("RCPT TO:<@relay.test,@r2.test:user@gw.test>"),
            "user@gw.test"
        );
        assert_eq!(to("RCPT TO:<Postmaster>"), "Postmaster");
    }

    #[test]
    fn refuses_ambiguous_addresses() {
        for line in [
            "RCPT TO:<a>b@c.test>",
            "RCPT TO:<a@c.test>x",
            "RCPT TO:<a\rb@c.test>",
            "RCPT TO:<a\nb@c.test>",
            "RCPT TO:<a\0b@c.test>",
            "RCPT TO:<a b@c.test>",
            "RCPT TO:<a@c.test",
            "RCPT TO:<\"a@c.test>",
            "RCPT TO:<a<b@c.test>",
            "RCPT TO:<@c.test>",
            "RCPT TO:<a@>",
            "RCPT TO:<a@b..test>",
            "RCPT TO:<user>",
            "RCPT TO:<@relay.test:>",
            "RCPT TO:<>",
            "MAIL FROM:<ü@b.test>",
        ] {
            assert!(
                matches!(mail(line), Err(CommandError::BadAddress { .. })),
                "{line:?} gave {:?}",
                mail(line)
            );
        }
        let long = format!("RCPT TO:<{}@b.test>", "a".repeat(250));
        assert!(matches!(mail(&long), Err(CommandError::BadAddress { .. })));
    }

    #[test]
    fn refuses_more_than_one_unquoted_at() {
        assert_eq!(
            mail("RCPT TO:<relaytest@example.org@[127.0.0.1]>"),
            Err(CommandError::RouteAddress { sender: false })
        );
        assert_eq!(
            mail("MAIL FROM:<a@b.test@c.test>"),
            Err(CommandError::RouteAddress { sender: true })
        );
        // Quoted, the '@' belongs to the local part; a source route is
        // stripped first, as before.
        assert_eq!(to("RCPT TO:<\"a@b\"@gw.test>"), "\"a@b\"@gw.test");
        assert_eq!(to("RCPT TO:<@relay.test:user@gw.test>"), "user@gw.test");
    }

    /// Random lines built from SMTP-ish pieces never panic the parser, and
    /// any address it accepts is free of control characters.
    #[test]
    fn random_lines_never_panic() {
        let pieces = [
            "MAIL FROM:",
            "RCPT TO:",
            "<",
            ">",
            "\"",
            "\\",
            "@",
            ".",
            " ",
            ":",
            ",",
            "=",
            "a",
            "ü",
            "SIZE=1",
            "BODY=8BITMIME",
            "SMTPUTF8",
            "\r",
            "\0",
            "[1.2.3.4]",
            "%",
            "!",
        ];
        for seed in 0..20_000u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let line: String = (0..rng.usize(0..12))
                .map(|_| pieces[rng.usize(0..pieces.len())])
                .collect();
            match parse(line.as_bytes()) {
                Ok(Command::Mail { from: address, .. }) | Ok(Command::Rcpt { to: address }) => {
                    assert!(!address.chars().any(char::is_control), "{line:?}");
                    assert!(!address.contains(' ') || address.contains('"'), "{line:?}");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn accepts_utf8_addresses_with_smtputf8() {
        assert_eq!(from("MAIL FROM:<ü@bü.test> SMTPUTF8"), "ü@bü.test");
    }
}
