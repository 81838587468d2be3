//! The MX hosts of recipient domains, for rolling a domain up to its
//! receiver by where its mail goes (a company domain at Microsoft 365 is
//! `microsoft`: `policy::receivers::Receivers::by_mx` does that matching;
//! this module only says what the MX hosts are).
//!
//! The contract: our own DNS client, cached by TTL, a bounded wait, and a
//! failed lookup is `other` and retried later. A relay must not hold mail
//! because DNS is slow or down, so every answer here is allowed to be
//! "unknown", which the caller counts as `other`.
//!
//! Two layers, so that the rules can be tested on a fake clock:
//!
//! - [`MxCache`], the pure core: what is known of each domain and until
//!   when, whether a lookup is in flight, whether a domain may be asked
//!   now. Every method that depends on time is given `now` (Unix seconds);
//!   no clock, no I/O.
//! - [`MxResolver`], the thin async edge: asks a [`Resolver`] off the async
//!   threads (`spawn_blocking`), one lookup per domain at a time (others
//!   asking meanwhile wait for that one), waits at most as long as its
//!   caller allows, and lets a lookup its callers stopped waiting for go on
//!   and fill the cache for next time.
//!
//! Invariants: a domain has at most one lookup in flight, and every lookup
//! begun is answered (a resolver that panics, or a task dropped unrun,
//! answers as a failure), so no domain is left waiting for ever. The cache
//! holds at most [`MAX_DOMAINS`] domains and [`MAX_IN_FLIGHT`] lookups, so a
//! flood of mail to random domains cannot grow memory or the blocking
//! thread pool without bound: past them the oldest answers are forgotten
//! and new domains stay unknown (`other`) until a lookup is free.
//!
//! Why the clamps: a TTL is kept between [`MIN_TTL`] and [`MAX_TTL`]. Below
//! a minute (TTL 0 and a few seconds are common behind load balancers)
//! every message to a domain would ask DNS again and its release would wait
//! for it, while a domain's mail hosting does not move within a minute.
//! Above a day, a domain that moved to Google Workspace would go on being
//! judged as its old host's for as long as a zone's TTL says (a week is
//! seen), and a wrong answer would stay that long. A domain with no MX is
//! kept the same way for its negative TTL (RFC 2308), an hour when the
//! server did not send one. A failure is kept [`RETRY_AFTER`], long enough
//! that while DNS is down the sessions do not each wait out the bound.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::{DnsError, MxAnswer, Resolver};
use crate::poison::LockRecovered;

/// The shortest a known answer is kept, in seconds, whatever its TTL.
pub const MIN_TTL: f64 = 60.0;
/// The longest a known answer is kept, in seconds, whatever its TTL.
pub const MAX_TTL: f64 = 86_400.0;
/// How long a domain without MX is kept when the server gave no negative
/// TTL (no SOA in its answer).
pub const NEGATIVE_TTL: f64 = 3_600.0;
/// How long after a failed lookup the domain is asked again, in seconds.
pub const RETRY_AFTER: f64 = 300.0;
/// Domains remembered at most.
pub const MAX_DOMAINS: usize = 100_000;
/// Lookups in flight at most (each holds a blocking thread for up to the
/// DNS client's own timeouts).
pub const MAX_IN_FLIGHT: usize = 64;

/// What the cache says of a domain's MX hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Its exchange hosts, most preferred first (lower case, no final dot).
    Hosts(Vec<String>),
    /// It has no MX, or does not exist.
    NoMx,
    /// Never asked, expired, failed, or in flight: the caller counts it as
    /// `other` (and may ask, when [`MxCache::should_ask`] says so).
    Unknown,
}

/// What was last heard of a domain.
#[derive(Debug, Clone)]
enum Outcome {
    Known { hosts: Vec<String>, until: f64 },
    Failed { retry_at: f64 },
}

#[derive(Debug, Clone)]
struct Entry {
    /// When the answer came: the oldest are forgotten first when full.
    answered_at: f64,
    outcome: Outcome,
}

impl Entry {
    /// Whether the entry still says something (a known answer before its
    /// TTL ran out, a failure before its retry time).
    fn is_live(&self, now: f64) -> bool {
        match self.outcome {
            Outcome::Known { until, .. } => now < until,
            Outcome::Failed { retry_at } => now < retry_at,
        }
    }
}

/// The pure core: answers by domain, kept by TTL (see the module notes).
#[derive(Debug, Clone)]
pub struct MxCache {
    entries: HashMap<String, Entry>,
    in_flight: HashSet<String>,
    max_domains: usize,
    max_in_flight: usize,
}

impl Default for MxCache {
    fn default() -> MxCache {
        MxCache::with_limits(MAX_DOMAINS, MAX_IN_FLIGHT)
    }
}

impl MxCache {
    pub fn new() -> MxCache {
        MxCache::default()
    }

    /// A cache holding at most `max_domains` domains (at least one) and
    /// `max_in_flight` lookups.
    pub fn with_limits(max_domains: usize, max_in_flight: usize) -> MxCache {
        MxCache {
            entries: HashMap::new(),
            in_flight: HashSet::new(),
            max_domains: max_domains.max(1),
            max_in_flight,
        }
    }

    /// What is known of `domain` at `now`.
    pub fn get(&self, domain: &str, now: f64) -> Lookup {
        match self.entries.get(&normal(domain)) {
            Some(entry) if entry.is_live(now) => match &entry.outcome {
                Outcome::Known { hosts, .. } if hosts.is_empty() => Lookup::NoMx,
                Outcome::Known { hosts, .. } => Lookup::Hosts(hosts.clone()),
                Outcome::Failed { .. } => Lookup::Unknown,
            },
            _ => Lookup::Unknown,
        }
    }

    /// Whether DNS should be asked for `domain` now: it is a domain name,
    /// nothing live is known of it, no lookup of it is in flight, a failure's
    /// retry time has come, and a lookup is free.
    pub fn should_ask(&self, domain: &str, now: f64) -> bool {
        let domain = normal(domain);
        is_domain_name(&domain)
            && !self.in_flight.contains(&domain)
            && self.in_flight.len() < self.max_in_flight
            && !self
                .entries
                .get(&domain)
                .is_some_and(|entry| entry.is_live(now))
    }

    /// A lookup of `domain` was sent (after [`MxCache::should_ask`]).
    pub fn began(&mut self, domain: &str) {
        self.in_flight.insert(normal(domain));
    }

    /// Whether a lookup of `domain` is in flight.
    pub fn in_flight(&self, domain: &str) -> bool {
        self.in_flight.contains(&normal(domain))
    }

    /// The lookup of `domain` ended with `result` at `now`.
    pub fn answered(&mut self, domain: &str, result: Result<MxAnswer, DnsError>, now: f64) {
        let domain = normal(domain);
        self.in_flight.remove(&domain);
        let outcome = match result {
            Ok(answer) => known(answer, now),
            Err(_) => Outcome::Failed {
                retry_at: now + RETRY_AFTER,
            },
        };
        if !self.entries.contains_key(&domain) && self.entries.len() >= self.max_domains {
            self.make_room(now);
        }
        self.entries.insert(
            domain,
            Entry {
                answered_at: now,
                outcome,
            },
        );
    }

    /// Domains remembered (live or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets what has run out, then, if that is not enough, the oldest
    /// answers, down to nine tenths of the bound: a sweep is a pass over
    /// every entry, so it frees room for many inserts, not one.
    fn make_room(&mut self, now: f64) {
        self.entries.retain(|_, entry| entry.is_live(now));
        let keep = (self.max_domains * 9 / 10).min(self.max_domains - 1);
        if self.entries.len() <= keep {
            return;
        }
        let mut by_age: Vec<(f64, &String)> = self
            .entries
            .iter()
            .map(|(domain, entry)| (entry.answered_at, domain))
            .collect();
        by_age.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let oldest: Vec<String> = by_age[..by_age.len() - keep]
            .iter()
            .map(|(_, domain)| (*domain).clone())
            .collect();
        for domain in oldest {
            self.entries.remove(&domain);
        }
    }
}

/// A successful answer as kept: its hosts (a null MX, RFC 7505's `.`, is
/// no host) until the lowest TTL of its records, or, without records, its
/// negative TTL; clamped either way.
fn known(answer: MxAnswer, now: f64) -> Outcome {
    let negative_ttl = answer.negative_ttl;
    let records = answer.exchanges.records();
    let ttl = match records.iter().map(|(_, ttl)| *ttl).min() {
        Some(ttl) => f64::from(ttl),
        None => negative_ttl.map_or(NEGATIVE_TTL, f64::from),
    };
    let mut hosts: Vec<String> = Vec::with_capacity(records.len());
    for (host, _) in records {
        let host = normal(&host);
        if !host.is_empty() && !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Outcome::Known {
        hosts,
        until: now + ttl.clamp(MIN_TTL, MAX_TTL),
    }
}

/// Lower case, without a final dot (`Example.COM.` is `example.com`).
fn normal(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` (normal) can be asked of DNS: an address literal
/// (`[192.0.2.1]`) or a name the wire cannot carry would only fail.
fn is_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// Unix seconds now.
fn system_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// The async edge: asks DNS for MX hosts off the async threads, one lookup
/// per domain at a time, never waiting longer than its caller allows (see
/// the module notes). Clones share one cache.
#[derive(Clone)]
pub struct MxResolver {
    shared: Arc<Shared>,
}

struct Shared {
    resolver: Arc<dyn Resolver + Send + Sync>,
    clock: Box<dyn Fn() -> f64 + Send + Sync>,
    state: Mutex<State>,
}

struct State {
    cache: MxCache,
    /// The lookups in flight, each with the signal its waiters wait on
    /// (`true` once its answer is in the cache).
    pending: HashMap<String, watch::Receiver<bool>>,
}

impl std::fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("MxResolver")
            .field("domains", &state.cache.len())
            .field("in_flight", &state.pending.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_recovered()
    }
}

impl MxResolver {
    /// Asks `resolver`, on the system clock.
    pub fn new(resolver: Arc<dyn Resolver + Send + Sync>) -> MxResolver {
        MxResolver::with_clock(resolver, system_now)
    }

    /// Asks `resolver`, on `clock` (Unix seconds): tests move time by hand.
    pub fn with_clock(
        resolver: Arc<dyn Resolver + Send + Sync>,
        clock: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> MxResolver {
        MxResolver {
            shared: Arc::new(Shared {
                resolver,
                clock: Box::new(clock),
                state: Mutex::new(State {
                    cache: MxCache::new(),
                    pending: HashMap::new(),
                }),
            }),
        }
    }

    /// The MX hosts of `domain`, most preferred first (none: it has no
    /// MX), from the cache or else from DNS, waiting at most `wait`. `None`
    /// when they are not known by then: the lookup failed (it is asked
    /// again after [`RETRY_AFTER`]), is still going (it goes on and fills
    /// the cache), or was not sent (not a domain name, or
    /// [`MAX_IN_FLIGHT`] lookups are going); the caller counts the domain
    /// as `other`. With a `wait` of zero it never waits: it answers from
    /// the cache and starts a lookup if one is due.
    pub async fn hosts(&self, domain: &str, wait: Duration) -> Option<Vec<String>> {
        let domain = normal(domain);
        let mut answered = {
            let mut state = self.shared.lock();
            let now = (self.shared.clock)();
            if let Some(hosts) = known_hosts(state.cache.get(&domain, now)) {
                return Some(hosts);
            }
            match state.pending.get(&domain) {
                Some(answered) => answered.clone(),
                None if state.cache.should_ask(&domain, now) => self.ask(&mut state, &domain),
                None => return None,
            }
        };
        // The lookup's end, in time or not; its answer, if any, is in the
        // cache either way (a dropped signal is a lookup that ended too).
        let ended = tokio::time::timeout(wait, answered.wait_for(|done| *done)).await;
        match ended {
            Ok(_) => self.cached(&domain),
            Err(_) => None,
        }
    }

    /// The MX hosts of `domain` if the cache knows them now, without
    /// asking DNS or waiting (for admission, before the reply to DATA).
    pub fn cached(&self, domain: &str) -> Option<Vec<String>> {
        let state = self.shared.lock();
        known_hosts(state.cache.get(domain, (self.shared.clock)()))
    }

    /// Starts the lookup of `domain` (normal) on a blocking thread; the
    /// signal turns `true` once its answer is in the cache.
    fn ask(&self, state: &mut State, domain: &str) -> watch::Receiver<bool> {
        state.cache.began(domain);
        let (done, answered) = watch::channel(false);
        state.pending.insert(domain.to_string(), answered.clone());
        let lookup = InFlight {
            shared: self.shared.clone(),
            domain: domain.to_string(),
            done,
            answered: false,
        };
        tokio::task::spawn_blocking(move || {
            let result = lookup.shared.resolver.mx_answer(&lookup.domain);
            lookup.answer(result);
        });
        answered
    }
}

/// The hosts a cache lookup gives the caller: `None` when unknown.
fn known_hosts(lookup: Lookup) -> Option<Vec<String>> {
    match lookup {
        Lookup::Hosts(hosts) => Some(hosts),
        Lookup::NoMx => Some(Vec::new()),
        Lookup::Unknown => None,
    }
}

/// One lookup in flight. A lookup dropped unanswered (its resolver
/// panicked, or its task was dropped before it ran as the runtime shut
/// down) answers as a failure, so that no domain waits for it for ever.
struct InFlight {
    shared: Arc<Shared>,
    domain: String,
    done: watch::Sender<bool>,
    answered: bool,
}

impl InFlight {
    fn answer(mut self, result: Result<MxAnswer, DnsError>) {
        self.record(result);
    }

    /// Puts the answer in the cache and wakes the lookup's waiters.
    fn record(&mut self, result: Result<MxAnswer, DnsError>) {
        self.answered = true;
        if let Err(error) = &result {
            // Once per domain per retry period: a failed domain is not
            // asked again before then.
            tracing::debug!(
                domain = %self.domain,
                %error,
                retry_in_seconds = RETRY_AFTER,
                "MX lookup failed; the domain counts as `other` until it is asked again"
            );
        }
        {
            let mut state = self.shared.lock();
            let now = (self.shared.clock)();
            state.cache.answered(&self.domain, result, now);
            state.pending.remove(&self.domain);
        }
        self.done.send_replace(true);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.answered {
            self.record(Err(DnsError::Failed(
                "the lookup ended without an answer".to_string(),
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{Answer, SeededResolver, SystemResolver, wire};
    use std::future::Future;
    use std::net::UdpSocket;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::task::Poll;

    /// A moment to start fake clocks at.
    const T: f64 = 1_700_000_000.0;

    fn mx(hosts: &[(&str, u32)]) -> Result<MxAnswer, DnsError> {
        Ok(MxAnswer {
            exchanges: Answer::Records(
                hosts
                    .iter()
                    .map(|(host, ttl)| (host.to_string(), *ttl))
                    .collect(),
            ),
            negative_ttl: None,
        })
    }

    fn failed() -> Result<MxAnswer, DnsError> {
        Err(DnsError::Failed("SERVFAIL".into()))
    }

    fn google() -> Lookup {
        Lookup::Hosts(vec![
            "aspmx.l.google.com".into(),
            "alt1.aspmx.l.google.com".into(),
        ])
    }

    #[test]
    fn an_answer_is_kept_for_its_lowest_ttl() {
        let mut cache = MxCache::new();
        assert_eq!(cache.get("example.org", T), Lookup::Unknown, "never asked");
        assert!(cache.should_ask("example.org", T));
        cache.began("example.org");
        assert!(cache.in_flight("example.org"));
        assert!(!cache.should_ask("example.org", T), "one lookup in flight");
        assert_eq!(cache.get("example.org", T), Lookup::Unknown, "in flight");
        cache.answered(
            "example.org",
            mx(&[
                ("aspmx.l.google.com", 600),
                ("alt1.aspmx.l.google.com", 300),
            ]),
            T,
        );
        assert!(!cache.in_flight("example.org"));
        assert_eq!(cache.get("example.org", T + 299.0), google());
        assert!(!cache.should_ask("example.org", T + 299.0));
        assert_eq!(
            cache.get("example.org", T + 300.0),
            Lookup::Unknown,
            "expired"
        );
        assert!(cache.should_ask("example.org", T + 300.0));
    }

    #[test]
    fn ttls_are_clamped_to_a_minute_and_a_day() {
        let mut cache = MxCache::new();
        cache.answered("zero.example", mx(&[("mx.zero.example", 0)]), T);
        cache.answered("week.example", mx(&[("mx.week.example", 604_800)]), T);
        let hosts = |host: &str| Lookup::Hosts(vec![host.to_string()]);
        assert_eq!(
            cache.get("zero.example", T + 59.0),
            hosts("mx.zero.example")
        );
        assert_eq!(cache.get("zero.example", T + 60.0), Lookup::Unknown);
        assert_eq!(
            cache.get("week.example", T + 86_399.0),
            hosts("mx.week.example")
        );
        assert_eq!(cache.get("week.example", T + 86_400.0), Lookup::Unknown);
    }

    #[test]
    fn a_failure_is_unknown_and_retried_after_five_minutes_not_before() {
        let mut cache = MxCache::new();
        cache.answered("example.org", mx(&[("aspmx.l.google.com", 600)]), T);
        cache.began("example.org");
        cache.answered("example.org", failed(), T + 1_000.0);
        assert_eq!(cache.get("example.org", T + 1_000.0), Lookup::Unknown);
        assert!(!cache.should_ask("example.org", T + 1_000.0));
        assert!(!cache.should_ask("example.org", T + 1_299.0));
        assert_eq!(cache.get("example.org", T + 1_299.0), Lookup::Unknown);
        assert!(cache.should_ask("example.org", T + 1_300.0));
        cache.began("example.org");
        cache.answered(
            "example.org",
            mx(&[
                ("aspmx.l.google.com", 600),
                ("alt1.aspmx.l.google.com", 600),
            ]),
            T + 1_300.0,
        );
        assert_eq!(cache.get("example.org", T + 1_300.0), google());
    }

    #[test]
    fn a_domain_without_mx_is_kept_for_its_negative_ttl_else_an_hour() {
        let mut cache = MxCache::new();
        let nodata = |negative_ttl| {
            Ok(MxAnswer {
                exchanges: Answer::Records(Vec::new()),
                negative_ttl,
            })
        };
        let nxdomain = |negative_ttl| {
            Ok(MxAnswer {
                exchanges: Answer::NoSuchName,
                negative_ttl,
            })
        };
        cache.answered("nodata.example", nodata(Some(120)), T);
        cache.answered("nxdomain.example", nxdomain(Some(5)), T);
        cache.answered("no-soa.example", nxdomain(None), T);
        cache.answered("long-soa.example", nodata(Some(1_000_000)), T);
        cache.answered("null-mx.example", mx(&[("", 900)]), T);
        let at = |domain, seconds| cache.get(domain, T + seconds);
        assert_eq!(at("nodata.example", 119.0), Lookup::NoMx);
        assert_eq!(at("nodata.example", 120.0), Lookup::Unknown);
        assert_eq!(at("nxdomain.example", 59.0), Lookup::NoMx, "clamped");
        assert_eq!(at("nxdomain.example", 60.0), Lookup::Unknown);
        assert_eq!(at("no-soa.example", 3_599.0), Lookup::NoMx);
        assert_eq!(at("no-soa.example", 3_600.0), Lookup::Unknown);
        assert_eq!(at("long-soa.example", 86_399.0), Lookup::NoMx, "clamped");
        assert_eq!(at("long-soa.example", 86_400.0), Lookup::Unknown);
        assert_eq!(
            at("null-mx.example", 899.0),
            Lookup::NoMx,
            "a null MX (RFC 7505) names no host, for its record's TTL"
        );
        assert_eq!(at("null-mx.example", 900.0), Lookup::Unknown);
    }

    #[test]
    fn domains_and_hosts_are_normalised() {
        let mut cache = MxCache::new();
        cache.began("Example.ORG.");
        assert!(!cache.should_ask("example.org", T), "the same domain");
        cache.answered(
            " example.org",
            mx(&[
                ("ASPMX.L.Google.com.", 600),
                ("aspmx.l.google.com", 600),
                ("Alt1.ASPMX.l.google.com.", 600),
            ]),
            T,
        );
        assert!(!cache.in_flight("example.org"));
        assert_eq!(cache.get("EXAMPLE.org.", T), google(), "one host once");
        assert_eq!(cache.len(), 1);
        assert!(cache.should_ask("Mail-1.Example.NET.", T));
        let long_label = format!("{}.example", "a".repeat(64));
        for not_a_domain in [
            "",
            ".",
            "[192.0.2.1]",
            "a..example",
            "a b.example",
            &long_label,
        ] {
            assert!(!cache.should_ask(not_a_domain, T), "{not_a_domain:?}");
        }
    }

    #[test]
    fn the_cache_is_bounded_forgetting_the_expired_then_the_oldest() {
        let mut cache = MxCache::with_limits(10, 64);
        for index in 0..5 {
            cache.answered(&format!("short{index}.example"), mx(&[("mx.a", 60)]), T);
        }
        for index in 0..5 {
            let domain = format!("long{index}.example");
            cache.answered(&domain, mx(&[("mx.b", 86_400)]), T + 1.0);
        }
        assert_eq!(cache.len(), 10);
        // A minute on, the short ones have run out: they go first, and
        // every long one stays.
        cache.answered("new.example", mx(&[("mx.c", 3_600)]), T + 61.0);
        assert_eq!(cache.len(), 6);
        for index in 0..5 {
            let domain = format!("long{index}.example");
            assert_eq!(
                cache.get(&domain, T + 61.0),
                Lookup::Hosts(vec!["mx.b".into()])
            );
        }
        // A flood of live answers: the oldest are forgotten, the newest kept.
        for index in 0..1_000 {
            let domain = format!("flood{index}.example");
            cache.answered(
                &domain,
                mx(&[("mx.d", 3_600)]),
                T + 100.0 + f64::from(index),
            );
            assert!(cache.len() <= 10);
        }
        assert_eq!(
            cache.get("flood999.example", T + 1_100.0),
            Lookup::Hosts(vec!["mx.d".into()])
        );
        assert_eq!(cache.get("long0.example", T + 1_100.0), Lookup::Unknown);
        // A known domain answered again takes no more room.
        let mut full = MxCache::with_limits(2, 64);
        full.answered("a.example", mx(&[("mx.a", 600)]), T);
        full.answered("b.example", mx(&[("mx.b", 600)]), T + 1.0);
        full.answered("a.example", mx(&[("mx.a2", 600)]), T + 2.0);
        assert_eq!(full.len(), 2);
        assert_eq!(
            full.get("b.example", T + 2.0),
            Lookup::Hosts(vec!["mx.b".into()])
        );
    }

    #[test]
    fn lookups_in_flight_are_bounded() {
        let mut cache = MxCache::with_limits(100, 2);
        cache.began("a.example");
        cache.began("b.example");
        assert!(!cache.should_ask("c.example", T), "no lookup free");
        cache.answered("a.example", failed(), T);
        assert!(cache.should_ask("c.example", T));
    }

    /// A resolver whose MX lookups each wait for the test to let one through
    /// (then answer from `zone`), counting them.
    struct Gated {
        zone: SeededResolver,
        gate: Mutex<mpsc::Receiver<()>>,
        lookups: AtomicUsize,
    }

    impl Gated {
        fn new(zone: SeededResolver) -> (Arc<Gated>, mpsc::Sender<()>) {
            let (open, gate) = mpsc::channel();
            let gated = Gated {
                zone,
                gate: Mutex::new(gate),
                lookups: AtomicUsize::new(0),
            };
            (Arc::new(gated), open)
        }
    }

    impl Resolver for Gated {
        fn txt_answer(&self, name: &str) -> Result<Answer<String>, DnsError> {
            self.zone.txt_answer(name)
        }
        fn addresses(&self, name: &str) -> Result<Vec<std::net::IpAddr>, DnsError> {
            self.zone.addresses(name)
        }
        fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
            Ok(self.mx_answer(name)?.hosts())
        }
        fn mx_answer(&self, name: &str) -> Result<MxAnswer, DnsError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            // The test ending (the sender dropped) lets every lookup through.
            let _ = self.gate.lock_recovered().recv();
            self.zone.mx_answer(name)
        }
    }

    /// A clock the test moves, in whole seconds from [`T`].
    fn fake_clock() -> (Arc<AtomicU64>, impl Fn() -> f64 + Send + Sync + 'static) {
        let seconds = Arc::new(AtomicU64::new(0));
        let read = seconds.clone();
        (seconds, move || T + read.load(Ordering::SeqCst) as f64)
    }

    fn zone() -> SeededResolver {
        let mut zone = SeededResolver::default();
        zone.add_mx("example.org", "aspmx.l.google.com", 600);
        zone.add_mx("example.org", "alt1.aspmx.l.google.com", 300);
        zone
    }

    fn google_hosts() -> Option<Vec<String>> {
        Some(vec![
            "aspmx.l.google.com".into(),
            "alt1.aspmx.l.google.com".into(),
        ])
    }

    /// Long enough that a test waiting this long has hung: a bound, never
    /// a timing being asserted.
    const PATIENCE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_slow_lookup_is_not_waited_for_past_the_bound_and_fills_the_cache_later() {
        let (gated, open) = Gated::new(zone());
        let (_, clock) = fake_clock();
        let resolver = MxResolver::with_clock(gated.clone(), clock);
        // The resolver cannot answer before the gate opens, so this wait
        // ends by its bound whatever the machine's speed.
        assert_eq!(
            resolver
                .hosts("example.org", Duration::from_millis(1))
                .await,
            None
        );
        assert_eq!(resolver.cached("example.org"), None, "still in flight");
        open.send(()).unwrap();
        // This joins the lookup still in flight (or finds its answer).
        assert_eq!(
            resolver.hosts("example.org", PATIENCE).await,
            google_hosts()
        );
        assert_eq!(resolver.cached("Example.org."), google_hosts());
        assert_eq!(gated.lookups.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_asks_for_one_domain_make_one_query() {
        let (gated, open) = Gated::new(zone());
        let (_, clock) = fake_clock();
        let resolver = MxResolver::with_clock(gated.clone(), clock);
        fn is_send(_: &impl Send) {}
        is_send(&resolver.hosts("example.org", PATIENCE));
        let mut first = std::pin::pin!(resolver.hosts("example.org", PATIENCE));
        let mut second = std::pin::pin!(resolver.hosts("EXAMPLE.org", PATIENCE));
        // Each polled once: the first starts the lookup, the second finds
        // it in flight and waits for it; neither can end while the gate is
        // shut.
        let pending = std::future::poll_fn(|context| {
            Poll::Ready((
                first.as_mut().poll(context).is_pending(),
                second.as_mut().poll(context).is_pending(),
            ))
        })
        .await;
        assert_eq!(pending, (true, true));
        open.send(()).unwrap();
        assert_eq!(first.await, google_hosts());
        assert_eq!(second.await, google_hosts());
        assert_eq!(gated.lookups.load(Ordering::SeqCst), 1);
        assert_eq!(
            resolver.hosts("example.org", PATIENCE).await,
            google_hosts()
        );
        assert_eq!(gated.lookups.load(Ordering::SeqCst), 1, "then cached");
    }

    /// A resolver whose MX lookups fail, counting them.
    #[derive(Default)]
    struct Down {
        lookups: AtomicUsize,
    }

    impl Resolver for Down {
        fn txt_answer(&self, _: &str) -> Result<Answer<String>, DnsError> {
            Err(DnsError::Failed("down".into()))
        }
        fn addresses(&self, _: &str) -> Result<Vec<std::net::IpAddr>, DnsError> {
            Err(DnsError::Failed("down".into()))
        }
        fn mx(&self, _: &str) -> Result<Vec<String>, DnsError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Err(DnsError::Failed("down".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_lookup_is_unknown_until_asked_again_after_five_minutes() {
        let down = Arc::new(Down::default());
        let (seconds, clock) = fake_clock();
        let resolver = MxResolver::with_clock(down.clone(), clock);
        assert_eq!(resolver.hosts("example.org", PATIENCE).await, None);
        assert_eq!(down.lookups.load(Ordering::SeqCst), 1);
        seconds.store(299, Ordering::SeqCst);
        assert_eq!(resolver.hosts("example.org", PATIENCE).await, None);
        assert_eq!(
            down.lookups.load(Ordering::SeqCst),
            1,
            "not asked again yet"
        );
        seconds.store(300, Ordering::SeqCst);
        assert_eq!(resolver.hosts("example.org", PATIENCE).await, None);
        assert_eq!(down.lookups.load(Ordering::SeqCst), 2, "asked again");
        assert_eq!(resolver.hosts("[192.0.2.1]", PATIENCE).await, None);
        assert_eq!(down.lookups.load(Ordering::SeqCst), 2, "not a domain name");
    }

    /// A resolver that panics: the lookup still ends, as a failure.
    struct Panicking;

    impl Resolver for Panicking {
        fn txt_answer(&self, _: &str) -> Result<Answer<String>, DnsError> {
            unreachable!()
        }
        fn addresses(&self, _: &str) -> Result<Vec<std::net::IpAddr>, DnsError> {
            unreachable!()
        }
        fn mx(&self, _: &str) -> Result<Vec<String>, DnsError> {
            panic!("a resolver bug")
        }
    }

    #[tokio::test]
    async fn a_resolver_that_panics_ends_its_lookup_as_a_failure() {
        let (_, clock) = fake_clock();
        let resolver = MxResolver::with_clock(Arc::new(Panicking), clock);
        assert_eq!(resolver.hosts("example.org", PATIENCE).await, None);
        let state = resolver.shared.lock();
        assert!(state.pending.is_empty());
        assert!(!state.cache.in_flight("example.org"));
        assert!(!state.cache.should_ask("example.org", T + 299.0));
        assert!(state.cache.should_ask("example.org", T + 300.0));
    }

    /// A DNS server on loopback answering MX queries: `example.org` with
    /// two exchanges (TTLs 600 and 300), any other name with no MX and
    /// its zone's SOA (negative TTL 120).
    fn loopback_server() -> std::net::SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while let Ok((len, client)) = socket.recv_from(&mut buffer) {
                let query = &buffer[..len];
                let Some(name) = wire::parse(query).and_then(|asked| asked.question) else {
                    continue;
                };
                let response = match name.name.as_str() {
                    "example.org" => wire::mx_response(
                        query,
                        0,
                        &[
                            (20, "alt1.aspmx.l.google.com", 300),
                            (10, "aspmx.l.google.com", 600),
                        ],
                        None,
                    ),
                    _ => wire::mx_response(query, 0, &[], Some((900, 120))),
                };
                let _ = socket.send_to(&response, client);
            }
        });
        address
    }

    #[tokio::test]
    async fn the_ttl_on_the_wire_is_how_long_the_cache_keeps_the_answer() {
        let server = loopback_server();
        let (seconds, clock) = fake_clock();
        let dns = SystemResolver::at(server).with_timeout(PATIENCE);
        let resolver = MxResolver::with_clock(Arc::new(dns), clock);
        assert_eq!(
            resolver.hosts("Example.org", PATIENCE).await,
            google_hosts(),
            "most preferred first"
        );
        assert_eq!(resolver.hosts("nomx.example", PATIENCE).await, Some(vec![]));
        seconds.store(119, Ordering::SeqCst);
        assert_eq!(resolver.cached("nomx.example"), Some(vec![]));
        seconds.store(120, Ordering::SeqCst);
        assert_eq!(resolver.cached("nomx.example"), None, "the SOA's MINIMUM");
        seconds.store(299, Ordering::SeqCst);
        assert_eq!(resolver.cached("example.org"), google_hosts());
        seconds.store(300, Ordering::SeqCst);
        assert_eq!(resolver.cached("example.org"), None, "the lower TTL");
    }
}
