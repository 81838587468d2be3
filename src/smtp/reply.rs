//! SMTP replies: the ones we send and the ones a gateway sends us.
//!
//! A reply is a code and one or more text lines. With ENHANCEDSTATUSCODES the
//! enhanced status (`2.1.0`) starts each text line; it is kept inside the text,
//! so a gateway's reply is stored and logged exactly as it was received.

use std::fmt;

/// One reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

/// Longest reply line we accept from a gateway (RFC 5321 says 512; real
/// servers send longer EHLO and error texts, so be generous but bounded).
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply, so a hostile gateway cannot grow our memory.
const MAX_REPLY_LINES: usize = 128;

/// What is wrong with bytes that should have been a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError(pub String);

impl Reply {
    /// A one-line reply; `text` starts with the enhanced status where one applies.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: will never succeed as sent.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// 4xx or 5xx: the command failed.
    pub fn is_failure(&self) -> bool {
        self.is_transient() || self.is_permanent()
    }

    /// The reply's class as the metrics label it: `2xx`, `4xx`, or `5xx`
    /// for anything else (a gateway's final reply is never 1xx or 3xx; one
    /// that is counts as the failure it is).
    pub fn class_label(&self) -> &'static str {
        if self.is_positive() {
            "2xx"
        } else if self.is_transient() {
            "4xx"
        } else {
            "5xx"
        }
    }

    /// The enhanced status at the start of the first line, e.g. `"4.7.1"`.
    pub fn enhanced_status(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let status = first.split(' ').next()?;
        let mut parts = status.split('.');
        let class = parts.next()?;
        let valid = matches!(class, "2" | "4" | "5")
            && parts.clone().count() == 2
            && parts.all(|part| {
                (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
            });
        valid.then_some(status)
    }

    /// The wire form, ending in CRLF.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out);
        out
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{separator}{line}\r\n", self.code).as_bytes());
        }
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
        }
    }

    /// Parses one complete reply from the front of `input`.
    ///
    /// Returns the reply and how many bytes it used, or `None` when more bytes
    /// are needed. Lines may end in CRLF or bare LF (we are the client here, so
    /// we are lenient in what we accept and strict in what we send).
    pub fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        let mut offset = 0;
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            let rest = &input[offset..];
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_REPLY_LINE {
                    return Err(ReplyError("reply line too long".into()));
                }
                return Ok(None);
            };
            let line = &rest[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            offset += end + 1;
            if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err(ReplyError(format!(
                    "not an SMTP reply: {:?}",
                    String::from_utf8_lossy(line)
                )));
            }
            let line_code: u16 = std::str::from_utf8(&line[..3])
                .ok()
                .and_then(|digits| digits.parse().ok())
                .unwrap_or(0);
            if !(200..600).contains(&line_code) || *code.get_or_insert(line_code) != line_code {
                return Err(ReplyError(format!("unexpected reply code {line_code}")));
            }
            let text = line.get(4..).unwrap_or_default();
            lines.push(String::from_utf8_lossy(text).into_owned());
            match line.get(3) {
                Some(b'-') if lines.len() < MAX_REPLY_LINES => {}
                Some(b'-') => return Err(ReplyError("reply has too many lines".into())),
                None | Some(b' ') => {
                    return Ok(Some((
                        Reply {
                            code: line_code,
                            lines,
                        },
                        offset,
                    )));
                }
                Some(_) => return Err(ReplyError("malformed reply separator".into())),
            }
        }
    }
}

impl fmt::Display for Reply {
    /// The reply on one line, for logs and dead-letter records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_single_and_multi_line() {
        assert_eq!(Reply::new(250, "2.0.0 Ok").to_wire(), b"250 2.0.0 Ok\r\n");
        let ehlo = Reply {
            code: 250,
            lines: vec!["host".into(), "PIPELINING".into(), "SIZE 10".into()],
        };
        assert_eq!(
            ehlo.to_wire(),
            b"250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn parses_multi_line_and_reports_consumed() {
        let input = b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n354 go";
        let (reply, used) = Reply::parse(input).unwrap().unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.lines, vec!["mx.example", "PIPELINING", "8BITMIME"]);
        assert_eq!(&input[used..], b"354 go");
        assert_eq!(Reply::parse(&input[used..]).unwrap(), None);
    }

    #[test]
    fn rejects_garbage_and_mixed_codes() {
        assert!(Reply::parse(b"hello\r\n").is_err());
        assert!(Reply::parse(b"250-a\r\n251 b\r\n").is_err());
        assert!(Reply::parse(b"999 x\r\n").is_err());
        assert_eq!(Reply::parse(b"220\r\n").unwrap().unwrap().0.code, 220);
    }

    #[test]
    fn classes_label_the_metrics() {
        let labels: Vec<(&str, bool)> = [250, 354, 421, 451, 550, 554]
            .into_iter()
            .map(|code| {
                let reply = Reply::new(code, "x");
                (reply.class_label(), reply.is_failure())
            })
            .collect();
        assert_eq!(
            labels,
            vec![
                ("2xx", false),
                ("5xx", false),
                ("4xx", true),
                ("4xx", true),
                ("5xx", true),
                ("5xx", true)
            ]
        );
    }

    #[test]
    fn finds_enhanced_status() {
        assert_eq!(
            Reply::new(451, "4.7.500 Server busy").enhanced_status(),
            Some("4.7.500")
        );
        assert_eq!(Reply::new(250, "Ok").enhanced_status(), None);
        assert_eq!(Reply::new(250, "1.2.3 x").enhanced_status(), None);
    }
}
