//! Command-line framing: find the next CRLF-terminated command in a buffer.
//!
//! Only CRLF ends a command line (RFC 5321 2.3.8). A bare CR, a bare LF or a NUL
//! makes the line an error, and so does a line longer than the limit, so no
//! byte sequence can be read two ways by us and by a gateway downstream.

/// Why a command line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// More than the limit of octets before CRLF.
    TooLong,
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareCrOrLf,
    /// A NUL octet.
    Nul,
}

/// What [`next_line`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// A line of `len` octets (CRLF excluded); `consumed` includes the CRLF.
    Line { len: usize, consumed: usize },
    /// A bad line; drop `consumed` octets (through its line end) and answer it.
    /// `consumed` is 0 when the line end has not arrived yet: keep reading.
    Bad { error: LineError, consumed: usize },
    /// No complete line yet.
    Incomplete,
}

/// Frames the next command line in `buf`; `max` counts the CRLF, as RFC 5321
/// 4.5.3.1.4 does (512).
pub fn next_line(buf: &[u8], max: usize) -> Framed {
    let mut error = None;
    for (index, &byte) in buf.iter().enumerate() {
        match byte {
            b'\n' => {
                let bare = index == 0 || buf[index - 1] != b'\r';
                let error = if bare {
                    Some(LineError::BareCrOrLf)
                } else {
                    error
                };
                let consumed = index + 1;
                return match error {
                    Some(error) => Framed::Bad { error, consumed },
                    None if consumed > max => Framed::Bad {
                        error: LineError::TooLong,
                        consumed,
                    },
                    None => Framed::Line {
                        len: index - 1,
                        consumed,
                    },
                };
            }
            b'\r' if buf.get(index + 1).is_some_and(|&next| next != b'\n') => {
                error.get_or_insert(LineError::BareCrOrLf);
            }
            0 => {
                error.get_or_insert(LineError::Nul);
            }
            _ => {}
        }
    }
    match error {
        _ if buf.len() > max => Framed::Bad {
            error: error.unwrap_or(LineError::TooLong),
            consumed: 0,
        },
        _ => Framed::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_crlf_lines() {
        assert_eq!(
            next_line(b"NOOP\r\nQUIT\r\n", 512),
            Framed::Line {
                len: 4,
                consumed: 6
            }
        );
        assert_eq!(next_line(b"NOOP\r", 512), Framed::Incomplete);
        assert_eq!(next_line(b"NO", 512), Framed::Incomplete);
    }

    #[test]
    fn refuses_bare_line_ends_and_nul() {
        assert_eq!(
            next_line(b"NOOP\nQUIT\r\n", 512),
            Framed::Bad {
                error: LineError::BareCrOrLf,
                consumed: 5
            }
        );
        assert_eq!(
            next_line(b"NO\rOP\r\n", 512),
            Framed::Bad {
                error: LineError::BareCrOrLf,
                consumed: 7
            }
        );
        assert_eq!(
            next_line(b"NO\0OP\r\n", 512),
            Framed::Bad {
                error: LineError::Nul,
                consumed: 7
            }
        );
    }

    #[test]
    fn enforces_the_length_limit_including_crlf() {
        let mut exact = vec![b'A'; 510];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(
            next_line(&exact, 512),
            Framed::Line {
                len: 510,
                consumed: 512
            }
        );
        let mut long = vec![b'A'; 511];
        long.extend_from_slice(b"\r\n");
        assert_eq!(
            next_line(&long, 512),
            Framed::Bad {
                error: LineError::TooLong,
                consumed: 513
            }
        );
        assert_eq!(
            next_line(&[b'A'; 600], 512),
            Framed::Bad {
                error: LineError::TooLong,
                consumed: 0
            }
        );
    }
}
