//! Per-client abuse limits, what Postfix's anvil does: new connections and
//! failed AUTH attempts per client address, each a governor GCRA bucket
//! keyed by address (`server.client_connection_rate`,
//! `server.client_auth_failures`). And one bound for all clients together:
//! at most half the cores check passwords at once, so attackers spread over
//! many addresses cannot take every core with argon2 (a check waits up to
//! a second for its turn, then is answered 454).
//!
//! Every AUTH attempt runs argon2, so failures are what a client must not
//! be able to repeat at will. A failure is counted after the check; once a
//! client's allowance is used up, its AUTH is refused before argon2 runs
//! until the bucket has room again (governor cannot ask without taking, so
//! that moment is kept beside the buckets). Addresses whose buckets are full
//! again are forgotten by [`ClientLimits::prune`].

use crate::poison::LockRecovered;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::ServerConfig;
use crate::config::units::Allowance;

/// The limits of one listener, shared by its connections.
pub struct ClientLimits {
    /// The settings the buckets were made with (a reload may change them).
    pub settings: (Allowance, Allowance),
    connections: DefaultKeyedRateLimiter<IpAddr>,
    auth_failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Clients out of AUTH failures, until they may try again.
    auth_blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// Password checks running now, all clients and listeners together: one
/// for the process, so limits made afresh by a reload do not double it.
static PASSWORD_CHECKS: std::sync::LazyLock<Semaphore> =
    std::sync::LazyLock::new(|| Semaphore::new(password_check_slots()));

/// How long a password check waits for its turn before the client is told
/// to try again (a legitimate login takes some 20 ms).
const PASSWORD_CHECK_WAIT: Duration = Duration::from_secs(1);

/// Password checks at once: half the cores (at least one).
fn password_check_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

fn quota(allowance: Allowance) -> Quota {
    let count = NonZeroU32::new(allowance.count).unwrap_or(NonZeroU32::MIN);
    let interval = allowance.period / count.get();
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(count)
}

impl ClientLimits {
    pub fn new(server: &ServerConfig) -> ClientLimits {
        ClientLimits {
            settings: Self::settings_of(server),
            connections: DefaultKeyedRateLimiter::dashmap(quota(server.client_connection_rate)),
            auth_failures: DefaultKeyedRateLimiter::dashmap(quota(server.client_auth_failures)),
            auth_blocked: Mutex::default(),
        }
    }

    /// A turn to check a password (argon2), waiting up to a second for
    /// one; `None`: too many checks are running, the client tries again.
    pub async fn password_check(&self) -> Option<SemaphorePermit<'_>> {
        tokio::time::timeout(PASSWORD_CHECK_WAIT, PASSWORD_CHECKS.acquire())
            .await
            .ok()?
            .ok()
    }

    /// The settings `server` would make limits with.
    pub fn settings_of(server: &ServerConfig) -> (Allowance, Allowance) {
        (server.client_connection_rate, server.client_auth_failures)
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.auth_blocked.lock_recovered()
    }

    /// Counts a new connection from `ip`; false when it is one too many.
    pub fn connection(&self, ip: IpAddr) -> bool {
        self.connections.check_key(&ip).is_ok()
    }

    /// Whether `ip` may have its credentials checked now.
    pub fn auth_allowed(&self, ip: IpAddr) -> bool {
        let mut blocked = self.blocked();
        match blocked.get(&ip) {
            Some(until) if *until > Instant::now() => false,
            Some(_) => {
                blocked.remove(&ip);
                true
            }
            None => true,
        }
    }

    /// Counts a failed AUTH from `ip`; false when it was one too many (and
    /// the client's next attempts are refused until the bucket has room).
    pub fn auth_failed(&self, ip: IpAddr) -> bool {
        match self.auth_failures.check_key(&ip) {
            Ok(()) => true,
            Err(not_until) => {
                self.blocked().insert(ip, not_until.earliest_possible());
                false
            }
        }
    }

    /// Forgets the addresses whose buckets are full again, so the maps
    /// hold only clients seen recently.
    pub fn prune(&self) {
        self.connections.retain_recent();
        self.connections.shrink_to_fit();
        self.auth_failures.retain_recent();
        self.auth_failures.shrink_to_fit();
        let now = Instant::now();
        self.blocked().retain(|_, until| *until > now);
    }

    /// Addresses remembered (for the tests of pruning).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.connections.len() + self.auth_failures.len() + self.blocked().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(lines: &str) -> ClientLimits {
        let config = Config::parse(&format!(
            "[server]\n{lines}\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n"
        ))
        .unwrap();
        ClientLimits::new(&config.server)
    }

    #[test]
    fn each_address_has_its_own_allowance() {
        let limits = limits("client_connection_rate = \"3/h\"");
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first: Vec<bool> = (0..4).map(|_| limits.connection(a)).collect();
        assert_eq!(first, vec![true, true, true, false]);
        assert!(limits.connection(b));
    }

    #[test]
    fn used_up_auth_failures_refuse_before_the_check_and_pruning_keeps_them() {
        let limits = limits("client_auth_failures = \"2/h\"");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.auth_allowed(ip));
        assert!(limits.auth_failed(ip));
        assert!(limits.auth_failed(ip));
        assert!(limits.auth_allowed(ip), "two failures are allowed");
        assert!(!limits.auth_failed(ip));
        assert!(!limits.auth_allowed(ip));
        limits.prune();
        assert!(!limits.auth_allowed(ip), "still blocked after pruning");
        assert!(limits.remembered() > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn password_checks_are_bounded_for_all_clients_together() {
        // Two sets of limits (a reload made new ones) share the bound.
        let (limits, after_reload) = (limits(""), limits(""));
        let slots = password_check_slots();
        let mut held = Vec::new();
        for _ in 0..slots {
            held.push(limits.password_check().await.expect("a free slot"));
        }
        assert!(
            after_reload.password_check().await.is_none(),
            "all busy: refused after the wait"
        );
        held.pop();
        assert!(limits.password_check().await.is_some());
    }

    #[test]
    fn pruning_forgets_clients_whose_buckets_refilled() {
        let limits = limits("client_connection_rate = \"1000/s\"");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.connection(ip));
        std::thread::sleep(std::time::Duration::from_millis(5));
        limits.prune();
        assert_eq!(limits.remembered(), 0);
    }
}
