//! Exchange message trace CSV: `Get-MessageTrace | Export-Csv` (one row per
//! message and recipient, `Received`, `RecipientAddress`, `Status`), the
//! historical search's extended report (`date_time_utc`,
//! `recipient_address`, `event_id`, `recipient_count`) and the on-premises
//! tracking log (`Timestamp`, `Recipients`, `EventId`).
//!
//! Columns are found by their header's name, in any order (a `#TYPE` line
//! before the header is skipped). Counted: rows whose status is `Delivered`
//! or whose event is `SEND` or `DELIVER`. A message is a distinct message
//! id (each row one message when there is no id column); recipients are
//! the row's addresses (`;`-separated) or its `recipient_count`. Times are
//! UTC: ISO 8601, or Windows' en-US `12/7/2026 9:00:01 AM` (month first).
//! Each listed address also counts for its receiver (`policy::receivers`,
//! by the address's domain; a trace names no MX); a message counts once
//! per receiver. Pure: lines in, counts out.

use std::collections::{BTreeMap, HashSet};

use super::csv::Records;
use super::{Counts, time};
use crate::policy::receivers::Receivers;

const TIME: [&str; 4] = [
    "received",
    "date_time_utc",
    "timestamp",
    "origin_timestamp_utc",
];
const RECIPIENT: [&str; 3] = ["recipientaddress", "recipient_address", "recipients"];
const COUNT: [&str; 2] = ["recipient_count", "recipientcount"];
const STATUS: [&str; 3] = ["status", "event_id", "eventid"];
const MESSAGE: [&str; 4] = [
    "messageid",
    "message_id",
    "network_message_id",
    "messagetraceid",
];
const COUNTED: [&str; 3] = ["delivered", "send", "deliver"];

const HEADER: &str = "header or comment";
const NOT_DELIVERED: &str = "not delivered or sent";
const UNREADABLE: &str = "unreadable row";

/// Where the header put each column.
struct Columns {
    time: usize,
    status: usize,
    recipient: Option<usize>,
    count: Option<usize>,
    message: Option<usize>,
}

/// An Exchange export being read; each file has its own header.
#[derive(Default)]
pub struct Exchange {
    columns: Option<Columns>,
    records: Records,
    messages: HashSet<String>,
    /// (message id, receiver) pairs counted.
    by_receiver: HashSet<(String, String)>,
    receivers: Receivers,
}

/// What is wrong with an export, for the caller to name with the file.
#[derive(Debug, PartialEq)]
pub struct MissingColumns(pub String);

impl Exchange {
    /// A new file begins: its header comes next.
    pub fn next_file(&mut self) {
        self.columns = None;
        self.records = Records::default();
    }

    /// Reads one line into `counts`; an error when the header lacks a
    /// time or status column.
    pub fn feed(&mut self, line: &str, counts: &mut Counts) -> Result<(), MissingColumns> {
        counts.lines += 1;
        let trimmed = line.trim_start_matches('\u{feff}');
        if self.columns.is_none() && (trimmed.trim().is_empty() || trimmed.starts_with('#')) {
            counts.skip(HEADER);
            return Ok(());
        }
        let Some(fields) = self.records.push(trimmed) else {
            return Ok(());
        };
        let Some(columns) = &self.columns else {
            self.columns = Some(header(&fields)?);
            counts.skip(HEADER);
            return Ok(());
        };
        let get = |index: usize| fields.get(index).map(String::as_str).unwrap_or("");
        if !COUNTED
            .iter()
            .any(|status| get(columns.status).eq_ignore_ascii_case(status))
        {
            counts.skip(if fields.len() <= columns.status {
                UNREADABLE
            } else {
                NOT_DELIVERED
            });
            return Ok(());
        }
        let when = get(columns.time);
        let Some(at) = time::rfc3339(when, 0).or_else(|| time::us_date(when)) else {
            counts.skip(UNREADABLE);
            return Ok(());
        };
        let listed = columns.recipient.map_or(0, |index| {
            get(index)
                .split(';')
                .filter(|a| !a.trim().is_empty())
                .count() as u64
        });
        let stated = columns
            .count
            .and_then(|index| get(index).parse::<u64>().ok());
        let recipients = stated.unwrap_or(listed).max(1);
        let first = match columns.message {
            Some(index) => self.messages.insert(get(index).to_string()),
            None => true,
        };
        counts.count(at, u64::from(first), recipients);
        if let Some(index) = columns.recipient {
            let mut per_receiver: BTreeMap<&str, u64> = BTreeMap::new();
            for address in get(index).split(';').map(str::trim) {
                let Some((_, domain)) = address.rsplit_once('@') else {
                    continue;
                };
                *per_receiver
                    .entry(self.receivers.of(domain, []))
                    .or_default() += 1;
            }
            for (receiver, recipients) in per_receiver {
                let first = match columns.message {
                    Some(index) => self
                        .by_receiver
                        .insert((get(index).to_string(), receiver.to_string())),
                    None => true,
                };
                counts.count_for(receiver, at, u64::from(first), recipients);
            }
        }
        Ok(())
    }

    /// Whether the input ended inside a quoted field.
    pub fn unfinished(&self) -> bool {
        self.records.open()
    }
}

fn header(fields: &[String]) -> Result<Columns, MissingColumns> {
    let find = |names: &[&str]| {
        fields
            .iter()
            .position(|field| names.iter().any(|name| field.eq_ignore_ascii_case(name)))
    };
    match (find(&TIME), find(&STATUS)) {
        (Some(time), Some(status)) => Ok(Columns {
            time,
            status,
            recipient: find(&RECIPIENT),
            count: find(&COUNT),
            message: find(&MESSAGE),
        }),
        _ => Err(MissingColumns(format!(
            "the header names no time column ({}) or no status column ({}); found: {}",
            TIME.join(", "),
            STATUS.join(", "),
            fields.join(",")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str]) -> Result<Counts, MissingColumns> {
        let mut exchange = Exchange::default();
        let mut counts = Counts::default();
        for line in lines {
            exchange.feed(line, &mut counts)?;
        }
        Ok(counts)
    }

    #[test]
    fn each_address_counts_for_its_receiver_by_domain() {
        let counts = read(&[
            r#""MessageId","Received","RecipientAddress","Status""#,
            r#""<1@a>","2026-12-07T09:00:01Z","x@gmail.com","Delivered""#,
            r#""<1@a>","2026-12-07T09:00:01Z","y@Outlook.com","Delivered""#,
            r#""<1@a>","2026-12-07T09:00:02Z","z@gmail.com","Delivered""#,
            r#""<2@a>","2026-12-07T09:00:03Z","w@b.example","Delivered""#,
        ])
        .unwrap();
        let per = |receiver: &str| -> (u64, u64) {
            counts.receivers[receiver]
                .values()
                .fold((0, 0), |(m, r), minute| {
                    (m + minute.messages, r + minute.recipients)
                })
        };
        assert_eq!(per("google"), (1, 2), "one message, two recipients");
        assert_eq!(per("microsoft"), (1, 1));
        assert_eq!(per("other"), (1, 1));
    }

    #[test]
    fn reads_get_message_trace_exports() {
        let counts = read(&[
            "#TYPE Deserialized.Microsoft.Exchange.Management.FfoReporting.MessageTrace",
            r#""Organization","MessageId","Received","SenderAddress","RecipientAddress","Subject","Status","Size""#,
            r#""c.onmicrosoft.com","<1@a>","12/7/2026 9:00:01 AM","app@a","x@b.com","Hi, there","Delivered","100""#,
            r#""c.onmicrosoft.com","<1@a>","12/7/2026 9:00:01 AM","app@a","y@b.com","Hi, there","Delivered","100""#,
            r#""c.onmicrosoft.com","<2@a>","12/7/2026 9:01:01 AM","app@a","z@b.com","Two","Failed","100""#,
            r#""c.onmicrosoft.com","<3@a>","2026-12-07T09:01:02Z","app@a","z@b.com","Multi"#,
            r#"line subject","Delivered","100""#,
            r#""c.onmicrosoft.com","<4@a>","yesterday","app@a","z@b.com","x","Delivered","100""#,
        ])
        .unwrap();
        assert_eq!(counts.counted, 3);
        let minutes: Vec<_> = counts
            .minutes
            .values()
            .map(|m| (m.messages, m.recipients))
            .collect();
        assert_eq!(minutes, vec![(1, 2), (1, 1)]);
        assert_eq!(counts.skipped.get(NOT_DELIVERED), Some(&1));
        assert_eq!(counts.skipped.get(UNREADABLE), Some(&1));
        assert_eq!(counts.skipped.get(HEADER), Some(&2));
        assert_eq!(counts.lines, 8);
    }

    #[test]
    fn reads_historical_search_reports() {
        let counts = read(&[
            "\u{feff}date_time_utc,client_ip,event_id,message_id,recipient_address,recipient_count,sender_address",
            "2026-12-07T09:00:01.1234567Z,10.0.0.1,RECEIVE,<1@a>,x@b.com;y@b.com,2,app@a",
            "2026-12-07T09:00:02.1234567Z,10.0.0.1,SEND,<1@a>,x@b.com;y@b.com,2,app@a",
            "2026-12-07T09:00:03.1234567Z,10.0.0.1,DELIVER,<2@a>,u@corp.com,1,app@a",
            "2026-12-07T09:00:04.1234567Z,10.0.0.1,FAIL,<3@a>,u@corp.com,1,app@a",
        ])
        .unwrap();
        assert_eq!(counts.counted, 2);
        let minutes: Vec<_> = counts
            .minutes
            .values()
            .map(|m| (m.messages, m.recipients))
            .collect();
        assert_eq!(minutes, vec![(2, 3)]);
    }

    /// A generated export (rows per recipient, in any status, both date
    /// forms, quoted subjects with commas and quotes) against counts kept
    /// as it was written.
    #[test]
    fn a_generated_export_counts_what_was_delivered() {
        let mut rng = fastrand::Rng::with_seed(22);
        let mut lines = vec![
            "#TYPE Deserialized.Microsoft.Exchange.Management.FfoReporting.MessageTrace"
                .to_string(),
            r#""Received","SenderAddress","RecipientAddress","Subject","Status","MessageId""#
                .to_string(),
        ];
        let mut expected: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
        let start = 1_796_601_600i64; // 2026-12-07 00:00 UTC
        for message in 0..500 {
            let at = start + rng.i64(0..86_400);
            let (hour, minute, second) = (at % 86_400 / 3_600, at % 3_600 / 60, at % 60);
            let received = if rng.bool() {
                format!("2026-12-07T{hour:02}:{minute:02}:{second:02}.1234567Z")
            } else {
                let (twelve, meridiem) = match hour {
                    0 => (12, "AM"),
                    1..=11 => (hour, "AM"),
                    12 => (12, "PM"),
                    _ => (hour - 12, "PM"),
                };
                format!("12/7/2026 {twelve}:{minute:02}:{second:02} {meridiem}")
            };
            let mut delivered_any = false;
            for recipient in 0..rng.u32(1..4) {
                let status = ["Delivered", "Failed", "Pending", "Delivered"][rng.usize(0..4)];
                lines.push(format!(
                    r#""{received}","app@a.example","r{recipient}@b.example","Invoice {message}, ""final""","{status}","<{message}@a.example>""#
                ));
                if status == "Delivered" {
                    let entry = expected.entry(at / 60).or_default();
                    entry.1 += 1;
                    if !delivered_any {
                        entry.0 += 1;
                        delivered_any = true;
                    }
                }
            }
        }
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let counts = read(&lines).unwrap();
        let got: std::collections::BTreeMap<i64, (u64, u64)> = counts
            .minutes
            .iter()
            .map(|(minute, count)| (*minute, (count.messages, count.recipients)))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(
            counts.lines,
            counts.counted + counts.skipped.values().sum::<u64>()
        );
    }

    #[test]
    fn a_header_without_the_needed_columns_is_an_error() {
        let error = read(&["a,b,c", "1,2,3"]).err().unwrap();
        assert!(error.0.contains("no time column"), "{}", error.0);
    }
}
