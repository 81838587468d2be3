//! The DMARC records of From: domains, for the alignment check after DATA:
//! the TXT record at `_dmarc.<domain>`, else at `_dmarc.<organisational
//! domain>` (RFC 7489 6.6.3), asked through the DNS client off the async
//! threads and cached.
//!
//! Invariants: a session never waits longer than [`LOOKUP_TIMEOUT`] for
//! DNS, and one domain has at most one lookup in flight (sessions asking
//! meanwhile wait for it). A relay must not refuse mail because DNS is slow
//! or down: a lookup that fails or is not answered in time counts as
//! relaxed alignment (DMARC's default, and the more lenient mode), is
//! counted and logged, and a failure is remembered for [`FAILURE_TTL`] so
//! that while DNS is down the sessions do not each wait out the timeout. A
//! lookup a session stopped waiting for goes on and fills the cache.

use crate::poison::LockRecovered;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::alignment::{Modes, organizational_domain};
use crate::dns::Resolver;

/// The longest a message's reply waits for a DMARC record.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a record, or the absence of one, is kept (the DNS client does
/// not report TTLs; DMARC records change rarely).
pub const RECORD_TTL: Duration = Duration::from_secs(3_600);
/// How long a failed lookup is kept before DNS is asked again.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);
/// A lookup in flight longer than this is given up on and asked again (the
/// DNS client bounds its own tries; this only guards against a lost task).
const STALE_LOOKUP: Duration = Duration::from_secs(60);
/// Domains remembered at most; the cache is emptied of old answers beyond.
const MAX_ENTRIES: usize = 10_000;

/// What DNS said about one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A DMARC record, with its alignment modes.
    Found(Modes),
    /// No DMARC record (relaxed alignment).
    None,
    /// DNS did not answer (judged as relaxed).
    Failed,
}

impl Record {
    /// The `result` label of `smtp_shaper_dmarc_lookups_total`.
    pub fn label(self) -> &'static str {
        match self {
            Record::Found(_) => "found",
            Record::None => "none",
            Record::Failed => "failed",
        }
    }

    /// The modes to judge alignment with.
    pub fn modes(self) -> Modes {
        match self {
            Record::Found(modes) => modes,
            Record::None | Record::Failed => Modes::default(),
        }
    }
}

/// The `result` labels of `smtp_shaper_dmarc_lookups_total`: what each
/// lookup sent to DNS found, and `timeout` for a session that stopped
/// waiting for one.
pub const LOOKUP_RESULTS: &[&str] = &["found", "none", "failed", "timeout"];

enum Entry {
    Known {
        record: Record,
        until: Instant,
    },
    Pending {
        since: Instant,
        answer: watch::Receiver<Option<Record>>,
    },
}

/// The cache, shared by every session of one configuration.
pub struct DmarcRecords {
    resolver: Arc<dyn Resolver + Send + Sync>,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl std::fmt::Debug for DmarcRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmarcRecords")
            .field("entries", &lock(&self.entries).len())
            .finish_non_exhaustive()
    }
}

fn lock(
    entries: &Mutex<HashMap<String, Entry>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    entries.lock_recovered()
}

impl DmarcRecords {
    pub fn new(resolver: Arc<dyn Resolver + Send + Sync>) -> DmarcRecords {
        DmarcRecords {
            resolver,
            entries: Arc::default(),
        }
    }

    /// The DMARC record of `domain` (From: domain), from the cache or DNS;
    /// `None` when it did not come within [`LOOKUP_TIMEOUT`]. `looked_up`
    /// is called with the result label of each lookup this call sends to
    /// DNS, when it ends (possibly after this call returned).
    pub async fn record(
        &self,
        domain: &str,
        looked_up: impl FnOnce(Record) + Send + 'static,
    ) -> Option<Record> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut answer = {
            let mut entries = lock(&self.entries);
            let now = Instant::now();
            match entries.get(&domain) {
                Some(Entry::Known { record, until }) if *until > now => return Some(*record),
                Some(Entry::Pending { since, answer }) if now - *since < STALE_LOOKUP => {
                    answer.clone()
                }
                _ => {
                    if entries.len() >= MAX_ENTRIES {
                        entries.retain(|_, entry| match entry {
                            Entry::Known { until, .. } => *until > now,
                            Entry::Pending { since, .. } => now - *since < STALE_LOOKUP,
                        });
                        if entries.len() >= MAX_ENTRIES {
                            entries.retain(|_, entry| matches!(entry, Entry::Pending { .. }));
                        }
                    }
                    let (send, answer) = watch::channel(None);
                    entries.insert(
                        domain.clone(),
                        Entry::Pending {
                            since: now,
                            answer: answer.clone(),
                        },
                    );
                    let resolver = self.resolver.clone();
                    let shared = self.entries.clone();
                    let domain = domain.clone();
                    tokio::task::spawn_blocking(move || {
                        let record = look_up(resolver.as_ref(), &domain);
                        let ttl = match record {
                            Record::Failed => FAILURE_TTL,
                            _ => RECORD_TTL,
                        };
                        lock(&shared).insert(
                            domain,
                            Entry::Known {
                                record,
                                until: Instant::now() + ttl,
                            },
                        );
                        let _ = send.send(Some(record));
                        looked_up(record);
                    });
                    answer
                }
            }
        };
        let waited = tokio::time::timeout(LOOKUP_TIMEOUT, answer.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(record)) => *record,
            // The lookup's task ended without an answer (it panicked): as if
            // DNS had failed; the stale entry is asked again later.
            Ok(Err(_)) => Some(Record::Failed),
            Err(_) => None,
        }
    }
}

/// Asks DNS for the record of `domain`, then of its organisational domain.
fn look_up(resolver: &dyn Resolver, domain: &str) -> Record {
    let organisational = organizational_domain(domain);
    let mut names = vec![domain.to_string()];
    if organisational != domain {
        names.push(organisational);
    }
    for name in names {
        match resolver.txt(&format!("_dmarc.{name}")) {
            Ok(records) => {
                if let Some(modes) = Modes::from_records(&records) {
                    return Record::Found(modes);
                }
            }
            Err(error) => {
                tracing::warn!(%domain, %error, "DMARC lookup failed; alignment is judged relaxed for this domain for a minute");
                return Record::Failed;
            }
        }
    }
    Record::None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{Answer, DnsError, SeededResolver};
    use crate::policy::alignment::Mode;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the questions, and answers after `delay` or fails.
    struct Slow {
        zone: SeededResolver,
        delay: Duration,
        fail: bool,
        asked: AtomicUsize,
    }

    impl Resolver for Slow {
        fn txt_answer(&self, name: &str) -> Result<Answer<String>, DnsError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            if self.fail {
                return Err(DnsError::Failed("resolver down".into()));
            }
            self.zone.txt_answer(name)
        }
        fn addresses(&self, _: &str) -> Result<Vec<std::net::IpAddr>, DnsError> {
            unreachable!("DMARC asks for TXT only")
        }
        fn mx(&self, _: &str) -> Result<Vec<String>, DnsError> {
            unreachable!("DMARC asks for TXT only")
        }
    }

    fn slow(delay_ms: u64, fail: bool) -> Arc<Slow> {
        let zone = SeededResolver::parse(
            "_dmarc.example.com TXT \"v=DMARC1; p=reject; aspf=s\"\n\
             _dmarc.news.example.net TXT \"v=DMARC1; p=none; adkim=s\"\n\
             _dmarc.example.net TXT \"v=DMARC1; p=reject\"\n",
        )
        .unwrap();
        Arc::new(Slow {
            zone,
            delay: Duration::from_millis(delay_ms),
            fail,
            asked: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn finds_the_record_of_the_domain_or_of_its_organisation_and_caches_it() {
        let resolver = slow(0, false);
        let records = DmarcRecords::new(resolver.clone());
        let strict_spf = Record::Found(Modes {
            spf: Mode::Strict,
            dkim: Mode::Relaxed,
        });
        assert_eq!(
            records.record("Mail.Example.COM", |_| {}).await,
            Some(strict_spf),
            "the organisational domain's record"
        );
        assert_eq!(resolver.asked.load(Ordering::SeqCst), 2);
        assert_eq!(
            records.record("mail.example.com.", |_| {}).await,
            Some(strict_spf)
        );
        assert_eq!(resolver.asked.load(Ordering::SeqCst), 2, "cached");
        assert_eq!(
            records.record("news.example.net", |_| {}).await,
            Some(Record::Found(Modes {
                spf: Mode::Relaxed,
                dkim: Mode::Strict
            })),
            "the domain's own record first"
        );
        assert_eq!(
            records.record("nothing.test", |_| {}).await,
            Some(Record::None)
        );
        assert_eq!(Record::None.modes(), Modes::default());
    }

    #[tokio::test]
    async fn a_slow_dns_never_holds_a_session_and_answers_later() {
        let resolver = slow(LOOKUP_TIMEOUT.as_millis() as u64 + 500, false);
        let records = Arc::new(DmarcRecords::new(resolver.clone()));
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        let started = std::time::Instant::now();
        let first = {
            let records = records.clone();
            let done = done.clone();
            tokio::spawn(async move {
                records
                    .record("example.com", move |record| {
                        let _ = done.send(record.label());
                    })
                    .await
            })
        };
        // A second session meanwhile waits for the same lookup.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = records
            .record("example.com", |_| panic!("no second lookup"))
            .await;
        assert_eq!(second, None, "timed out");
        assert_eq!(first.await.unwrap(), None);
        let waited = started.elapsed();
        assert!(
            waited >= LOOKUP_TIMEOUT && waited < LOOKUP_TIMEOUT + Duration::from_millis(400),
            "{waited:?}"
        );
        assert_eq!(
            resolver.asked.load(Ordering::SeqCst),
            1,
            "one lookup in flight"
        );
        assert_eq!(finished.recv().await, Some("found"));
        assert!(
            matches!(
                records.record("example.com", |_| {}).await,
                Some(Record::Found(_))
            ),
            "the late answer filled the cache"
        );
    }

    #[tokio::test]
    async fn a_failure_is_remembered_briefly_and_judged_relaxed() {
        let resolver = slow(0, true);
        let records = DmarcRecords::new(resolver.clone());
        let failed = records.record("example.com", |_| {}).await;
        assert_eq!(failed, Some(Record::Failed));
        assert_eq!(failed.unwrap().modes(), Modes::default());
        assert_eq!(records.record("example.com", |_| {}).await, failed);
        assert_eq!(
            resolver.asked.load(Ordering::SeqCst),
            1,
            "not asked again at once"
        );
    }
}
