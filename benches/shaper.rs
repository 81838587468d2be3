//! Shaping benchmark: `cargo bench --bench shaper`. Prints figures and ratios
//! against references measured in the same run; it never fails on a timing.
//!
//! 1. Accuracy: 20,000 messages arrive at once at an idle gateway (ceiling
//!    50/s, burst 5); the replay (the relay's own scheduler and model in
//!    virtual time) counts the most sent in any 1 s, 10 s and 60 s window
//!    against ceiling x window + burst. Excess must be 0.
//! 2. Utilisation while backlogged: sends per second of backlog against the
//!    ceiling (target >= 98%).
//! 3. Scheduler cost per message with 100,000 queued: push and release all
//!    through `Scheduler` (fair queue + model + governor bucket), against a
//!    plain `VecDeque` push/pop of the same items (the reference).
//! 4. Memory with 100,000 queued envelopes in the scheduler (RSS growth).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use smtp_shaper::config::Config;
use smtp_shaper::shaper::{GatewayModel, Release, Scheduler};
use smtp_shaper::simulate::{Arrival, Options, replay};
use smtp_shaper::smtp::MailParams;
use smtp_shaper::spool::{Envelope, Location, StoredMessage};

const QUEUED: usize = 100_000;

fn config(shaping: &str) -> Config {
    Config::parse(&format!(
        "[[gateways]]\nname = \"bench\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\n{shaping}\n[[apps]]\nname = \"a\"\nsenders = [\"a.test\"]\n[[apps]]\nname = \"b\"\nsenders = [\"b.test\"]\n"
    ))
    .expect("bench config")
}

fn message(index: usize) -> StoredMessage {
    StoredMessage {
        id: format!("{index:016X}"),
        gateway: "bench".into(),
        envelope: Envelope {
            sender: "notifications@app.example.com".into(),
            recipients: vec![format!("user{index}@example.org")],
            params: MailParams::default(),
            client_ip: "127.0.0.1".parse().unwrap(),
            received_at: 1_764_000_000,
        },
        location: Location {
            segment: 1,
            offset: index as u64 * 4096,
            body_offset: index as u64 * 4096 + 200,
            body_len: 4096,
        },
        pending: vec![0],
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn accuracy_and_utilisation() {
    let ceiling = 50.0;
    let burst = 5;
    let config = config(&format!(
        "initial_rate = \"{ceiling}/s\"\nmin_rate = \"{ceiling}/s\"\nmax_rate = \"{ceiling}/s\"\nheadroom = 1.0\nburst = {burst}\nmax_queue_delay = \"1d\"\nmax_queued = 1000000"
    ));
    let messages = 20_000;
    let trace: Vec<Arrival> = (0..messages)
        .map(|index| Arrival {
            at: 1_000.0,
            app: if index % 2 == 0 { "a" } else { "b" }.into(),
            recipients: 1,
        })
        .collect();
    let started = Instant::now();
    let report = replay(&config, 0, &trace, &Options { retry_after: 600.0 });
    let replay_time = started.elapsed();
    println!("1. accuracy: {messages} messages at once, ceiling {ceiling}/s, burst {burst}");
    for peak in &report.peaks {
        println!(
            "   most sent in any {:>5.0}s window: {:>6} allowed {:>8.0}  excess {:.0}",
            peak.window,
            peak.most_sent,
            peak.allowed,
            peak.excess.max(0.0)
        );
    }
    let backlog = *report.delays.last().unwrap_or(&0.0);
    let utilisation = (report.sent as f64 - f64::from(burst)) / (ceiling * backlog);
    println!(
        "2. utilisation while backlogged: {} sent in {backlog:.1}s = {:.1}% of the ceiling (target >= 98%)",
        report.sent,
        utilisation * 100.0
    );
    println!(
        "   (replayed {:.0} s of virtual time in {:.0} ms)",
        backlog,
        replay_time.as_secs_f64() * 1e3
    );
}

fn scheduler_cost_and_memory() {
    let config = config(
        "initial_rate = \"1000000/s\"\nmin_rate = \"1000000/s\"\nmax_rate = \"1000000/s\"\nburst = 100000",
    );
    let shaping = &config.gateways[0].shaping;
    let items: Vec<StoredMessage> = (0..QUEUED).map(message).collect();

    // Reference: a plain FIFO of the same items.
    let mut fifo: VecDeque<StoredMessage> = VecDeque::new();
    let started = Instant::now();
    for item in items.iter().cloned() {
        fifo.push_back(item);
    }
    while let Some(item) = fifo.pop_front() {
        black_box(item);
    }
    let reference = started.elapsed().as_secs_f64() / QUEUED as f64;

    let before = rss_kib();
    let mut scheduler: Scheduler<StoredMessage> =
        Scheduler::new(GatewayModel::new(shaping, 0.0), vec![1, 1, 1]);
    let started = Instant::now();
    let mut now = 1.0;
    for (index, item) in items.iter().cloned().enumerate() {
        scheduler.push(now, index % 3, 1, item);
    }
    let queued_rss = rss_kib().saturating_sub(before);
    let mut released = 0;
    while released < QUEUED {
        match scheduler.next(now) {
            Release::Send { item, .. } => {
                black_box(item);
                released += 1;
            }
            Release::Wait(seconds) => now += seconds,
            Release::Save | Release::Idle => unreachable!("no caps, never empty here"),
        }
    }
    let cost = started.elapsed().as_secs_f64() / QUEUED as f64;
    println!(
        "3. scheduler cost per message with {QUEUED} queued (push + release): {:.2} us; plain VecDeque {:.3} us; ratio {:.1}x (target <= 5 us)",
        cost * 1e6,
        reference * 1e6,
        cost / reference
    );
    println!(
        "4. memory with {QUEUED} envelopes queued in the scheduler: {:.1} MiB RSS growth ({:.0} bytes per message)",
        queued_rss as f64 / 1024.0,
        queued_rss as f64 * 1024.0 / QUEUED as f64
    );
}

fn main() {
    println!("smtp-shaper shaping benchmark (figures, never a pass/fail)");
    accuracy_and_utilisation();
    scheduler_cost_and_memory();
}
