//! `smtp-shaper demo`: the whole service on loopback with no set-up, to
//! watch a burst get accepted whole, held and released instead of handed
//! back to the app.
//!
//! It starts the real service (spool in a temporary folder, the HTTP
//! endpoint on 127.0.0.1:9325 when free) in front of an in-process gateway
//! (`gateway`), shaped as shipped: hour and day volume budgets on
//! (`min_rate` with `/h` and `/day` floors), `warmup` and `max_queue_delay`
//! at their defaults. Two apps send through it with smtp-shaper's own SMTP
//! client and, like Python's smtplib, Jakarta Mail or .NET's SmtpClient,
//! never retry: a message answered 4xx or 5xx, or whose connection failed,
//! is lost. `alerts` (transactional) sends a steady trickle; `newsletter`
//! (`class = "bulk"`) trickles, then sends 400 messages at once, then
//! trickles again.
//!
//! `time_scale` shrinks every duration and speeds up every minute rate by
//! the same factor (the test runs the demo at 0.1). The volume budgets'
//! windows are a real hour and a real day, longer than any run of the demo:
//! so its floors (`HOUR_FLOOR`, `DAY_FLOOR`) are low enough that the burst
//! is more than the hour lets the bulk app send. What the hour allows leaves
//! at the minute ceiling while the demo runs; the rest is still held in the
//! spool when it ends, and the summary says how many and what the `250`
//! said about when they leave (the service would release them then if it
//! kept running; the demo removes its temporary spool).
//!
//! Phases: idle -> trickle -> burst -> release (what the budgets allow of
//! it leaves at the ceiling) -> held (the budgets have no room left for
//! bulk mail, alerts still flow). The run ends once everything no budget
//! holds has been delivered (`AFTER_BURST_MIN` after the burst began at the
//! earliest, `AFTER_BURST_MAX` at the latest), or when interrupted: Ctrl-C
//! ends it early with the summary so far. A terminal gets a live table several
//! times a second, its bars on one scale for the whole run; a pipe gets the
//! metrics address first, then a line every few seconds. The summary, from
//! the apps' answers, the gateway's arrivals and the service's own view:
//! per app the messages, accepted, lost, delivered and held, the delays;
//! the service's deferral count; the burst's answers and the longest wait a
//! `250` gave; accepted = delivered + held; the budgets' counts; and the
//! most the gateway received in any second against the ceiling.

mod gateway;
mod summary;

use summary::{Ending, summary};

use crate::poison::LockRecovered;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Service;
use crate::config::{Config, GatewayTls};
use crate::outbound::client::Connection;
use crate::shaper::GatewayView;
use crate::shaper::ShapingConfig;
use crate::spool::Envelope;
use crate::tls::client::Upstream;
use gateway::DemoGateway;

/// What the demo does, at `time_scale` 1.
const IDLE: f64 = 5.0;
const TRICKLE: f64 = 20.0;
/// When newsletter sends its burst.
const BURST_AT: f64 = IDLE + TRICKLE;
const BURST_MESSAGES: u64 = 400;
/// The burst's connections, sending at once.
const BURST_CONNECTIONS: u64 = 4;
/// The run lasts at least this long after the burst began (to watch
/// alerts flow while the held mail stays put) ...
const AFTER_BURST_MIN: f64 = 35.0;
/// ... and at most this long: the run's bound.
const AFTER_BURST_MAX: f64 = 75.0;
const ALERTS_PER_SECOND: f64 = 2.0;
const NEWSLETTER_PER_SECOND: f64 = 1.0;
/// The demo's hour and day floors (`min_rate`), for a real hour and day:
/// the shipped ratio (a day's floor is five hours'), sized so the burst is
/// more than the hour lets the bulk app send (about half of it, the rest
/// being what the transactional app is seen to need), while alerts, at
/// most some 200 messages in a run, always find room.
const HOUR_FLOOR: u64 = 500;
const DAY_FLOOR: u64 = 2_500;

const GATEWAY: &str = "demo-gateway";
const APPS: [&str; 2] = ["newsletter", "alerts"];
const NEWSLETTER: usize = 0;
const ALERTS: usize = 1;

const TRICKLE_PHASE: &str = "trickle: both apps send a few messages a second";
const BURST_PHASE: &str =
    "burst: newsletter sends 400 messages at once, each accepted (250) and queued";
const RELEASE_PHASE: &str =
    "release: the burst leaves at the ceiling while the budgets have room for bulk mail";
const HELD_PHASE: &str =
    "held: the budgets have no room left for bulk mail: newsletter's waits on disk, alerts flow";

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

/// Per-app counts, from the answers the app got. An app sends each message
/// once: whatever is not accepted is lost.
#[derive(Default)]
struct AppCounts {
    /// Messages sent (each with its answer, or a failed connection).
    messages: AtomicU64,
    accepted: AtomicU64,
    /// Answered 4xx or 5xx: the app reports an error, the message is lost.
    refused: AtomicU64,
    /// No answer (the connection failed): lost too.
    failed: AtomicU64,
    /// Accepted with a `250` that named a volume budget as what it waits
    /// for: held by it.
    budget_held: AtomicU64,
}

impl AppCounts {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn lost(&self) -> u64 {
        Self::get(&self.refused) + Self::get(&self.failed)
    }
}

/// The burst's answers.
#[derive(Default)]
struct BurstCounts {
    accepted: AtomicU64,
    /// `250`s that said when the message leaves (a wait of over a minute).
    waits: AtomicU64,
    /// The longest wait a `250` of the burst gave: (seconds, the reply).
    longest: Mutex<Option<(f64, String)>>,
    /// Demo time the last message of the burst was answered.
    done_at: Mutex<Option<f64>>,
}

/// What the apps, the burst and the view share.
struct Shared {
    apps: [AppCounts; 2],
    burst: BurstCounts,
    phase: Mutex<&'static str>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            apps: Default::default(),
            burst: BurstCounts::default(),
            phase: Mutex::new("idle"),
        }
    }

    fn set_phase(&self, phase: &'static str) {
        *self.phase.lock_recovered() = phase;
    }

    fn total(&self, counter: impl Fn(&AppCounts) -> &AtomicU64) -> u64 {
        self.apps.iter().map(|c| AppCounts::get(counter(c))).sum()
    }

    fn burst_done(&self) -> Option<f64> {
        *self.burst.done_at.lock_recovered()
    }
}

fn config(
    scale: f64,
    spool: &std::path::Path,
    gateway: std::net::SocketAddr,
    http: &str,
) -> String {
    let rate = |per_second: f64| format!("{}/s", per_second / scale);
    // Shaped as shipped but for the floors: warmup, headroom, burst and
    // max_queue_delay at their defaults.
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
name = "{GATEWAY}"
address = "{gateway}"
tls = "none"
max_connections = 4
[gateways.shaping]
initial_rate = "{initial}"
min_rate = ["{min}", "{HOUR_FLOOR}/h", "{DAY_FLOOR}/day"]
max_rate = "{max}"
[[apps]]
name = "newsletter"
senders = ["newsletter.example.com"]
class = "bulk"
[[apps]]
name = "alerts"
senders = ["alerts.example.com"]
priority = 2
"#,
        spool = spool.display(),
        initial = rate(5.0),
        min = rate(1.0),
        max = rate(50.0),
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
    let (service, spool, shaping) = start_service(scale, gateway.address).await?;
    let proxy = service.smtp_address().to_string();
    let metrics_url = service.http_address().map_or_else(
        || "off".into(),
        |address| format!("http://{address}/metrics"),
    );
    let shared = Arc::new(Shared::new());
    let clock = Clock { start, scale };
    let stop = Arc::new(AtomicBool::new(false));
    let mut apps = trickles(&proxy, clock, &shared, &stop);
    let burst = tokio::spawn(burst(proxy, clock, shared.clone()));

    let watch = Watch {
        options,
        clock,
        service: &service,
        gateway: &gateway,
        shared: &shared,
        metrics_url: &metrics_url,
    };
    let stopped_at = watch.run(interrupt).await;
    stop.store(true, Ordering::Relaxed);
    // Still sending only when interrupted.
    burst.abort();
    while apps.join_next().await.is_some() {}
    if stopped_at.is_none() {
        settle(&service, &gateway).await;
    }
    let view = service.shaping(GATEWAY).expect("the demo gateway");
    let full = full_for_bulk(&view, &gateway);
    let held_by_budgets = all_held_by_budgets(&view, &gateway);
    service.shutdown().await;
    let _ = std::fs::remove_dir_all(&spool);
    let arrivals = gateway.received.lock_recovered().arrivals.clone();
    Ok(summary(
        &shared,
        &arrivals,
        &view,
        &Ending {
            shaping: &shaping,
            held_by: held_by_budgets.then_some(full),
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
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<()> {
    let mut apps = tokio::task::JoinSet::new();
    for (index, per_second) in [
        (ALERTS, ALERTS_PER_SECOND),
        (NEWSLETTER, NEWSLETTER_PER_SECOND),
    ] {
        apps.spawn(trickle(
            proxy.to_string(),
            index,
            per_second,
            clock,
            shared.clone(),
            stop.clone(),
        ));
    }
    apps
}

/// Waits until the service holds only what a budget holds (for a few
/// seconds at most): a message accepted as the run ended is delivered
/// before the summary counts it.
async fn settle(service: &Service, gateway: &DemoGateway) {
    for _ in 0..200 {
        if let Some(view) = service.shaping(GATEWAY)
            && all_held_by_budgets(&view, gateway)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The budgets (by name) with no room left for bulk mail: what bulk mail
/// may use of the allowance (all but what the transactional apps need,
/// `transactional_room`) is used up by what the gateway received of
/// newsletter's, the demo's only bulk app, or the allowance itself is.
fn full_for_bulk(view: &GatewayView, gateway: &DemoGateway) -> Vec<&'static str> {
    let bulk_sent = gateway
        .received
        .lock_recovered()
        .arrivals
        .iter()
        .filter(|a| a.app == APPS[NEWSLETTER])
        .count() as u64;
    view.model
        .budgets
        .iter()
        .filter(|budget| {
            budget.sent >= budget.allowance
                || bulk_sent >= budget.allowance.saturating_sub(budget.transactional_room)
        })
        .map(|budget| horizon_name(budget.horizon))
        .collect()
}

/// Everything the service holds waits for a volume budget: no alert is
/// queued, and newsletter's mail, if any, has no room in some budget.
fn all_held_by_budgets(view: &GatewayView, gateway: &DemoGateway) -> bool {
    view.lanes.get(ALERTS) == Some(&0)
        && (view.queued == 0 || !full_for_bulk(view, gateway).is_empty())
}

/// The service in front of the demo's `gateway`, with its spool folder
/// (new, in the temporary folder) and the gateway's shaping as parsed.
async fn start_service(
    scale: f64,
    gateway: std::net::SocketAddr,
) -> std::io::Result<(Service, std::path::PathBuf, ShapingConfig)> {
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
    let shaping = |config: &Config| config.gateways[0].shaping.clone();
    // The documented metrics port when it is free, else any. Binding is the
    // only test of "free" that another process cannot race.
    let spool = spool_dir();
    let config = start_on(&spool, "127.0.0.1:9325")?;
    let parsed = shaping(&config);
    match Service::start(config).await {
        Ok(service) => Ok((service, spool, parsed)),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            let _ = std::fs::remove_dir_all(&spool);
            let spool = spool_dir();
            let service = Service::start(start_on(&spool, "127.0.0.1:0")?).await?;
            Ok((service, spool, parsed))
        }
        Err(error) => Err(error),
    }
}

/// newsletter's burst: the trickle phase after the idle one, then
/// `BURST_MESSAGES` at once from `BURST_CONNECTIONS` connections, each
/// message sent once.
async fn burst(proxy: String, clock: Clock, shared: Arc<Shared>) {
    clock.sleep_until(IDLE).await;
    shared.set_phase(TRICKLE_PHASE);
    clock.sleep_until(BURST_AT).await;
    shared.set_phase(BURST_PHASE);
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..BURST_CONNECTIONS {
        let (proxy, shared) = (proxy.clone(), shared.clone());
        senders.spawn(async move {
            let mut app = App::new(proxy, NEWSLETTER, shared.clone());
            for _ in 0..BURST_MESSAGES / BURST_CONNECTIONS {
                if let Some(reply) = app.send(clock).await {
                    shared.burst.record(&reply);
                }
            }
        });
    }
    while senders.join_next().await.is_some() {}
    *shared.burst.done_at.lock_recovered() = Some(clock.now());
}

impl BurstCounts {
    /// One `250` the burst got.
    fn record(&self, reply: &str) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if let Some((wait, _)) = said_wait(reply) {
            self.waits.fetch_add(1, Ordering::Relaxed);
            let mut longest = self.longest.lock_recovered();
            if longest.as_ref().is_none_or(|(most, _)| wait > *most) {
                *longest = Some((wait, reply.to_string()));
            }
        }
    }
}

/// When a `250` said the message leaves, and what it waits for
/// (`... leaves in about 1h0m (hourly volume budget)`, see
/// `inbound::session::accepted_reply`): (seconds, the reason).
fn said_wait(reply: &str) -> Option<(f64, &str)> {
    let (_, rest) = reply.split_once("; leaves in about ")?;
    let (duration, reason) = rest.split_once(" (")?;
    let reason = reason.strip_suffix(')')?;
    let mut seconds = 0.0;
    let mut number = String::new();
    for c in duration.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400.0,
            'h' => 3_600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        seconds += number.parse::<f64>().ok()? * unit;
        number.clear();
    }
    number.is_empty().then_some((seconds, reason))
}

/// The view of a run while it goes: what it reads, and where.
struct Watch<'a> {
    options: DemoOptions,
    clock: Clock,
    service: &'a Service,
    gateway: &'a DemoGateway,
    shared: &'a Shared,
    metrics_url: &'a str,
}

impl Watch<'_> {
    /// Shows the run until everything no budget holds has been delivered
    /// (or the steady phase is over), or until `interrupt`: then returns
    /// the demo time it came.
    async fn run(&self, interrupt: impl std::future::Future<Output = ()>) -> Option<f64> {
        let mut interrupt = std::pin::pin!(interrupt);
        let Watch {
            options,
            clock,
            service,
            gateway,
            shared,
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
            .shaping(GATEWAY)
            .map_or(1.0, |view| view.model.ceiling * scale * 2.0)
            .max(1.0);
        let mut last_line = -100.0;
        let mut history = History::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = &mut interrupt => return Some(clock.now()),
            }
            let now = clock.now();
            let view = service.shaping(GATEWAY).expect("the demo gateway");
            let burst_done = shared.burst_done().is_some();
            let settled = burst_done && all_held_by_budgets(&view, gateway);
            if settled {
                shared.set_phase(HELD_PHASE);
            } else if burst_done {
                shared.set_phase(RELEASE_PHASE);
            }
            let finished = settled && now >= BURST_AT + AFTER_BURST_MIN;
            let offered = shared.total(|c| &c.messages);
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
            if finished || now > BURST_AT + AFTER_BURST_MAX {
                return None;
            }
        }
    }

    /// The live table a terminal gets several times a second.
    fn table(&self, now: f64, bar_full: f64, view: &GatewayView, recent: &Recent) -> String {
        table(
            &Frame {
                phase: &self.shared.phase.lock_recovered(),
                now,
                scale: self.options.time_scale,
                metrics_url: self.metrics_url,
                bar_full,
            },
            view,
            recent,
            &self.shared.apps,
            &self.gateway.received.lock_recovered().arrivals,
        )
    }

    /// The progress line a pipe gets every few seconds.
    fn line(&self, now: f64, view: &GatewayView, recent: &Recent) -> String {
        let mut line = format!(
            "t={now:>5.1}s  {:<7}  offered {:>6.1}/s  ceiling {:>5.1}/s  delivered {:>5.1}/s  queued {:>4}",
            self.shared
                .phase
                .lock_recovered()
                .split(':')
                .next()
                .unwrap_or(""),
            recent.offered,
            view.model.ceiling * self.options.time_scale,
            recent.delivered,
            view.queued
        );
        for budget in &view.model.budgets {
            let _ = write!(
                line,
                "  {} budget {}/{}",
                horizon_name(budget.horizon),
                budget.sent,
                budget.allowance
            );
        }
        let arrivals = &self.gateway.received.lock_recovered().arrivals;
        for (index, app) in APPS.iter().enumerate() {
            let c = &self.shared.apps[index];
            let _ = write!(
                line,
                "  | {app}: {} messages, {} accepted, {} lost, {} queued, {} delivered",
                AppCounts::get(&c.messages),
                AppCounts::get(&c.accepted),
                c.lost(),
                view.lanes.get(index).copied().unwrap_or(0),
                arrivals.iter().filter(|a| a.app == *app).count()
            );
        }
        line
    }
}

fn horizon_name(horizon: crate::shaper::Horizon) -> &'static str {
    match horizon {
        crate::shaper::Horizon::Hour => "hour",
        crate::shaper::Horizon::Day => "day",
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

/// What the proxy made of one message.
enum Answer {
    /// `250`, with its text.
    Accepted(String),
    /// 4xx or 5xx.
    Refused,
    /// No answer: the connection failed.
    Failed,
}

/// One app's connection to the proxy.
struct App {
    proxy: String,
    index: usize,
    shared: Arc<Shared>,
    connection: Option<Connection>,
    upstream: Upstream,
}

impl App {
    fn new(proxy: String, index: usize, shared: Arc<Shared>) -> App {
        // Plain SMTP to the proxy on loopback, as an app's library speaks.
        let upstream = Upstream {
            mode: GatewayTls::None,
            config: crate::tls::client::unverified(),
            server_name: "localhost".try_into().expect("a valid name"),
        };
        App {
            proxy,
            index,
            shared,
            connection: None,
            upstream,
        }
    }

    /// Sends one message, once, and counts the answer. Returns the `250`'s
    /// text when it was accepted; anything else the app reports as an
    /// error and the message is lost, as with every mainstream mail
    /// library (none retries a 4xx).
    async fn send(&mut self, clock: Clock) -> Option<String> {
        let answer = self.try_send(clock).await;
        let counts = &self.shared.apps[self.index];
        counts.messages.fetch_add(1, Ordering::Relaxed);
        match answer {
            Answer::Accepted(reply) => {
                counts.accepted.fetch_add(1, Ordering::Relaxed);
                if said_wait(&reply).is_some_and(|(_, why)| why.contains("volume budget")) {
                    counts.budget_held.fetch_add(1, Ordering::Relaxed);
                }
                return Some(reply);
            }
            Answer::Refused => counts.refused.fetch_add(1, Ordering::Relaxed),
            Answer::Failed => counts.failed.fetch_add(1, Ordering::Relaxed),
        };
        None
    }

    async fn try_send(&mut self, clock: Clock) -> Answer {
        let app = APPS[self.index];
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
                Err(_) => return Answer::Failed,
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
        // A bulk sender's mail carries one-click unsubscribe (RFC 8058).
        let unsubscribe = if self.index == NEWSLETTER {
            "List-Unsubscribe: <https://newsletter.example.com/unsubscribe>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        } else {
            ""
        };
        let body = format!(
            "From: {app}@{app}.example.com\r\nTo: someone@example.org\r\nSubject: demo\r\n{unsubscribe}X-Demo-Sent: {:.3}\r\n\r\nhello from {app}\r\n",
            clock.start.elapsed().as_secs_f64()
        );
        let connection = self.connection.as_mut().expect("opened above");
        let Ok(transaction) = connection.send(&envelope, &[0], body.as_bytes()).await else {
            self.connection = None;
            return Answer::Failed;
        };
        if !transaction.reusable {
            self.connection = None;
        }
        let reply = &transaction.replies[0];
        if reply.is_positive() {
            Answer::Accepted(format!("{} {}", reply.code, reply.lines.join(" ")))
        } else {
            Answer::Refused
        }
    }
}

/// An app sending `per_second` from the end of the idle phase until
/// `stop`, each message once.
async fn trickle(
    proxy: String,
    index: usize,
    per_second: f64,
    clock: Clock,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let mut app = App::new(proxy, index, shared);
    clock.sleep_until(IDLE).await;
    let mut next = clock.now();
    while !stop.load(Ordering::Relaxed) {
        app.send(clock).await;
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
    view: &GatewayView,
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
        "gateway {GATEWAY}   baseline {:.1}/s   burst ratio {:.1}   queued {}   oldest {:.0}s",
        baseline,
        model.burst_ratio,
        view.queued,
        view.oldest_age / scale
    );
    let budgets: Vec<String> = model
        .budgets
        .iter()
        .map(|budget| {
            format!(
                "{} {} of {} sent",
                horizon_name(budget.horizon),
                budget.sent,
                budget.allowance
            )
        })
        .collect();
    if !budgets.is_empty() {
        let _ = writeln!(
            text,
            "  budgets: {}   (a real hour and day)",
            budgets.join(", ")
        );
    }
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
        "  (offered and sent: the last {RATE_WINDOW:.0}s; ceiling: the shaper's limit now;\n   a full bar is {bar_full:.0}/s)"
    );
    let _ = writeln!(
        text,
        "\n  {:<11} {:>8} {:>9} {:>5} {:>7} {:>10}",
        "app", "messages", "accepted", "lost", "queued", "delivered"
    );
    for (index, app) in APPS.iter().enumerate() {
        let delivered = arrivals.iter().filter(|a| a.app == *app).count();
        let c = &counts[index];
        let _ = writeln!(
            text,
            "  {:<11} {:>8} {:>9} {:>5} {:>7} {:>10}",
            app,
            AppCounts::get(&c.messages),
            AppCounts::get(&c.accepted),
            c.lost(),
            view.lanes.get(index).copied().unwrap_or(0),
            delivered
        );
    }
    let _ = writeln!(
        text,
        "  (each message is sent once, as mail libraries do: lost = answered 4xx/5xx or no answer;\n   queued: in the service's spool now)"
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::{DeferReason, ModelView, Projection};

    fn view(ceiling: f64) -> GatewayView {
        GatewayView {
            model: ModelView {
                baseline: ceiling / 2.0,
                ceiling,
                demand_rate: 0.0,
                send_rate: 0.0,
                burst_ratio: 1.0,
                penalty: 1.0,
                penalty_phase: crate::shaper::penalty::PenaltyPhase::Calm,
                mode: crate::shaper::ShapingMode::Enforce,
                recovery_left: 0.0,
                paused_for: 0.0,
                deferrals: [0; DeferReason::ALL.len()],
                budgets: Vec::new(),
                receivers: Vec::new(),
            },
            queued: 0,
            oldest_age: 0.0,
            lanes: vec![0, 0, 0],
            receivers: Vec::new(),
            drain: crate::shaper::Projection::AT_ONCE,
            newest_age: 0.0,
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

    /// The demo reads the service's own 250, as `accepted_reply` writes it.
    #[test]
    fn the_wait_a_250_says_is_read_back() {
        let reply = |wait: f64, reason: DeferReason| {
            let reply =
                crate::inbound::session::accepted_reply("1A2B3C", &Projection { wait, reason });
            format!("{} {}", reply.code, reply.lines.join(" "))
        };
        for (wait, reason, seconds) in [
            (3_540.0, DeferReason::HourBudget, 3_540.0),
            (3_600.0, DeferReason::HourBudget, 3_600.0),
            (5_000.0, DeferReason::DayBudget, 5_040.0),
            (86_400.0 + 7_200.0, DeferReason::DayBudget, 93_600.0),
        ] {
            let text = reply(wait, reason);
            assert_eq!(
                said_wait(&text),
                Some((seconds, reason.describe())),
                "{text}"
            );
        }
        assert_eq!(said_wait(&reply(30.0, DeferReason::QueueDelay)), None);
        assert_eq!(said_wait("250 2.0.0 Ok: queued as 1A2B3C"), None);
    }
}
