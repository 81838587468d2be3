//! Reading a message's header section (RFC 5322 2.2): where it ends,
//! its fields with their folded continuation lines, a field's name and
//! value, and the mailboxes of an address field (RFC 5322 3.4). Pure
//! functions on bytes; used to pick the DKIM signing domain, to show and
//! log a queued message (its Message-ID, its headers), and to hold From:
//! and Sender: to the relay rules.
//!
//! The mailbox reader is strict where it decides which address a field
//! names (the addr-spec: dot-atoms or quoted strings, `@`, a domain or a
//! domain literal) and lenient in what only a person reads (a display name
//! with `@` or `.` in it, as many apps write `noreply@app.test
//! <noreply@app.test>`): whatever stands before `<` is the display name,
//! and the address is the one in angle brackets. Comments are skipped
//! wherever CFWS may stand.

/// Headers (with their final CRLF) and body.
pub fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match message.windows(4).position(|window| window == b"\r\n\r\n") {
        Some(at) => (&message[..at + 2], &message[at + 4..]),
        None => (message, &[]),
    }
}

/// Header fields, each with its continuation lines and final CRLF.
pub fn fields(headers: &[u8]) -> Vec<Vec<u8>> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in headers.split_inclusive(|&b| b == b'\n') {
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => last.extend_from_slice(line),
            _ => fields.push(line.to_vec()),
        }
    }
    fields
}

pub fn field_name(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).unwrap_or("").trim_end()
}

/// The unfolded, trimmed value of the first `name` field (any case), its
/// runs of white space made one space.
pub fn value(message: &[u8], name: &str) -> Option<String> {
    values(message, name)
        .into_iter()
        .next()
        .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The unfolded values of every `name` field (any case), in order: each
/// CRLF of a fold removed (RFC 5322 2.2.3), the white space kept, so a
/// quoted string reads as it was written.
pub fn values(message: &[u8], name: &str) -> Vec<String> {
    let (headers, _) = split(message);
    fields(headers)
        .into_iter()
        .filter(|field| field_name(field).eq_ignore_ascii_case(name))
        .map(|field| {
            let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
            let raw = field.get(colon + 1..).unwrap_or(&[]);
            let unfolded: Vec<u8> = raw
                .iter()
                .copied()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect();
            String::from_utf8_lossy(&unfolded).trim().to_string()
        })
        .collect()
}

/// One mailbox of an address field: its address as written (a quoted local
/// part keeps its quotes, so it compares like the envelope's), and its
/// domain in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub address: String,
    pub domain: String,
}

/// A lexical piece of an address field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A run of atext (RFC 5322 3.2.3; any non-ASCII character counts,
    /// RFC 6532).
    Atom(String),
    /// A quoted string, quotes and escapes as written.
    Quoted(String),
    /// A domain literal, brackets included.
    Literal(String),
    /// One of `<>,:;@.`
    Special(char),
}

fn tokens(value: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {}
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match chars.next() {
                        Some('\\') => {
                            chars.next();
                        }
                        Some('(') => depth += 1,
                        Some(')') => depth -= 1,
                        Some(_) => {}
                        None => return Err("a comment is not closed with ')'".into()),
                    }
                }
            }
            '"' => {
                let mut quoted = String::from('"');
                loop {
                    match chars.next() {
                        Some('\\') => {
                            quoted.push('\\');
                            quoted.extend(chars.next());
                        }
                        Some('"') => break,
                        Some(c) => quoted.push(c),
                        None => return Err("a quoted string is not closed with '\"'".into()),
                    }
                }
                quoted.push('"');
                tokens.push(Token::Quoted(quoted));
            }
            '[' => {
                let mut literal = String::from('[');
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some('[' | '\\') | None => {
                            return Err("a domain literal is not closed with ']'".into());
                        }
                        Some(c) => literal.push(c),
                    }
                }
                literal.push(']');
                tokens.push(Token::Literal(literal));
            }
            '<' | '>' | ',' | ':' | ';' | '@' | '.' => tokens.push(Token::Special(c)),
            ')' | ']' | '\\' => return Err(format!("a stray '{c}'")),
            c if c.is_control() => return Err("a control character".into()),
            c => {
                let mut atom = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_control() || " \t()<>[]:;@\\,.\"".contains(next) {
                        break;
                    }
                    atom.push(next);
                    chars.next();
                }
                tokens.push(Token::Atom(atom));
            }
        }
    }
    Ok(tokens)
}

/// The mailboxes of a mailbox-list field value such as From: (RFC 5322
/// 3.4): `Name <local@domain>`, `local@domain (comment)`, `"quoted
/// local"@domain`, several separated by commas (an empty element between
/// commas is skipped, as RFC 5322 4.4 allows). A group (`name: ...;`) or a
/// value with no mailbox is an error, which says what is wrong.
pub fn mailboxes(value: &str) -> Result<Vec<Mailbox>, String> {
    let tokens = tokens(value)?;
    let mut mailboxes = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Special('<') => depth += 1,
            Token::Special('>') => depth = depth.saturating_sub(1),
            Token::Special(',') if depth == 0 => {
                if index > start {
                    mailboxes.push(mailbox(&tokens[start..index])?);
                }
                start = index + 1;
            }
            _ => {}
        }
    }
    if tokens.len() > start {
        mailboxes.push(mailbox(&tokens[start..])?);
    }
    if mailboxes.is_empty() {
        return Err("no mailbox".into());
    }
    Ok(mailboxes)
}

/// One mailbox: `[display name] <addr-spec>` or a bare addr-spec.
fn mailbox(tokens: &[Token]) -> Result<Mailbox, String> {
    let Some(open) = tokens.iter().position(|t| *t == Token::Special('<')) else {
        if tokens.contains(&Token::Special(':')) || tokens.contains(&Token::Special(';')) {
            return Err("a group (name: ...;) where a mailbox belongs".into());
        }
        return addr_spec(tokens);
    };
    let name = &tokens[..open];
    if name
        .iter()
        .any(|t| matches!(t, Token::Special(':' | ';' | '>')))
    {
        return Err("a group (name: ...;) where a mailbox belongs".into());
    }
    let close = tokens
        .iter()
        .rposition(|t| *t == Token::Special('>'))
        .filter(|&close| close > open)
        .ok_or("'<' without its '>'")?;
    if close + 1 != tokens.len() {
        return Err("something after the '>' of an address".into());
    }
    let mut inner = &tokens[open + 1..close];
    // An obsolete source route (`<@relay.test:user@example.com>`, RFC 5322
    // 4.4) names hops, not the mailbox: skip it.
    if inner.first() == Some(&Token::Special('@'))
        && let Some(colon) = inner.iter().position(|t| *t == Token::Special(':'))
    {
        inner = &inner[colon + 1..];
    }
    if inner.is_empty() {
        return Err("an empty address <>".into());
    }
    addr_spec(inner)
}

/// `local-part@domain`: words (atoms or quoted strings) joined by dots, then
/// a dotted domain or a domain literal.
fn addr_spec(tokens: &[Token]) -> Result<Mailbox, String> {
    let at = tokens
        .iter()
        .rposition(|t| *t == Token::Special('@'))
        .ok_or("an address without @domain")?;
    let dotted = |tokens: &[Token], quoted_ok: bool| -> Option<String> {
        let mut text = String::new();
        for (index, token) in tokens.iter().enumerate() {
            match (index % 2, token) {
                (0, Token::Atom(word)) => text.push_str(word),
                (0, Token::Quoted(word)) if quoted_ok => text.push_str(word),
                (1, Token::Special('.')) => text.push('.'),
                _ => return None,
            }
        }
        (!tokens.is_empty() && tokens.len() % 2 == 1).then_some(text)
    };
    let local = dotted(&tokens[..at], true).ok_or("a malformed local part before @")?;
    let domain = match &tokens[at + 1..] {
        [Token::Literal(literal)] => literal.clone(),
        rest => dotted(rest, false).ok_or("a malformed domain after @")?,
    };
    Ok(Mailbox {
        address: format!("{local}@{domain}"),
        domain: domain.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_folded_fields_and_the_end_of_the_header_section() {
        let message =
            b"Received: from a\r\n\tby b\r\nMessage-ID:\r\n <x@y>\r\nSubject: hi\r\n\r\nbody\r\n";
        let (headers, body) = split(message);
        assert_eq!(body, b"body\r\n");
        assert_eq!(fields(headers).len(), 3);
        assert_eq!(value(message, "message-id").as_deref(), Some("<x@y>"));
        assert_eq!(value(message, "Received").as_deref(), Some("from a by b"));
        assert_eq!(value(message, "To"), None);
        assert_eq!(
            value(b"Subject: no body", "subject").as_deref(),
            Some("no body")
        );
    }

    #[test]
    fn values_unfolds_every_field_of_a_name_and_keeps_quoted_spaces() {
        let message =
            b"From: \"A  B\"\r\n <a@x.test>\r\nTo: t@y\r\nfrom: c@z.test\r\n\r\nFrom: body@no\r\n";
        assert_eq!(values(message, "From"), ["\"A  B\" <a@x.test>", "c@z.test"]);
        assert!(values(message, "Sender").is_empty());
    }

    fn addresses(value: &str) -> Result<Vec<(String, String)>, String> {
        mailboxes(value).map(|list| {
            list.into_iter()
                .map(|mailbox| (mailbox.address, mailbox.domain))
                .collect()
        })
    }

    fn one(address: &str, domain: &str) -> Result<Vec<(String, String)>, String> {
        Ok(vec![(address.to_string(), domain.to_string())])
    }

    #[test]
    fn reads_the_mailbox_forms_of_rfc_5322() {
        assert_eq!(
            addresses("a@Example.COM"),
            one("a@Example.COM", "example.com")
        );
        assert_eq!(
            addresses("Billing Team <billing@example.com>"),
            one("billing@example.com", "example.com")
        );
        assert_eq!(
            addresses("\"Doe, John (Billing)\" <john.doe@example.com>"),
            one("john.doe@example.com", "example.com"),
            "a comma and parentheses inside a quoted display name"
        );
        assert_eq!(
            addresses("john@example.com (John <ceo@corp.test>)"),
            one("john@example.com", "example.com"),
            "a comment is no address"
        );
        assert_eq!(
            addresses("(x) <(y) a . b @ (z) Sub.Example.com (w)>"),
            one("a.b@Sub.Example.com", "sub.example.com"),
            "CFWS around dots and @"
        );
        assert_eq!(
            addresses("\"john doe\"@example.com"),
            one("\"john doe\"@example.com", "example.com")
        );
        assert_eq!(
            addresses("\"ceo@corp.test\"@example.com"),
            one("\"ceo@corp.test\"@example.com", "example.com"),
            "an @ inside a quoted local part"
        );
        assert_eq!(
            addresses("J. Smith <j@example.com>"),
            one("j@example.com", "example.com")
        );
        assert_eq!(
            addresses("noreply@app.test <noreply@app.test>"),
            one("noreply@app.test", "app.test"),
            "an address as display name"
        );
        assert_eq!(
            addresses("ceo@corp.test <x@example.com>"),
            one("x@example.com", "example.com"),
            "the angle address is the mailbox"
        );
        assert_eq!(
            addresses("=?utf-8?q?Fran=C3=A7ois?= <f@example.com>"),
            one("f@example.com", "example.com")
        );
        assert_eq!(
            addresses("Zoë <zoë@exämple.com>"),
            one("zoë@exämple.com", "exämple.com")
        );
        assert_eq!(
            addresses("<@relay.test,@hop.test:a@example.com>"),
            one("a@example.com", "example.com")
        );
        assert_eq!(
            addresses("a@[192.0.2.1]"),
            one("a@[192.0.2.1]", "[192.0.2.1]")
        );
        assert_eq!(
            addresses("a@x.test, B <b@y.test>,, c@z.test"),
            Ok(vec![
                ("a@x.test".into(), "x.test".into()),
                ("b@y.test".into(), "y.test".into()),
                ("c@z.test".into(), "z.test".into()),
            ])
        );
    }

    #[test]
    fn says_what_is_wrong_with_a_field_it_cannot_read() {
        for (value, why) in [
            ("", "no mailbox"),
            ("John Doe", "without @domain"),
            ("<>", "empty address"),
            ("a@", "malformed domain"),
            ("@example.com", "malformed local part"),
            ("a..b@example.com", "malformed local part"),
            ("a@example..com", "malformed domain"),
            ("Team: a@x.test, b@y.test;", "group"),
            ("<a@x.test", "without its '>'"),
            ("<a@x.test> trailing", "after the '>'"),
            ("\"open@x.test", "quoted string is not closed"),
            ("a@x.test (open", "comment is not closed"),
            ("a@[1.2.3.4", "domain literal"),
            ("a b@x.test", "malformed local part"),
        ] {
            let error = mailboxes(value).unwrap_err();
            assert!(error.contains(why), "{value:?}: {error}");
        }
    }
}
