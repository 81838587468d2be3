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
//!    through `Scheduler` (fair queue + model + governor bucket + the hour
//!    and day volume windows, a bulk lane among them), against the same
//!    without volume budgets and a plain `VecDeque` push/pop of the same
//!    items (the reference).
//! 4. Memory with 100,000 queued envelopes in the scheduler (RSS growth).
//! 5. The simulator replaying three weeks of 30,000 messages with hour and
//!    day budgets, against one replay of the same trace without them.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use smtp_shaper::config::Config;
use smtp_shaper::shaper::AppClass;
use smtp_shaper::shaper::{GatewayModel, Lane, Release, Scheduler};
use smtp_shaper::simulate::{Arrival, Options, replay};
use smtp_shaper::smtp::MailParams;
use smtp_shaper::spool::{Envelope, Location, StoredMessage};

const QUEUED: usize = 100_000;

fn config(shaping: &str) -> Config {
    Config::parse(&format!(
        "[[gateways]]\nname = \"bench\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\n{shaping}\n[[apps]]\nname = \"a\"\nsenders = [\"a.test\"]\n[[apps]]\nname = \"b\"\nsenders = [\"b.test\"]\nclass = \"bulk\"\n"
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
            dsn: false,
        },
        location: Location {
            segment: 1,
            offset: index as u64 * 4096,
            body_offset: index as u64 * 4096 + 200,
            body_len: 4096,
        },
        pending: vec![0],
        notification: false,
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
            domain: None,
        })
        .collect();
    let started = Instant::now();
    let report = replay(&config, 0, &trace, &Options::default());
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

/// Seconds per message to push `items` into a scheduler shaped by
/// `shaping` (three lanes, the last bulk; each item to one of five
/// receivers: the four built-in ones and one not budgeted) and release them
/// all, and the RSS growth while they were queued.
fn push_and_release(shaping: &str, items: &[StoredMessage]) -> (f64, u64) {
    let config = config(shaping);
    let lanes = vec![
        Lane {
            weight: 1,
            class: AppClass::Transactional,
            max_queue_delay: None,
            expire_after: None,
        },
        Lane {
            weight: 1,
            class: AppClass::Transactional,
            max_queue_delay: None,
            expire_after: None,
        },
        Lane {
            weight: 1,
            class: AppClass::Bulk,
            max_queue_delay: None,
            expire_after: None,
        },
    ];
    let before = rss_kib();
    let mut scheduler: Scheduler<StoredMessage> =
        Scheduler::new(GatewayModel::new(&config.gateways[0].shaping, 0.0), lanes);
    let started = Instant::now();
    let mut now = 1.0;
    for (index, item) in items.iter().cloned().enumerate() {
        let receiver = (index % 5 < 4).then_some(index % 5);
        scheduler.push(now, index % 3, receiver, 1, item);
    }
    let queued_rss = rss_kib().saturating_sub(before);
    let mut released = 0;
    while released < items.len() {
        match scheduler.next(now) {
            Release::Send { item, .. } => {
                black_box(item);
                released += 1;
            }
            Release::Wait(seconds) => now += seconds,
            Release::Save => {
                let (_, reserve) = scheduler.snapshot(now, true);
                scheduler.model_mut().saved(reserve);
            }
            Release::Idle => unreachable!("never empty here"),
        }
    }
    (
        started.elapsed().as_secs_f64() / items.len() as f64,
        queued_rss,
    )
}

fn scheduler_cost_and_memory() {
    let minute = "initial_rate = \"1000000/s\"\nmax_rate = \"1000000/s\"\nburst = 100000";
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

    // Budgets far above the load: every send is checked against both
    // windows (and saved ahead, 1/50 of the allowance at a time). Measured
    // first, so its RSS growth is not muddled by what the other run freed.
    let (cost, queued_rss) = push_and_release(
        &format!(
            "{minute}\nmin_rate = [\"1000000/s\", \"100000000/h\", \"1000000000/day\"]\n\
             receiver_min_rate = [\"100000000/h\", \"1000000000/day\"]"
        ),
        &items,
    );
    let (minute_only, minute_rss) =
        push_and_release(&format!("{minute}\nmin_rate = \"1000000/s\""), &items);
    println!(
        "3. scheduler cost per message with {QUEUED} queued over 3 apps x 5 receivers (push + release), hour and day budgets on, per receiver too: {:.2} us (target <= 2 us); minute only {:.2} us; plain VecDeque {:.3} us; ratio to VecDeque {:.1}x",
        cost * 1e6,
        minute_only * 1e6,
        reference * 1e6,
        cost / reference
    );
    println!(
        "4. memory with {QUEUED} envelopes queued in the scheduler: {:.1} MiB RSS growth ({:.0} bytes per message); measured second, minute only: {:.1} MiB",
        queued_rss as f64 / 1024.0,
        queued_rss as f64 * 1024.0 / QUEUED as f64,
        minute_rss as f64 / 1024.0
    );
}

/// 30,000 messages over three weeks: business hours on weekdays, a bulk
/// run on some mornings (deterministic); each to one of five domains (the
/// four built-in receivers' and one no receiver claims) with `domains`.
fn three_weeks(domains: bool) -> Vec<Arrival> {
    const DOMAINS: [&str; 5] = [
        "gmail.com",
        "outlook.com",
        "yahoo.com",
        "icloud.com",
        "example.org",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut trace: Vec<Arrival> = (0..30_000)
        .map(|_| {
            let day = rng.u32(0..21);
            let day = if day % 7 >= 5 { day - 2 } else { day };
            let bulk = rng.u32(0..4) == 0;
            Arrival {
                at: f64::from(day) * 86_400.0 + 8.0 * 3_600.0 + rng.f64() * 10.0 * 3_600.0,
                app: if bulk { "b" } else { "a" }.into(),
                recipients: 1,
                domain: domains.then(|| DOMAINS[rng.usize(..DOMAINS.len())].to_string()),
            }
        })
        .collect();
    trace.sort_by(|a, b| a.at.total_cmp(&b.at));
    trace
}

fn replay_speed() {
    let plain = three_weeks(false);
    let with_domains = three_weeks(true);
    let time = |shaping: &str, trace: &[Arrival]| {
        let config = config(shaping);
        let started = Instant::now();
        let report = replay(&config, 0, trace, &Options::default());
        (started.elapsed().as_secs_f64(), report.sent)
    };
    let base = "initial_rate = [\"5/min\", \"150/h\", \"1500/day\"]\nmax_queue_delay = \"2d\"";
    let budgets = format!("{base}\nmin_rate = [\"10/min\", \"60/h\", \"300/day\"]");
    let (budgeted, sent) = time(&budgets, &plain);
    let (receivers, receivers_sent) = time(&budgets, &with_domains);
    let (minute, _) = time("initial_rate = \"5/min\"\nmax_queue_delay = \"2d\"", &plain);
    println!(
        "5. simulate: three weeks, {} messages, hour and day budgets: {:.0} ms ({sent} sent; target < 1 s); with domains, each of 4 receivers budgeted too: {:.0} ms ({receivers_sent} sent; target < 1 s); minute shaping only: {:.0} ms; ratio {:.1}x",
        plain.len(),
        budgeted * 1e3,
        receivers * 1e3,
        minute * 1e3,
        budgeted / minute
    );
}

fn main() {
    println!("smtp-shaper shaping benchmark (figures, never a pass/fail)");
    accuracy_and_utilisation();
    scheduler_cost_and_memory();
    replay_speed();
}
