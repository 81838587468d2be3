//! Generic CSV history: one message per row, `timestamp,recipients`, or the
//! trace `simulate` reads, `timestamp,app,recipients[,domain]`. Timestamps
//! are Unix seconds or RFC 3339. A header row and `#` comments are skipped.
//!
//! Also the CSV record splitting the Exchange export needs: fields quoted
//! with `"` (a doubled `""` inside is one quote), a record whose quotes are
//! still open going on at the next line ([`Records`]).
//! Pure: lines in, counts out.

use super::Counts;
use super::time;

pub const UNREADABLE: &str = "unreadable row";
const HEADER: &str = "header or comment";

/// Generic CSV rows into counts (see the module notes).
#[derive(Default)]
pub struct Csv;

impl Csv {
    pub fn feed(&mut self, line: &str, counts: &mut Counts) {
        counts.lines += 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("timestamp") {
            counts.skip(HEADER);
            return;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (at, recipients) = match fields[..] {
            [at, recipients] | [at, _, recipients] | [at, _, recipients, _] => (at, recipients),
            _ => {
                counts.skip(UNREADABLE);
                return;
            }
        };
        let at = at
            .parse::<f64>()
            .ok()
            .filter(|at| at.is_finite())
            .or_else(|| time::rfc3339(at, 0));
        let recipients = recipients.parse::<u64>().ok().filter(|count| *count > 0);
        match (at, recipients) {
            (Some(at), Some(recipients)) => counts.count(at, 1, recipients),
            _ => counts.skip(UNREADABLE),
        }
    }
}

/// Splits one CSV record into its fields; `None` when a quote is still open
/// at the end (the record goes on at the next line).
pub fn fields(record: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field).trim().to_string()),
            _ => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field.trim().to_string());
    Some(fields)
}

/// Joins the lines of records that span several (a quoted field holding a
/// line break).
#[derive(Default)]
pub struct Records {
    pending: String,
}

impl Records {
    /// The record `line` completes, if it completes one.
    pub fn push(&mut self, line: &str) -> Option<Vec<String>> {
        if !self.pending.is_empty() {
            self.pending.push('\n');
        }
        self.pending.push_str(line);
        let fields = fields(&self.pending)?;
        self.pending.clear();
        Some(fields)
    }

    /// Whether a record is still open (the input ended inside quotes).
    pub fn open(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_shapes_and_both_time_forms() {
        let mut counts = Counts::default();
        let mut csv = Csv;
        for line in [
            "timestamp,recipients",
            "1796634001,3",
            "2026-12-07T09:00:30Z,1",
            "1796634061.5,billing,2",
            "1796634062,billing,2,example.com",
            "# comment",
            "x,1",
            "1796634062,0",
            "1,2,3,4,5",
        ] {
            csv.feed(line, &mut counts);
        }
        assert_eq!(counts.lines, 9);
        assert_eq!(counts.counted, 4);
        let minutes: Vec<_> = counts
            .minutes
            .values()
            .map(|m| (m.messages, m.recipients))
            .collect();
        assert_eq!(minutes, vec![(2, 4), (2, 4)]);
        assert_eq!(counts.skipped.get(UNREADABLE), Some(&3));
        assert_eq!(counts.skipped.get(HEADER), Some(&2));
    }

    #[test]
    fn splits_quoted_fields() {
        assert_eq!(
            fields(r#""a","b, c","say ""hi""",d,"#).unwrap(),
            vec!["a", "b, c", "say \"hi\"", "d", ""]
        );
        assert_eq!(fields(r#""open"#), None);
        let mut records = Records::default();
        assert_eq!(records.push(r#""a","line one"#), None);
        assert!(records.open());
        assert_eq!(
            records.push(r#"line two",b"#).unwrap(),
            vec!["a", "line one\nline two", "b"]
        );
        assert!(!records.open());
    }
}
