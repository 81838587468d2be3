//! `smtp-shaper demo`: the whole service on loopback with no set-up, to
//! watch a burst get smoothed.
//!
//! It starts the real service (spool in a temporary folder, the HTTP
//! endpoint on 127.0.0.1:9325 when free) in front of an in-process gateway
//! (`gateway`), and two apps that send through it with smtp-shaper's own
//! SMTP client: `alerts` keeps sending a steady trickle, `newsletter`
//! trickles, then sends a burst at once, then trickles again. Deferred mail
//! (451 4.7.1) is offered again later, as a real app's MTA would.
//!
//! Phases: idle -> trickle -> burst -> steady until the queue has drained
//! and no deferred message is left to offer again (or until interrupted:
//! Ctrl-C ends it early with the summary so far). A terminal gets a live
//! table several times a second, its bars on one scale for the whole run; a
//! pipe gets the metrics address first, then a line every few seconds. The
//! end prints a summary: per app the messages (each counted once), the
//! re-offers of deferred ones, how many were deferred, accepted and
//! delivered, the delays, and the most the gateway received in any second
//! against the ceiling.
//!
//! `time_scale` shrinks every duration and speeds up every rate by the same
//! factor (the test runs the demo at 0.2).

mod gateway;

use crate::poison::LockRecovered;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Service;
use crate::config::{Config, GatewayTls};
use crate::outbound::client::Connection;
use crate::spool::Envelope;
use crate::tls::client::Upstream;
use gateway::DemoGateway;

/// What the demo does, at `time_scale` 1.
const IDLE: f64 = 5.0;
const TRICKLE: f64 = 20.0;
const BURST_MESSAGES: u64 = 400;
/// Longest the steady phase waits for the queue to drain.
const STEADY_MAX: f64 = 120.0;
const ALERTS_PER_SECOND: f64 = 2.0;
const NEWSLETTER_PER_SECOND: f64 = 1.0;
/// How long an app waits before offering a deferred message again.
const RETRY_AFTER: f64 = 10.0;

/// The demo's settings.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub time_scale: f64,
    /// Draw the live table (a terminal) or print progress lines (a pipe).
    pub live: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            time_scale: 1.0,
            live: std::io::stdout().is_terminal(),
        }
    }
}

/// Per-app counts, shared by the app tasks and the view. Messages, not
/// offers: a message deferred three times is one message, one deferred
/// message and three re-offers.
#[derive(Default)]
struct AppCounts {
    /// Messages the app had to send, each counted at its first offer.
    messages: AtomicU64,
    /// Offers of a message made again after a deferral (an MTA's retries).
    reoffers: AtomicU64,
    /// Messages deferred (451) at least once.
    deferred: AtomicU64,
    /// Messages not accepted yet that the app will offer again.
    waiting: AtomicU64,
    accepted: AtomicU64,
}

impl AppCounts {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

const APPS: [&str; 2] = ["newsletter", "alerts"];

fn config(
    scale: f64,
    spool: &std::path::Path,
    gateway: std::net::SocketAddr,
    http: &str,
) -> String {
    let rate = |per_second: f64| format!("{}/s", per_second / scale);
    let duration = |seconds: f64| format!("{}s", ((seconds * scale).ceil() as u64).max(1));
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
hostname = "smtp-shaper.demo"
shutdown_grace = "2s"
[spool]
dir = "{spool}"
[http]
listen = "{http}"
[[gateways]]
name = "demo-gateway"
address = "{gateway}"
tls = "none"
max_connections = 4
[gateways.shaping]
initial_rate = "{initial}"
min_rate = "{min}"
max_rate = "{max}"
headroom = 2.0
burst = 5
max_queue_delay = "{max_delay}"
[[apps]]
name = "newsletter"
senders = ["newsletter.example.com"]
[[apps]]
name = "alerts"
senders = ["alerts.example.com"]
priority = 2
"#,
        spool = spool.display(),
        initial = rate(5.0),
        min = rate(1.0),
        max = rate(50.0),
        max_delay = duration(15.0),
    )
}

/// Runs the demo to its end, or until `interrupt` completes (Ctrl-C), and
/// returns the summary text (of what happened so far, when interrupted).
pub async fn run(
    options: DemoOptions,
    interrupt: impl std::future::Future<Output = ()>,
) -> std::io::Result<String> {
    let scale = options.time_scale;
    let start = Instant::now();
    let gateway = DemoGateway::start(start).await?;
    let (service, spool) = start_service(scale, gateway.address).await?;
    let proxy = service.smtp_address().to_string();
    let metrics_url = service.http_address().map_or_else(
        || "off".into(),
        |address| format!("http://{address}/metrics"),
    );
    let counts: Arc<[AppCounts; 2]> = Arc::default();
    let phase = Arc::new(Mutex::new("idle"));
    let burst_done = Arc::new(AtomicU64::new(0));

    let clock = Clock { start, scale };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut apps = trickles(&proxy, clock, &counts, &stop);
    let burst = tokio::spawn(burst(
        proxy,
        clock,
        counts.clone(),
        phase.clone(),
        burst_done.clone(),
    ));

    let watch = Watch {
        options,
        clock,
        service: &service,
        gateway: &gateway,
        counts: &counts,
        phase: &phase,
        burst_done: &burst_done,
        metrics_url: &metrics_url,
    };
    let stopped_at = watch.run(interrupt).await;
    stop.store(true, Ordering::Relaxed);
    burst.abort();
    while apps.join_next().await.is_some() {}
    if stopped_at.is_none() {
        all_arrived(&counts, &gateway).await;
    }
    let ceiling = service
        .shaping("demo-gateway")
        .map_or(0.0, |view| view.model.ceiling);
    service.shutdown().await;
    let _ = std::fs::remove_dir_all(&spool);
    let arrivals = gateway.received.lock_recovered().arrivals.clone();
    Ok(summary(
        &counts,
        &arrivals,
        &Ending {
            ceiling,
            scale,
            metrics_url: &metrics_url,
            stopped_at,
        },
    ))
}

/// Both apps' trickles, from the end of the idle phase until `stop`.
fn trickles(
    proxy: &str,
    clock: Clock,
    counts: &Arc<[AppCounts; 2]>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinSet<()> {
    let mut apps = tokio::task::JoinSet::new();
    // alerts: a steady trickle from the end of the idle phase to the end.
    apps.spawn(trickle(
        proxy.to_string(),
        1,
        ALERTS_PER_SECOND,
        clock,
        counts.clone(),
        stop.clone(),
    ));
    apps.spawn(trickle(
        proxy.to_string(),
        0,
        NEWSLETTER_PER_SECOND,
        clock,
        counts.clone(),
        stop.clone(),
    ));
    apps
}

/// Waits until the gateway has received every message the proxy accepted
/// (for a few seconds at most): an offer in flight when the run ended was
/// accepted after it, and the summary is to count its arrival.
async fn all_arrived(counts: &[AppCounts; 2], gateway: &DemoGateway) {
    for _ in 0..200 {
        let accepted: u64 = counts.iter().map(|c| AppCounts::get(&c.accepted)).sum();
        if gateway.received.lock_recovered().arrivals.len() as u64 >= accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The service in front of the demo's `gateway`, with its spool folder
/// (new, in the temporary folder).
async fn start_service(
    scale: f64,
    gateway: std::net::SocketAddr,
) -> std::io::Result<(Service, std::path::PathBuf)> {
    let spool_dir = || {
        std::env::temp_dir().join(format!(
            "smtp-shaper-demo-{}-{}",
            std::process::id(),
            crate::spool::new_queue_id()
        ))
    };
    let start_on = |spool: &std::path::Path, http: &str| {
        Config::parse(&config(scale, spool, gateway, http))
            .map_err(|error| std::io::Error::other(format!("demo config: {error}")))
    };
    // The documented metrics port when it is free, else any. Binding is the
    // only test of "free" that another process cannot race.
    let spool = spool_dir();
    match Service::start(start_on(&spool, "127.0.0.1:9325")?).await {
        Ok(service) => Ok((service, spool)),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            let _ = std::fs::remove_dir_all(&spool);
            let spool = spool_dir();
            let service = Service::start(start_on(&spool, "127.0.0.1:0")?).await?;
            Ok((service, spool))
        }
        Err(error) => Err(error),
    }
}

/// newsletter's burst: the trickle phase after the idle one, then
/// [`BURST_MESSAGES`] at once from four connections, each offering its
/// deferred ones again until all are accepted.
async fn burst(
    proxy: String,
    clock: Clock,
    counts: Arc<[AppCounts; 2]>,
    phase: Arc<Mutex<&'static str>>,
    burst_done: Arc<AtomicU64>,
) {
    clock.sleep_until(IDLE).await;
    *phase.lock_recovered() = "trickle: both apps send a few messages a second";
    clock.sleep_until(IDLE + TRICKLE).await;
    *phase.lock_recovered() = "burst: newsletter sends 400 messages at once";
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (proxy, counts, burst_done) = (proxy.clone(), counts.clone(), burst_done.clone());
        senders.spawn(async move {
            let mut app = App::new(proxy, 0, counts);
            let mut deferred = 0u64;
            for _ in 0..BURST_MESSAGES / 4 {
                if !app.offer(clock, false).await {
                    deferred += 1;
                }
            }
            // Deferred mail comes back later, as an MTA retries.
            while deferred > 0 {
                clock.sleep(RETRY_AFTER).await;
                let mut still = 0;
                for _ in 0..deferred {
                    if !app.offer(clock, true).await {
                        still += 1;
                    }
                }
                deferred = still;
            }
            burst_done.fetch_add(1, Ordering::Relaxed);
        });
    }
    while senders.join_next().await.is_some() {}
}

/// The view of a run while it goes: what it reads, and where.
struct Watch<'a> {
    options: DemoOptions,
    clock: Clock,
    service: &'a Service,
    gateway: &'a DemoGateway,
    counts: &'a [AppCounts; 2],
    phase: &'a Mutex<&'static str>,
    burst_done: &'a AtomicU64,
    metrics_url: &'a str,
}

impl Watch<'_> {
    /// Shows the run until it has drained (or the steady phase is over),
    /// or until `interrupt`: then returns the demo time it came.
    async fn run(&self, interrupt: impl std::future::Future<Output = ()>) -> Option<f64> {
        let mut interrupt = std::pin::pin!(interrupt);
        let Watch {
            options,
            clock,
            service,
            gateway,
            counts,
            phase,
            burst_done,
            metrics_url,
        } = *self;
        let scale = options.time_scale;
        let mut out = std::io::stdout();
        if !options.live {
            // A pipe shows no heading; the address is worth having while it runs.
            let _ = writeln!(
                out,
                "smtp-shaper demo: metrics at {metrics_url} while it runs (Ctrl-C stops it with the summary so far)"
            );
        }
        // One scale for every frame of the run: twice the starting ceiling, so
        // the ceiling bar sits mid-way and a burst visibly overflows it.
        let bar_full = service
            .shaping("demo-gateway")
            .map_or(1.0, |view| view.model.ceiling * scale * 2.0)
            .max(1.0);
        let mut last_line = -100.0;
        let mut history = History::default();
        let (burst_at, steady_at) = (IDLE + TRICKLE, IDLE + TRICKLE + 1.0);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = &mut interrupt => return Some(clock.now()),
            }
            let now = clock.now();
            let done = burst_done.load(Ordering::Relaxed) == 4;
            let view = service.shaping("demo-gateway").expect("the demo gateway");
            if done && now > steady_at {
                *phase.lock_recovered() = "steady: the burst is queued or retried; draining";
            }
            let waiting: u64 = counts.iter().map(|c| AppCounts::get(&c.waiting)).sum();
            let finished = done && view.queued == 0 && waiting == 0;
            // Offers, re-offers included: the load the proxy sees.
            let offered: u64 = counts
                .iter()
                .map(|c| AppCounts::get(&c.messages) + AppCounts::get(&c.reoffers))
                .sum();
            let delivered = gateway.received.lock_recovered().arrivals.len() as u64;
            let recent = history.recent(now, offered, delivered);
            if options.live {
                let text = self.table(now, bar_full, &view, &recent);
                let _ = write!(out, "\x1b[H\x1b[2J{text}");
                let _ = out.flush();
            } else if now - last_line >= 5.0 || finished {
                last_line = now;
                let _ = writeln!(out, "{}", self.line(now, &view, &recent));
            }
            if finished || now > burst_at + STEADY_MAX {
                return None;
            }
        }
    }

    /// The live table a terminal gets several times a second.
    fn table(
        &self,
        now: f64,
        bar_full: f64,
        view: &crate::shaper::GatewayView,
        recent: &Recent,
    ) -> String {
        table(
            &Frame {
                phase: &self.phase.lock_recovered(),
                now,
                scale: self.options.time_scale,
                metrics_url: self.metrics_url,
                bar_full,
            },
            view,
            recent,
            self.counts,
            &self.gateway.received.lock_recovered().arrivals,
        )
    }

    /// The progress line a pipe gets every few seconds.
    fn line(&self, now: f64, view: &crate::shaper::GatewayView, recent: &Recent) -> String {
        let mut line = format!(
            "t={now:>5.1}s  {:<7}  offered {:>6.1}/s  ceiling {:>5.1}/s  delivered {:>5.1}/s  queued {:>4}",
            self.phase.lock_recovered().split(':').next().unwrap_or(""),
            recent.offered,
            view.model.ceiling * self.options.time_scale,
            recent.delivered,
            view.queued
        );
        let arrivals = &self.gateway.received.lock_recovered().arrivals;
        for (index, app) in APPS.iter().enumerate() {
            let c = &self.counts[index];
            let _ = write!(
                line,
                "  | {app}: {} messages, {} deferred, {} re-offers, {} queued, {} delivered",
                AppCounts::get(&c.messages),
                AppCounts::get(&c.deferred),
                AppCounts::get(&c.reoffers),
                view.lanes.get(index).copied().unwrap_or(0),
                arrivals.iter().filter(|a| a.app == *app).count()
            );
        }
        line
    }
}

/// (demo time, offered so far, delivered so far) over the last
/// [`RATE_WINDOW`], for the recent rates.
#[derive(Default)]
struct History(std::collections::VecDeque<(f64, u64, u64)>);

impl History {
    /// The rates since the oldest entry still in the window, with the
    /// totals at `now` taken in.
    fn recent(&mut self, now: f64, offered: u64, delivered: u64) -> Recent {
        let history = &mut self.0;
        history.push_back((now, offered, delivered));
        while history
            .front()
            .is_some_and(|(at, ..)| now - at > RATE_WINDOW)
        {
            history.pop_front();
        }
        let (since, offered_then, delivered_then) = history[0];
        let span = (now - since).max(1e-3);
        Recent {
            offered: (offered - offered_then) as f64 / span,
            delivered: (delivered - delivered_then) as f64 / span,
        }
    }
}

/// The window of the live view's rates: short, so a burst shows at once
/// (the model's own demand and send rates average over a minute).
const RATE_WINDOW: f64 = 3.0;

/// Offered and delivered messages per second over the last [`RATE_WINDOW`].
struct Recent {
    offered: f64,
    delivered: f64,
}

/// Demo time: seconds at scale 1 since the start.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    scale: f64,
}

impl Clock {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() / self.scale
    }

    async fn sleep(&self, seconds: f64) {
        tokio::time::sleep(Duration::from_secs_f64(seconds * self.scale)).await;
    }

    async fn sleep_until(&self, at: f64) {
        let wait = at - self.now();
        if wait > 0.0 {
            self.sleep(wait).await;
        }
    }
}

/// One app's connection to the proxy.
struct App {
    proxy: String,
    index: usize,
    counts: Arc<[AppCounts; 2]>,
    connection: Option<Connection>,
    upstream: Upstream,
}

impl App {
    fn new(proxy: String, index: usize, counts: Arc<[AppCounts; 2]>) -> App {
        // Plain SMTP to the proxy on loopback, as an app's library speaks.
        let upstream = Upstream {
            mode: GatewayTls::None,
            config: crate::tls::client::unverified(),
            server_name: "localhost".try_into().expect("a valid name"),
        };
        App {
            proxy,
            index,
            counts,
            connection: None,
            upstream,
        }
    }

    /// Offers one message (`again`: one offered before and not accepted);
    /// false when the proxy deferred it (or the offer failed), so the app
    /// is to offer it again.
    async fn offer(&mut self, clock: Clock, again: bool) -> bool {
        let accepted = self.try_offer(clock, again).await;
        let counts = &self.counts[self.index];
        match (accepted, again) {
            (true, true) => {
                counts.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            (false, false) => {
                counts.waiting.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        accepted
    }

    async fn try_offer(&mut self, clock: Clock, again: bool) -> bool {
        let app = APPS[self.index];
        let counts = &self.counts[self.index];
        if again {
            counts.reoffers.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.messages.fetch_add(1, Ordering::Relaxed);
        }
        if self.connection.is_none() {
            let open = Connection::open(
                &self.proxy,
                "demo-app",
                &self.upstream,
                None,
                Duration::from_secs(5),
                Duration::from_secs(30),
            )
            .await;
            match open {
                Ok(open) => self.connection = Some(open),
                Err(_) => return false,
            }
        }
        let envelope = Envelope {
            sender: format!("{app}@{app}.example.com"),
            recipients: vec!["someone@example.org".into()],
            params: Default::default(),
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            received_at: 0,
            dsn: false,
        };
        let body = format!(
            "From: {app}@{app}.example.com\r\nTo: someone@example.org\r\nSubject: demo\r\nX-Demo-Sent: {:.3}\r\n\r\nhello from {app}\r\n",
            clock.start.elapsed().as_secs_f64()
        );
        let connection = self.connection.as_mut().expect("opened above");
        match connection.send(&envelope, &[0], body.as_bytes()).await {
            Ok(transaction) => {
                if !transaction.reusable {
                    self.connection = None;
                }
                if transaction.replies[0].is_positive() {
                    counts.accepted.fetch_add(1, Ordering::Relaxed);
                    true
                } else {
                    if !again {
                        counts.deferred.fetch_add(1, Ordering::Relaxed);
                    }
                    false
                }
            }
            Err(_) => {
                self.connection = None;
                false
            }
        }
    }
}

/// An app sending `per_second` from the end of the idle phase until `stop`;
/// a deferred message is offered again [`RETRY_AFTER`] later.
async fn trickle(
    proxy: String,
    index: usize,
    per_second: f64,
    clock: Clock,
    counts: Arc<[AppCounts; 2]>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut app = App::new(proxy, index, counts);
    // When each deferred message is due again, oldest first.
    let mut retries = std::collections::VecDeque::new();
    clock.sleep_until(IDLE).await;
    let mut next = clock.now();
    while !stop.load(Ordering::Relaxed) {
        while retries.front().is_some_and(|due| *due <= clock.now()) {
            retries.pop_front();
            if !app.offer(clock, true).await {
                retries.push_back(clock.now() + RETRY_AFTER);
            }
        }
        if !app.offer(clock, false).await {
            retries.push_back(clock.now() + RETRY_AFTER);
        }
        next += 1.0 / per_second;
        clock.sleep_until(next).await;
    }
}

/// `value` as a bar of `width` on a scale up to `full`; beyond it, a full
/// bar ending in `>`.
fn bar(value: f64, full: f64, width: usize) -> String {
    if value > full {
        return format!("{}>", "#".repeat(width - 1));
    }
    let filled = if full > 0.0 {
        ((value / full) * width as f64)
            .round()
            .clamp(0.0, width as f64) as usize
    } else {
        0
    };
    format!("{}{}", "#".repeat(filled), ".".repeat(width - filled))
}

/// What the live view's heading shows.
struct Frame<'a> {
    phase: &'a str,
    now: f64,
    scale: f64,
    metrics_url: &'a str,
    /// The rate a full bar stands for, fixed for the run.
    bar_full: f64,
}

/// The live view; rates in demo units (real rates x `scale`).
fn table(
    frame: &Frame<'_>,
    view: &crate::shaper::GatewayView,
    recent: &Recent,
    counts: &[AppCounts; 2],
    arrivals: &[gateway::Arrival],
) -> String {
    let Frame {
        phase,
        now,
        scale,
        metrics_url,
        bar_full,
    } = *frame;
    let model = &view.model;
    let (baseline, ceiling) = (model.baseline * scale, model.ceiling * scale);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "smtp-shaper demo   t = {now:.0}s   (Ctrl-C stops it with the summary so far)"
    );
    let _ = writeln!(text, "phase: {phase}");
    let _ = writeln!(text, "metrics: {metrics_url}\n");
    let _ = writeln!(
        text,
        "gateway demo-gateway   baseline {:.1}/s   burst ratio {:.1}   queued {}   oldest {:.0}s",
        baseline,
        model.burst_ratio,
        view.queued,
        view.oldest_age / scale
    );
    for (name, value) in [
        ("offered", recent.offered),
        ("ceiling", ceiling),
        ("sent", recent.delivered),
    ] {
        let _ = writeln!(
            text,
            "  {name:<8} {:>6.1}/s  [{}]",
            value,
            bar(value, bar_full, 40)
        );
    }
    let _ = writeln!(
        text,
        "  (offered, re-offers included, and sent: the last {RATE_WINDOW:.0}s; ceiling: the shaper's limit now;\n   a full bar is {bar_full:.0}/s)"
    );
    let _ = writeln!(
        text,
        "\n  {:<11} {:>8} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "app", "messages", "deferred", "re-offers", "accepted", "queued", "delivered"
    );
    for (index, app) in APPS.iter().enumerate() {
        let delivered = arrivals.iter().filter(|a| a.app == *app).count();
        let c = &counts[index];
        let _ = writeln!(
            text,
            "  {:<11} {:>8} {:>9} {:>9} {:>9} {:>7} {:>10}",
            app,
            AppCounts::get(&c.messages),
            AppCounts::get(&c.deferred),
            AppCounts::get(&c.reoffers),
            AppCounts::get(&c.accepted),
            view.lanes.get(index).copied().unwrap_or(0),
            delivered
        );
    }
    let _ = writeln!(
        text,
        "  (messages: each counted once; deferred: answered 451 4.7.1 at least once;\n   re-offers: deferred messages offered again, as an MTA retries)"
    );
    text
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// How the run ended, for the summary.
struct Ending<'a> {
    /// The ceiling at the end (real units).
    ceiling: f64,
    scale: f64,
    metrics_url: &'a str,
    /// Demo time of a Ctrl-C, when the run was cut short.
    stopped_at: Option<f64>,
}

fn summary(counts: &[AppCounts; 2], arrivals: &[gateway::Arrival], ending: &Ending<'_>) -> String {
    let scale = ending.scale;
    let mut text = match ending.stopped_at {
        Some(at) => format!("\nsmtp-shaper demo: summary so far (stopped at t = {at:.0}s)\n\n"),
        None => String::from("\nsmtp-shaper demo: summary\n\n"),
    };
    let _ = writeln!(
        text,
        "  {:<11} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "app",
        "messages",
        "deferred",
        "re-offers",
        "accepted",
        "delivered",
        "p50 delay",
        "p99 delay"
    );
    for (index, app) in APPS.iter().enumerate() {
        let delays: Vec<f64> = arrivals
            .iter()
            .filter(|a| a.app == *app)
            .map(|a| a.delay)
            .collect();
        let c = &counts[index];
        let _ = writeln!(
            text,
            "  {:<11} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9.1}s {:>9.1}s",
            app,
            AppCounts::get(&c.messages),
            AppCounts::get(&c.deferred),
            AppCounts::get(&c.reoffers),
            AppCounts::get(&c.accepted),
            delays.len(),
            percentile(delays.clone(), 0.5) / scale,
            percentile(delays, 0.99) / scale,
        );
    }
    let accepted: u64 = counts.iter().map(|c| AppCounts::get(&c.accepted)).sum();
    let waiting: u64 = counts.iter().map(|c| AppCounts::get(&c.waiting)).sum();
    // The most the gateway received in any one (demo) second.
    let mut per_second = std::collections::HashMap::<u64, u64>::new();
    for arrival in arrivals {
        *per_second.entry((arrival.at / scale) as u64).or_default() += 1;
    }
    let peak = per_second.values().copied().max().unwrap_or(0);
    let undelivered = accepted.saturating_sub(arrivals.len() as u64);
    if ending.stopped_at.is_some() {
        let _ = writeln!(
            text,
            "\n  accepted {accepted}, delivered {}; {undelivered} accepted were still queued and {waiting} deferred\n  waiting to be offered again when you stopped it (a real service delivers its queue after the next start)",
            arrivals.len(),
        );
    } else {
        let _ = writeln!(
            text,
            "\n  accepted {accepted}, delivered {} (lost {undelivered})",
            arrivals.len(),
        );
    }
    let _ = writeln!(
        text,
        "  the gateway received at most {peak} messages in any second; the ceiling was {:.1}/s (+ burst 5)",
        ending.ceiling * scale
    );
    if ending.stopped_at.is_none() {
        let _ = writeln!(
            text,
            "  the burst was spread over time, new mail past max_queue_delay was deferred\n  (451 4.7.1) and delivered when offered again; alerts kept flowing."
        );
    }
    let _ = writeln!(
        text,
        "\n  Try it for real: smtp-shaper run   (or cargo run --release -- run)\n  on its embedded default: listens on 127.0.0.1:2525, spools to ./smtp-shaper-spool,\n  relays to an SMTP server on 127.0.0.1:25; config/smtp-shaper.toml documents every key.\n  Metrics were at {} (grafana/ has the dashboard and alert rules).",
        ending.metrics_url
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::{GatewayView, ModelView};

    fn view(ceiling: f64) -> GatewayView {
        GatewayView {
            model: ModelView {
                baseline: ceiling / 2.0,
                ceiling,
                demand_rate: 0.0,
                send_rate: 0.0,
                burst_ratio: 1.0,
                penalty: 1.0,
                paused_for: 0.0,
                deferrals: [0; 6],
                budgets: Vec::new(),
            },
            queued: 0,
            oldest_age: 0.0,
            lanes: vec![0, 0, 0],
            drain: crate::shaper::Projection::AT_ONCE,
        }
    }

    fn line<'a>(table: &'a str, name: &str) -> &'a str {
        table
            .lines()
            .find(|line| line.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{table}"))
    }

    #[test]
    fn the_bars_keep_one_scale_whatever_is_offered() {
        let counts: [AppCounts; 2] = Default::default();
        let frame = Frame {
            phase: "burst",
            now: 30.0,
            scale: 1.0,
            metrics_url: "off",
            bar_full: 20.0,
        };
        let quiet = table(
            &frame,
            &view(10.0),
            &Recent {
                offered: 3.0,
                delivered: 3.0,
            },
            &counts,
            &[],
        );
        let burst = table(
            &frame,
            &view(10.0),
            &Recent {
                offered: 150.0,
                delivered: 10.0,
            },
            &counts,
            &[],
        );
        let half = format!("[{}{}]", "#".repeat(20), ".".repeat(20));
        assert!(line(&quiet, "ceiling").ends_with(&half), "{quiet}");
        assert_eq!(line(&quiet, "ceiling"), line(&burst, "ceiling"));
        // More than a full bar: full, marked as overflowing.
        assert!(
            line(&burst, "offered").ends_with(&format!("[{}>]", "#".repeat(39))),
            "{burst}"
        );
        assert!(line(&quiet, "offered").ends_with(&format!(
            "[{}{}]",
            "#".repeat(6),
            ".".repeat(34)
        )));
    }
}
