//! The DATA phase: receiving a message body, and dot-stuffing it on the way out.
//!
//! Invariants (DESIGN.md invariant 4):
//! - Only `CRLF . CRLF` ends DATA (the CRLF of the DATA command counts as the
//!   first one). A bare CR or LF never starts a line, so `\n.\n`, `\r.\r`,
//!   `\n.\r\n` and friends are body bytes of a message that will be refused,
//!   never an end of DATA: one transaction can never become two.
//! - A body with a bare CR, bare LF or NUL, a line over 1000 octets (CRLF
//!   included) or more than the size limit is refused as a whole after the
//!   real terminator; nothing of it is stored.
//! - The stored body is unstuffed and made of CRLF lines only, so
//!   [`dot_stuff`] can re-emit it without ambiguity.

/// Longest text line, CRLF included (RFC 5321 4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;

/// Why a received body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    BareCrOrLf,
    Nul,
    LineTooLong,
    TooBig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line: LF now ends DATA.
    DotCr,
    /// Inside a line.
    Text,
    /// A CR inside a line: LF now ends the line.
    Cr,
}

/// Incremental DATA receiver: feed it bytes as they arrive.
#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    body: Vec<u8>,
    line_len: usize,
    max_size: usize,
    error: Option<DataError>,
}

impl DataReceiver {
    /// A receiver that refuses bodies over `max_size` octets.
    pub fn new(max_size: usize) -> Self {
        DataReceiver {
            state: State::LineStart,
            body: Vec::new(),
            line_len: 0,
            max_size,
            error: None,
        }
    }

    /// Consumes bytes from `input`. Returns `Some(consumed)` when the terminator
    /// was found (bytes after it belong to the next command), or `None` when all
    /// of `input` was body.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut index = 0;
        while index < input.len() {
            // Fast path: copy a run of ordinary bytes inside a line at once.
            let in_text = self.state == State::Text
                || (self.state == State::LineStart && input[index] != b'.');
            if in_text {
                let rest = &input[index..];
                let run = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n' || b == 0)
                    .unwrap_or(rest.len());
                if run > 0 {
                    self.state = State::Text;
                    self.push_run(&rest[..run]);
                    index += run;
                    continue;
                }
            }
            if self.step(input[index]) {
                return Some(index + 1);
            }
            index += 1;
        }
        None
    }

    /// The outcome once [`feed`](Self::feed) reported the terminator.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.body),
        }
    }

    /// Bytes kept so far (for size accounting by the caller).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// True when nothing has been kept yet.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    fn fail(&mut self, error: DataError) {
        if self.error.is_none() {
            self.error = Some(error);
            self.body = Vec::new();
        }
    }

    /// Keeps ordinary line content, enforcing the line and size limits.
    fn push_run(&mut self, run: &[u8]) {
        self.line_len += run.len();
        if self.line_len > MAX_TEXT_LINE - 2 {
            self.fail(DataError::LineTooLong);
        }
        if self.error.is_none() {
            if self.body.len() + run.len() > self.max_size {
                self.fail(DataError::TooBig);
            } else {
                self.body.extend_from_slice(run);
            }
        }
    }

    fn end_line(&mut self) {
        self.line_len = 0;
        if self.error.is_none() {
            if self.body.len() + 2 > self.max_size {
                self.fail(DataError::TooBig);
            } else {
                self.body.extend_from_slice(b"\r\n");
            }
        }
        self.state = State::LineStart;
    }

    /// Inside a line: CR may begin a line end; LF and NUL are errors.
    fn text_byte(&mut self, byte: u8) {
        self.state = State::Text;
        match byte {
            b'\r' => self.state = State::Cr,
            b'\n' => self.fail(DataError::BareCrOrLf),
            0 => self.fail(DataError::Nul),
            _ => self.push_run(&[byte]),
        }
    }

    /// Returns true when `byte` completed the terminator.
    fn step(&mut self, byte: u8) -> bool {
        match self.state {
            State::LineStart if byte == b'.' => self.state = State::Dot,
            State::LineStart | State::Text => self.text_byte(byte),
            State::Dot => match byte {
                b'\r' => self.state = State::DotCr,
                // The leading dot was stuffing: drop it, keep the rest.
                _ => self.text_byte(byte),
            },
            State::DotCr => {
                if byte == b'\n' {
                    return true;
                }
                self.fail(DataError::BareCrOrLf);
                self.text_byte(byte);
            }
            State::Cr => {
                if byte == b'\n' {
                    self.end_line();
                } else {
                    self.fail(DataError::BareCrOrLf);
                    self.text_byte(byte);
                }
            }
        }
        false
    }
}

/// Appends `body` to `out` dot-stuffed and terminated with `.` CRLF.
///
/// `body` comes from [`DataReceiver`]: CRLF lines only. Should it ever not end
/// in CRLF, one is added so the terminator stays on a line of its own.
///
/// ```
/// use smtp_shaper::smtp::{DataReceiver, dot_stuff};
///
/// let body = b"Subject: x\r\n\r\n.\r\n..two\r\n";
/// let mut wire = Vec::new();
/// dot_stuff(body, &mut wire);
/// assert_eq!(wire, b"Subject: x\r\n\r\n..\r\n...two\r\n.\r\n");
///
/// // Receiving undoes it exactly, and ends at the terminator.
/// let mut receiver = DataReceiver::new(1 << 20);
/// assert_eq!(receiver.feed(&wire), Some(wire.len()));
/// assert_eq!(receiver.finish().unwrap(), body);
/// ```
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    type Received = (Result<Vec<u8>, DataError>, Vec<u8>);

    /// Feeds `input` in one piece and returns (outcome, bytes left after the terminator).
    fn receive(input: &[u8]) -> Option<Received> {
        let mut receiver = DataReceiver::new(1 << 20);
        let consumed = receiver.feed(input)?;
        Some((receiver.finish(), input[consumed..].to_vec()))
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (body, rest) = receive(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n").unwrap();
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(rest, b"QUIT\r\n");
        let (body, _) = receive(b".\r\n").unwrap();
        assert_eq!(body.unwrap(), b"");
    }

    #[test]
    fn unstuffs_leading_dots() {
        let (body, _) = receive(b"..hidden\r\n.x\r\n...\r\n.\r\n").unwrap();
        assert_eq!(body.unwrap(), b".hidden\r\nx\r\n..\r\n");
    }

    /// Every smuggling variant: none of them ends DATA, and the message that
    /// eventually ends at the real terminator is refused.
    #[test]
    fn smuggling_sequences_never_end_data() {
        let smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nforged\r\n";
        for fake_end in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n\0.\r\n",
            b"\r\n.\0\r\n",
        ] {
            let mut input = b"Subject: hi\r\n\r\nbody".to_vec();
            input.extend_from_slice(fake_end);
            input.extend_from_slice(smuggled);
            let mut receiver = DataReceiver::new(1 << 20);
            assert_eq!(receiver.feed(&input), None, "{fake_end:?} ended DATA early");
            let tail = b".\r\n";
            assert_eq!(receiver.feed(tail), Some(tail.len()), "{fake_end:?}");
            assert!(receiver.finish().is_err(), "{fake_end:?} was accepted");
        }
    }

    #[test]
    fn refuses_long_lines_and_big_bodies() {
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(receive(&ok).unwrap().0.is_ok());
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(receive(&long).unwrap().0, Err(DataError::LineTooLong));

        let mut receiver = DataReceiver::new(10);
        assert_eq!(receiver.feed(b"0123456789\r\nmore\r\n.\r\n"), Some(21));
        assert_eq!(receiver.finish(), Err(DataError::TooBig));
        let mut receiver = DataReceiver::new(12);
        receiver.feed(b"0123456789\r\n.\r\n");
        assert!(receiver.finish().is_ok());
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let input = b"a\r\n..b\r\n\r\n.\r\nNEXT";
        let mut receiver = DataReceiver::new(100);
        let mut ended_at = None;
        for (index, byte) in input.iter().enumerate() {
            if receiver.feed(std::slice::from_ref(byte)).is_some() {
                ended_at = Some(index + 1);
                break;
            }
        }
        assert_eq!(ended_at, Some(input.len() - 4));
        assert_eq!(receiver.finish().unwrap(), b"a\r\n.b\r\n\r\n");
    }

    /// Round trip: any body of CRLF lines survives stuffing, chunked receiving
    /// and unstuffing byte-exact. Deterministic seeds, many shapes.
    #[test]
    fn stuffing_round_trips_random_bodies() {
        let pieces: [&[u8]; 8] = [
            b".",
            b"..",
            b"\r\n",
            b"a",
            b" ",
            b"\xc3\xa9",
            b"x.y",
            b"\r\n.\r\n",
        ];
        for seed in 0..2_000u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut body = Vec::new();
            for _ in 0..rng.usize(0..40) {
                body.extend_from_slice(pieces[rng.usize(0..pieces.len())]);
            }
            if !body.is_empty() && !body.ends_with(b"\r\n") {
                body.extend_from_slice(b"\r\n");
            }
            let mut wire = Vec::new();
            dot_stuff(&body, &mut wire);
            let mut receiver = DataReceiver::new(1 << 20);
            let mut offset = 0;
            let mut end = None;
            while offset < wire.len() {
                let chunk = rng.usize(1..=8).min(wire.len() - offset);
                if let Some(used) = receiver.feed(&wire[offset..offset + chunk]) {
                    end = Some(offset + used);
                    break;
                }
                offset += chunk;
            }
            assert_eq!(
                end,
                Some(wire.len()),
                "seed {seed}: terminator not at the end"
            );
            assert_eq!(receiver.finish().unwrap(), body, "seed {seed}");
        }
    }
}
