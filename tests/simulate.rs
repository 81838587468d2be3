//! The shipped sample traces replayed through the shipped sample configs:
//! what the README's "Shaping model" section claims about them holds. Also
//! `smtp-shaper simulate` as a user runs it.

use std::path::Path;
use std::process::Command;

use smtp_shaper::config::Config;
use smtp_shaper::simulate::{Options, Report, parse_trace, replay};

fn replay_sample(name: &str) -> Report {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    let config = Config::load(&dir.join(format!("{name}.toml"))).expect("sample config is valid");
    let text = std::fs::read_to_string(dir.join(format!("{name}.csv"))).unwrap();
    let trace = parse_trace(&text).expect("sample trace parses");
    let report = replay(&config, 0, &trace, &Options { retry_after: 600.0 });
    assert_eq!(report.sent + report.given_up, report.messages, "{name}");
    for peak in &report.peaks {
        assert!(
            peak.excess <= 0.0,
            "{name}: more than ceiling x window + burst: {peak:?}"
        );
    }
    report
}

fn waited(delays: &[f64]) -> usize {
    delays.iter().filter(|delay| **delay >= 1.0).count()
}

#[test]
fn an_idle_gateway_spreads_a_burst_and_keeps_the_other_app_flowing() {
    let report = replay_sample("idle-burst");
    let alerts = &report.apps[0];
    let newsletter = &report.apps[1];
    assert_eq!(
        (alerts.name.as_str(), newsletter.name.as_str()),
        ("alerts", "newsletter")
    );
    assert!(newsletter.deferred_messages > 1_000, "{newsletter:?}");
    assert_eq!(alerts.deferred_messages, 0);
    assert!(
        *alerts.delays.last().unwrap() < 60.0,
        "alerts wait one turn at most"
    );
    // The queue never holds more than max_queue_delay (1h) of sending.
    assert!(*report.delays.last().unwrap() < 3_600.0 + 300.0);
}

#[test]
fn ordinary_business_days_pass_untouched_and_the_10x_day_is_shaped() {
    let report = replay_sample("business-hours");
    for (index, day) in report.days.iter().enumerate() {
        let number = index + 1;
        if number == 10 {
            assert!(waited(&day.delays) > 5_000, "day 10 is shaped");
            assert!(day.deferred > 0, "day 10 defers what would wait too long");
        } else {
            assert_eq!(waited(&day.delays), 0, "day {number} is ordinary");
            assert_eq!(day.deferred, 0, "day {number}");
        }
    }
}

#[test]
fn fast_growth_follows_the_warmup_curve() {
    let report = replay_sample("steady-growth");
    let first = report.samples.first().unwrap().ceiling;
    let last = report.samples.last().unwrap().ceiling;
    // Eight days, the last five shaped: the ceiling doubles about daily.
    assert!(last > first * 16.0, "ceiling from {first} to {last}");
    assert!(
        last < first * 2f64.powf(8.5),
        "no faster than 2x/day: {first} to {last}"
    );
    assert!(report.deferrals.iter().sum::<u64>() > 0);
}

#[test]
fn the_command_prints_the_report_and_draws_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("idle-burst.svg");
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(["simulate", "--config"])
        .arg(format!("{root}/traces/idle-burst.toml"))
        .arg("--trace")
        .arg(format!("{root}/traces/idle-burst.csv"))
        .arg("--out")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "5290 messages offered, 5290 sent",
        "most sent in any 1s",
        "excess 0",
        "newsletter",
        "day  arrived",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("<polyline"),
        "{}",
        &chart[..200]
    );

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "timestamp,app,recipients\n1,a,1\nsoon,b,1\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(["simulate", "--config"])
        .arg(format!("{root}/traces/idle-burst.toml"))
        .arg("--trace")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 3: timestamp \"soon\" is not a number of seconds"),
        "{stderr}"
    );
}
