//! A gateway's sending history, read from what the gateway itself logged:
//! a Postfix maillog ([`postfix`]), an Exchange message trace
//! ([`exchange`]) or a generic CSV ([`csv`]). `smtp-shaper learn` turns it
//! into the gateway's saved volume history ([`learn`]); `simulate
//! --history` starts a replay from it.
//!
//! Invariants: parsing is pure (lines, a "now" and a [`Zone`] in; per-minute
//! counts out); every line read is either counted or skipped under a named
//! reason, so `lines == counted + skipped` (a record spanning lines in a
//! CSV counts its lines once it completes); files are read as bytes (a log
//! with 8-bit junk is still read) and gzip is found by its magic bytes,
//! whatever the file's name.

pub mod csv;
pub mod exchange;
pub mod learn;
pub mod postfix;
pub mod time;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub use time::Zone;

/// What one minute of history holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    pub messages: u64,
    pub recipients: u64,
}

/// Per-minute counts and what reading found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Unix minute -> what left in it.
    pub minutes: BTreeMap<i64, Minute>,
    pub lines: u64,
    /// Lines (or rows) that counted.
    pub counted: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    /// Unix seconds of the first and last entry counted.
    pub first: Option<f64>,
    pub last: Option<f64>,
    /// Per receiver (`policy::receivers`: by the recipients' domain, else
    /// by the host the gateway relayed to, its MX), its minutes; empty
    /// when the source names no recipients.
    pub receivers: BTreeMap<String, BTreeMap<i64, Minute>>,
}

impl Counts {
    /// One counted line at `at` (Unix seconds).
    pub fn count(&mut self, at: f64, messages: u64, recipients: u64) {
        self.counted += 1;
        let minute = self.minutes.entry((at / 60.0).floor() as i64).or_default();
        minute.messages += messages;
        minute.recipients += recipients;
        self.first = Some(self.first.map_or(at, |first| first.min(at)));
        self.last = Some(self.last.map_or(at, |last| last.max(at)));
    }

    /// Of a line counted at `at`, what went to `receiver`.
    pub fn count_for(&mut self, receiver: &str, at: f64, messages: u64, recipients: u64) {
        let minutes = match self.receivers.get_mut(receiver) {
            Some(minutes) => minutes,
            None => self.receivers.entry(receiver.to_string()).or_default(),
        };
        let minute = minutes.entry((at / 60.0).floor() as i64).or_default();
        minute.messages += messages;
        minute.recipients += recipients;
    }

    pub fn skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    /// Seconds from the first entry counted to the last.
    pub fn span(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last - first,
            _ => 0.0,
        }
    }
}

/// The kinds of history file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    PostfixLog,
    ExchangeTrace,
    Csv,
}

impl Format {
    /// How logs, the saved state and `/status` name it.
    pub fn label(self) -> &'static str {
        match self {
            Format::PostfixLog => "postfix log",
            Format::ExchangeTrace => "exchange trace",
            Format::Csv => "csv",
        }
    }

    /// The format a file's first line that is not blank says (for
    /// `simulate --history`, which takes any): a syslog line, a header
    /// naming Exchange's columns, or else CSV.
    pub fn sniff(line: &str) -> Format {
        let line = line.trim_start_matches('\u{feff}');
        let first = line.split_whitespace().next().unwrap_or("");
        let syslog = time::rfc3339(first, 0).is_some() || time::month_number(first).is_some();
        let lower = line.to_ascii_lowercase();
        if syslog && (lower.contains("postfix") || !line.contains(',')) {
            Format::PostfixLog
        } else if lower.starts_with("#type")
            || lower.contains("date_time_utc")
            || (lower.contains("received") && lower.contains("status"))
        {
            Format::ExchangeTrace
        } else {
            Format::Csv
        }
    }
}

/// One file to read and how.
#[derive(Debug, Clone)]
pub struct Input {
    pub format: Format,
    pub path: PathBuf,
}

/// What a set of files said: the counts and how to name where they came
/// from.
#[derive(Debug, Clone)]
pub struct History {
    pub counts: Counts,
    /// `postfix log`, or the labels of every format read joined by ` + `.
    pub source: String,
}

/// Opens `path`, decompressing gzip (found by its magic bytes).
fn open(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut file = BufReader::new(File::open(path)?);
    let gzip = file.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(file)))
    } else {
        Box::new(file)
    })
}

/// Calls `line` with each line of `path` (without its line ending; bytes
/// that are not UTF-8 replaced); an error names the file and the line.
fn each_line(
    path: &Path,
    mut line: impl FnMut(usize, &str) -> Result<(), String>,
) -> Result<(), String> {
    let mut reader =
        open(path).map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
    let mut buffer = Vec::new();
    let mut number = 0;
    loop {
        buffer.clear();
        let read = reader.read_until(b'\n', &mut buffer).map_err(|error| {
            format!(
                "{}: cannot read after line {number}: {error}",
                path.display()
            )
        })?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        while buffer
            .last()
            .is_some_and(|byte| matches!(byte, b'\n' | b'\r'))
        {
            buffer.pop();
        }
        let text = String::from_utf8_lossy(&buffer);
        line(number, &text)
            .map_err(|error| format!("{} line {number}: {error}", path.display()))?;
    }
}

/// The first line of `path` that is not blank (for [`Format::sniff`]).
pub fn first_line(path: &Path) -> Result<String, String> {
    let mut reader =
        open(path).map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
    let mut text = String::new();
    let mut bytes = Vec::new();
    while reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut bytes)
        .map_err(|error| format!("{}: cannot read: {error}", path.display()))?
        > 0
    {
        text = String::from_utf8_lossy(&bytes).trim().to_string();
        if !text.is_empty() {
            break;
        }
        bytes.clear();
    }
    Ok(text)
}

/// Reads every input in turn. Dates without a year are placed no later
/// than `now`, in `zone`.
pub fn read(inputs: &[Input], zone: &Zone, now: f64) -> Result<History, String> {
    let mut counts = Counts::default();
    let mut postfix = postfix::Postfix::new(zone, now);
    let mut exchange = exchange::Exchange::default();
    let mut csv = csv::Csv;
    let mut labels: Vec<&str> = Vec::new();
    for input in inputs {
        if !labels.contains(&input.format.label()) {
            labels.push(input.format.label());
        }
        match input.format {
            Format::PostfixLog => each_line(&input.path, |_, line| {
                postfix.feed(line, &mut counts);
                Ok(())
            })?,
            Format::Csv => each_line(&input.path, |_, line| {
                csv.feed(line, &mut counts);
                Ok(())
            })?,
            Format::ExchangeTrace => {
                exchange.next_file();
                each_line(&input.path, |_, line| {
                    exchange
                        .feed(line, &mut counts)
                        .map_err(|missing| missing.0)
                })?;
                if exchange.unfinished() {
                    return Err(format!(
                        "{}: ends inside a quoted field (a damaged or cut export)",
                        input.path.display()
                    ));
                }
            }
        }
    }
    Ok(History {
        counts,
        source: labels.join(" + "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sniffs_the_format_of_a_first_line() {
        assert_eq!(
            Format::sniff("Dec  7 09:00:01 mx postfix/smtp[1]: A: to=<a@b>, status=sent"),
            Format::PostfixLog
        );
        assert_eq!(
            Format::sniff("2026-12-07T09:00:01+00:00 mx postfix/smtp[1]: A: to=<a@b>, status=sent"),
            Format::PostfixLog
        );
        assert_eq!(Format::sniff("#TYPE Deserialized.X"), Format::ExchangeTrace);
        assert_eq!(
            Format::sniff("\u{feff}#TYPE Deserialized.X"),
            Format::ExchangeTrace
        );
        assert_eq!(
            Format::sniff("\"Received\",\"RecipientAddress\",\"Status\""),
            Format::ExchangeTrace
        );
        assert_eq!(
            Format::sniff("date_time_utc,event_id"),
            Format::ExchangeTrace
        );
        assert_eq!(Format::sniff("timestamp,app,recipients"), Format::Csv);
        assert_eq!(Format::sniff("2026-12-07T09:00:01Z,3"), Format::Csv);
        assert_eq!(Format::sniff("1796634001,3"), Format::Csv);
    }

    #[test]
    fn reads_plain_and_gzip_files_alike_and_names_unreadable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let text = "timestamp,recipients\n1796634001,2\n1796720401,1\n";
        let plain = dir.path().join("a.csv");
        std::fs::write(&plain, text).unwrap();
        // Named .log, gzip inside: found by its magic bytes.
        let zipped = dir.path().join("b.log");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(text.as_bytes()).unwrap();
        std::fs::write(&zipped, encoder.finish().unwrap()).unwrap();
        let input = |path: &Path| Input {
            format: Format::Csv,
            path: path.to_path_buf(),
        };
        let zone = Zone::Fixed(0);
        let one = read(&[input(&plain)], &zone, 2e9).unwrap();
        let other = read(&[input(&zipped)], &zone, 2e9).unwrap();
        assert_eq!(one.counts, other.counts);
        assert_eq!(one.counts.counted, 2);
        assert_eq!(one.source, "csv");
        let missing = dir.path().join("missing.log");
        let error = read(&[input(&missing)], &zone, 2e9).unwrap_err();
        assert!(error.contains("missing.log: cannot read"), "{error}");
        let broken = dir.path().join("broken.gz");
        std::fs::write(&broken, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]).unwrap();
        let error = read(&[input(&broken)], &zone, 2e9).unwrap_err();
        assert!(error.contains("broken.gz: cannot read"), "{error}");
        assert_eq!(first_line(&zipped).unwrap(), "timestamp,recipients");
    }
}
