//! `smtp-shaper learn` (issue 22): a week of a gateway's own Postfix log,
//! generated here with its counts kept independently (both timestamp
//! forms, a content filter hop, deferred and bounced recipients,
//! multi-recipient messages, lmtp deliveries, garbage, a rotated gzip
//! file), becomes the history a running service shapes from after SIGHUP;
//! and a crash during `learn` leaves the previous state readable.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use smtp_shaper::shaper::SavedState;

use super::support::{Client, Sink, eventually_async, fetch, free_address, json, spawn};

const MINUTE: i64 = 60;
const DAY_MINUTES: i64 = 1_440;

/// A generated maillog and what it holds, counted as it was written.
struct Week {
    /// Lines of the rotated (older) file and of the current one.
    rotated: Vec<String>,
    current: Vec<String>,
    /// Messages per minute (at each message's first sent line).
    messages: BTreeMap<i64, u64>,
    /// Sent, non-loopback `postfix/smtp` recipient lines.
    sent_lines: u64,
}

impl Week {
    /// The busiest `window` minutes of messages (any window of whole minutes).
    fn busiest(&self, window: i64) -> u64 {
        let (first, last) = (
            *self.messages.keys().next().unwrap(),
            *self.messages.keys().last().unwrap(),
        );
        (first..=last + window)
            .map(|end| {
                self.messages
                    .range(end - window + 1..=end)
                    .map(|(_, n)| n)
                    .sum()
            })
            .max()
            .unwrap()
    }
}

/// Traditional syslog time (UTC: the learn process runs with TZ=UTC).
fn traditional(seconds: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (_, month, day) = civil(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{} {day:>2} {:02}:{:02}:{:02}",
        MONTHS[month as usize - 1],
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

fn rfc3339(seconds: i64, micros: u32) -> String {
    let (year, month, day) = civil(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

/// (year, month, day) of days since 1970-01-01 (written again here, so the
/// crate's own date code is not what checks it).
fn civil(days: i64) -> (i64, u32, u32) {
    let mut days = days;
    let mut year = 1970;
    loop {
        let length = if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 {
            366
        } else {
            365
        };
        if days < length {
            break;
        }
        days -= length;
        year += 1;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let lengths = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while days >= lengths[month] {
        days -= lengths[month];
        month += 1;
    }
    (year, month as u32 + 1, days as u32 + 1)
}

/// A week of a gateway's maillog from minute `start` for `minutes`: a
/// message in about one minute in ten, and `peak` messages over 40 minutes
/// of day 3 at 10:00. The first half in traditional syslog form (rotated
/// file), the rest in RFC 3339.
fn generate(start: i64, minutes: i64, peak: u64, seed: u64) -> Week {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut week = Week {
        rotated: Vec::new(),
        current: Vec::new(),
        messages: BTreeMap::new(),
        sent_lines: 0,
    };
    let peak_start = start + 3 * DAY_MINUTES + 10 * 60;
    let mut next_id = 0x4A000u64;
    let mut lines: Vec<(i64, String)> = Vec::new();
    for minute in start..start + minutes {
        let mut count = u64::from(rng.u32(0..10) == 0);
        if (peak_start..peak_start + 40).contains(&minute) {
            count += peak / 40;
        }
        for _ in 0..count {
            let at = minute * MINUTE + i64::from(rng.u32(0..50));
            next_id += 1;
            let id = format!("{next_id:X}");
            lines.push((
                at,
                format!("mx postfix/smtpd[100]: {id}: client=app[10.0.0.5]"),
            ));
            lines.push((at, format!("mx postfix/qmgr[200]: {id}: from=<app@example.com>, size=900, nrcpt=3 (queue active)")));
            let mut sending_id = id.clone();
            if rng.u32(0..5) == 0 {
                // Through amavis on loopback: re-injected under a new id.
                next_id += 1;
                let filtered = format!("{next_id:X}");
                lines.push((at, format!("mx postfix/smtp[300]: {id}: to=<a@example.net>, relay=127.0.0.1[127.0.0.1]:10024, delay=0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok, queued as {filtered})")));
                sending_id = filtered;
            }
            let mut first_sent: Option<i64> = None;
            for recipient in 0..rng.u32(1..4) {
                let to = format!("r{recipient}@example.net");
                match rng.u32(0..20) {
                    0 => {
                        // Deferred, then sent five minutes later.
                        lines.push((at, format!("mx postfix-out/smtp[301]: {sending_id}: to=<{to}>, relay=mx.example.net[192.0.2.7]:25, delay=1, dsn=4.7.0, status=deferred (451 4.7.0 later)")));
                        lines.push((at + 300, format!("mx postfix-out/smtp[301]: {sending_id}: to=<{to}>, relay=mx.example.net[192.0.2.7]:25, delay=301, dsn=2.0.0, status=sent (250 ok)")));
                        first_sent = Some(first_sent.map_or(at + 300, |t| t.min(at + 300)));
                        week.sent_lines += 1;
                    }
                    1 => lines.push((at, format!("mx postfix/smtp[302]: {sending_id}: to=<{to}>, relay=mx.example.net[192.0.2.7]:25, dsn=5.1.1, status=bounced (550 5.1.1 unknown)"))),
                    2 => lines.push((at, format!("mx postfix/lmtp[303]: {sending_id}: to=<{to}>, relay=mail[private/dovecot-lmtp], dsn=2.0.0, status=sent (250 ok)"))),
                    _ => {
                        lines.push((at, format!("mx postfix/smtp[304]: {sending_id}: to=<{to}>, relay=mx.example.net[192.0.2.7]:25, delay=0.4, dsn=2.0.0, status=sent (250 ok)")));
                        first_sent = Some(first_sent.map_or(at, |t| t.min(at)));
                        week.sent_lines += 1;
                    }
                }
            }
            if let Some(first) = first_sent {
                *week.messages.entry(first.div_euclid(MINUTE)).or_default() += 1;
            }
        }
        if rng.u32(0..200) == 0 {
            lines.push((
                minute * MINUTE,
                "\u{1}garbage that is no log line".to_string(),
            ));
        }
    }
    lines.sort_by_key(|(at, _)| *at);
    let middle = (start + minutes / 2) * MINUTE;
    for (at, line) in lines {
        if line.starts_with('\u{1}') {
            week.current.push(line);
        } else if at < middle {
            week.rotated.push(format!("{} {line}", traditional(at)));
        } else {
            week.current
                .push(format!("{} {line}", rfc3339(at, rng.u32(0..1_000_000))));
        }
    }
    week
}

/// Writes the week as `maillog.1.gz` (gzip) and `maillog`.
fn write_logs(dir: &Path, week: &Week) -> (PathBuf, PathBuf) {
    let rotated = dir.join("maillog.1.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for line in &week.rotated {
        writeln!(encoder, "{line}").unwrap();
    }
    std::fs::write(&rotated, encoder.finish().unwrap()).unwrap();
    let current = dir.join("maillog");
    std::fs::write(&current, week.current.join("\n") + "\n").unwrap();
    (rotated, current)
}

fn config(dir: &Path, listen: SocketAddr, http: SocketAddr, gateway: SocketAddr) -> PathBuf {
    let path = dir.join("smtp-shaper.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "{listen}"
hostname = "shaper.test"
shutdown_grace = "5s"
[spool]
dir = "{}"
[http]
listen = "{http}"
[[gateways]]
name = "primary"
address = "{gateway}"
retry_initial = "100ms"
retry_max = "400ms"
[gateways.shaping]
# The minute never holds this test back; the hour and day floors would.
initial_rate = "100/s"
min_rate = ["100/s", "60/h", "300/day"]
max_rate = "1000/s"
burst = 1000
"#,
            dir.join("spool").display()
        ),
    )
    .unwrap();
    path
}

fn learn(config: &Path, args: &[&Path], replace: bool) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"));
    command
        .args(["learn", "--config"])
        .arg(config)
        .args(["--gateway", "primary"])
        .env("TZ", "UTC");
    for path in args {
        command.arg("--postfix-log").arg(path);
    }
    if replace {
        command.arg("--replace");
    }
    command.output().unwrap()
}

fn now_minute() -> i64 {
    smtp_shaper::spool::unix_seconds() as i64 / MINUTE
}

/// The gateway's /status.
async fn status(http: SocketAddr) -> serde_json::Value {
    json(&fetch(http, "GET", "/status", None).await.body)["gateways"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_week_sets_the_allowances_and_a_burst_of_its_size_leaves_at_once() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, http) = (free_address(), free_address());
    let config = config(dir.path(), listen, http, sink.address);
    let mut process = spawn(&config, listen).await;
    let before = status(http).await;
    assert_eq!(before["history"]["source"], "none", "{before}");
    assert_eq!(before["volume_budgets"]["1h"]["allowance"], 60);

    // Five days of log, the last entry two days ago: every busy window in
    // it is one the rule weighs (ended before the current one began,
    // within the week).
    let start = now_minute() - 7 * DAY_MINUTES + 60;
    let week = generate(start, 5 * DAY_MINUTES - 60, 200, 22);
    let (rotated, current) = write_logs(dir.path(), &week);
    let (hour, day) = (week.busiest(60), week.busiest(DAY_MINUTES));
    assert!(
        hour * 2 > 60 && day * 2 > 300,
        "above the floors: {hour}/h {day}/day"
    );

    // The running service has counted (its crash reserve) after the log's
    // end: the log is older than that history, so learn refuses...
    let refused = learn(&config, &[&rotated, &current], false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--replace"),
        "{stderr}"
    );
    // ... unless told to replace it.
    let learned = learn(&config, &[&rotated, &current], true);
    let report = String::from_utf8_lossy(&learned.stdout);
    assert!(
        learned.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&learned.stderr)
    );
    let lines = week.rotated.len() + week.current.len();
    assert!(
        report.contains(&format!("lines read     {lines}\n")),
        "{report}"
    );
    assert!(
        report.contains(&format!("lines counted  {}\n", week.sent_lines)),
        "{report}"
    );
    assert!(
        report.contains(&format!("busiest hour   {hour} messages")),
        "{report}"
    );
    assert!(
        report.contains(&format!("busiest day    {day} messages")),
        "{report}"
    );
    for reason in [
        "relay on loopback (content filter)",
        "not sent: deferred",
        "not sent: bounced",
        "lmtp/local/virtual/pipe delivery",
        "no syslog timestamp",
    ] {
        assert!(report.contains(reason), "{reason}: {report}");
    }

    // SIGHUP: the running service shapes from the learned week.
    let hangup = Command::new("kill")
        .args(["-HUP", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    eventually_async("the learned history in force", || async {
        status(http).await["history"]["source"] == "postfix log"
    })
    .await;
    let after = status(http).await;
    assert_eq!(
        after["volume_budgets"]["1h"]["allowance"],
        2 * hour,
        "{after}"
    );
    assert_eq!(
        after["volume_budgets"]["24h"]["allowance"],
        2 * day,
        "{after}"
    );
    let first = *week.messages.keys().next().unwrap();
    assert_eq!(
        after["history"]["since"],
        (first * MINUTE) as u64,
        "{after}"
    );

    // A burst the size of the busiest hour leaves at once, not 60 an hour.
    let mut client = Client::ready(listen).await;
    for index in 0..hour {
        client
            .accepted(
                "app@example.com",
                &["someone@example.net"],
                format!("Subject: {index}\r\n\r\nhello\r\n").as_bytes(),
            )
            .await;
    }
    let expected = hour as usize;
    eventually_async("the burst delivered", || async { sink.count() == expected }).await;
    process.kill();
}

/// A state as a running service saves it: cap counts and a volume history.
fn previous_state(now: f64) -> String {
    let minute = (now / 60.0).floor() as i64;
    format!(
        "version = 1\nsaved_at = {now}\nbaseline_per_second = 0.5\npenalty = 0.5\npaused_until = 0\n\
         \n[[caps]]\nwindow_seconds = 86400.0\nslots = [[{}, 1234]]\n\
         \n[volume]\nslot = {minute}\nall = \"7 +2 5\"\ntransactional = \"\"\nseeds = []\n",
        minute / 1_440
    )
}

#[test]
fn a_crash_during_learn_leaves_the_previous_state_readable() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), free_address(), free_address(), free_address());
    let now = smtp_shaper::spool::unix_seconds() as f64;
    let state_path = dir.path().join("spool/shaping/primary.toml");
    std::fs::create_dir_all(state_path.parent().unwrap()).unwrap();
    let previous = previous_state(now);
    let old = SavedState::parse(&previous).expect("the previous state reads");
    // A big input: the same week many times over (a log re-read is the
    // same history; it takes a while to read).
    let week = generate(now_minute() - 7 * DAY_MINUTES + 60, 2 * DAY_MINUTES, 200, 7);
    let big = dir.path().join("big.log");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
    for _ in 0..100 {
        for line in week.rotated.iter().chain(&week.current) {
            writeln!(file, "{line}").unwrap();
        }
    }
    drop(file);

    // How long a whole run takes, and what it writes.
    std::fs::write(&state_path, &previous).unwrap();
    let started = std::time::Instant::now();
    let whole = learn(&config, &[&big], true);
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let took = started.elapsed();
    let new = SavedState::parse(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert_eq!(new.caps, old.caps, "learn keeps the cap counts");

    // Killed at points spread over a run, the last ones near its end
    // (where it writes): the state is always the old or the new one, whole.
    let mut kept_old = 0;
    for step in 1..=12u32 {
        std::fs::write(&state_path, &previous).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
            .args(["learn", "--config"])
            .arg(&config)
            .args(["--gateway", "primary", "--replace", "--postfix-log"])
            .arg(&big)
            .env("TZ", "UTC")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(took.mul_f64(0.5 + f64::from(step) * 0.045));
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&state_path).unwrap();
        let state = SavedState::parse(&text).expect("a whole state after a kill");
        assert_eq!(state.caps, old.caps, "the caps' counts are never lost");
        if state == old {
            kept_old += 1;
        } else {
            assert_eq!(
                state.history.as_ref().map(|h| &h.source),
                new.history.as_ref().map(|h| &h.source)
            );
        }
    }
    assert!(kept_old > 0, "some kills came before the write");
    // A temporary file a kill left behind does not stand in the way.
    let again = learn(&config, &[&big], true);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
