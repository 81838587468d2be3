//! Which application sent a message, and what it may send (relay rule 2:
//! each app sends from its own sender addresses or domain).
//!
//! An app is recognised, in this order: by the AUTH user it logged in as
//! (`user`, `password_hash`); else by the client's network (the first app
//! without a user whose `networks` contain it); else by the sender (the
//! first app with neither user nor networks whose `senders` match). Mail no
//! app claims belongs to a last, implicit app named `other`. For an app
//! recognised by login or network, `senders` is the list of senders it may
//! use: anything else is refused (see the session). The answer picks the
//! message's lane in the fair queue; a message recovered after a restart is
//! placed again by network or sender (a login is not stored).

use std::net::IpAddr;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};

use crate::config::{AppConfig, UnsubscribeMode};
use crate::config::{Network, SenderPattern};
use crate::shaper::AppClass;
use crate::shaper::Lane;

/// What becomes of an app's mail that is held long.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    /// The app's name.
    pub app: String,
    /// Queued longer: dead-lettered (`None`: the gateway's `max_age`).
    pub expire_after: Option<Duration>,
    /// Held this long without being sent: the sender is told once
    /// (`Action: delayed`); `None`: never.
    pub notify_delay: Option<Duration>,
}

/// The lane of mail no `[[apps]]` entry matches.
pub const OTHER_APP: &str = "other";

/// What an unknown user's password is checked against: an argon2 hash with
/// the default parameters (those of `hash-password`) of a random password,
/// made once, so a wrong user costs what a wrong password costs.
static UNKNOWN_USER_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut random = [0u8; 32];
    fastrand::fill(&mut random);
    let salt = SaltString::encode_b64(&random[..16]).expect("16 bytes make a salt");
    Argon2::default()
        .hash_password(&random[16..], &salt)
        .map(|hash| hash.to_string())
        .expect("argon2 hashes 16 bytes with the default parameters")
});

/// The configured apps, in order, then `other`.
#[derive(Debug, Clone)]
pub struct Apps {
    apps: Vec<AppConfig>,
}

impl Apps {
    pub fn new(apps: &[AppConfig]) -> Apps {
        Apps {
            apps: apps.to_vec(),
        }
    }

    /// The app (lane index) of mail from `sender` sent by `client`, without
    /// a login.
    pub fn lane(&self, client: IpAddr, sender: &str) -> usize {
        let by_network = self
            .apps
            .iter()
            .position(|app| app.user.is_none() && Network::any_contains(&app.networks, client));
        let by_sender = || {
            self.apps.iter().position(|app| {
                app.user.is_none()
                    && app.networks.is_empty()
                    && SenderPattern::any_matches(&app.senders, sender)
            })
        };
        by_network.or_else(by_sender).unwrap_or(self.apps.len())
    }

    /// The app that logs in as `user` with `password`, if the password
    /// verifies against its hash. CPU-heavy on purpose (argon2): call it
    /// off the async threads. An unknown user is checked against a hash of
    /// nothing, so it takes as long as a known one with a wrong password
    /// (the time must not tell which users exist).
    pub fn login(&self, user: &str, password: &[u8]) -> Option<usize> {
        let (lane, checked) = self.hash_to_check(user);
        let hash = PasswordHash::new(checked).ok()?;
        let verified = Argon2::default().verify_password(password, &hash).is_ok();
        lane.filter(|_| verified)
    }

    /// The app that logs in as `user`, and the hash its password is checked
    /// against: the app's, or for no such app [`UNKNOWN_USER_HASH`].
    fn hash_to_check(&self, user: &str) -> (Option<usize>, &str) {
        let lane = self
            .apps
            .iter()
            .position(|app| app.user.as_deref() == Some(user) && app.password_hash.is_some());
        match lane.and_then(|lane| self.apps[lane].password_hash.as_deref()) {
            Some(hash) => (lane, hash),
            None => (None, &UNKNOWN_USER_HASH),
        }
    }

    /// The app with a login whose `senders` hold `sender`: mail from it
    /// must come with that login (logging in would protect nothing if
    /// anyone could send as the app without).
    pub fn login_owner(&self, sender: &str) -> Option<usize> {
        self.apps
            .iter()
            .position(|app| app.user.is_some() && SenderPattern::any_matches(&app.senders, sender))
    }

    /// True when some app logs in (so AUTH is worth offering).
    pub fn has_logins(&self) -> bool {
        self.apps.iter().any(|app| app.user.is_some())
    }

    /// True when the app in `lane` lists `sender` among its own `senders`
    /// (an app with no list owns no sender).
    pub fn owns(&self, lane: usize, sender: &str) -> bool {
        self.apps.get(lane).is_some_and(|app| {
            !app.senders.is_empty() && SenderPattern::any_matches(&app.senders, sender)
        })
    }

    /// May the app in `lane` send as `sender`? Apps recognised by their
    /// senders, apps with no `senders` list and `other` may send as anyone.
    pub fn sender_allowed(&self, lane: usize, sender: &str) -> bool {
        self.apps.get(lane).is_none_or(|app| {
            app.senders.is_empty() || SenderPattern::any_matches(&app.senders, sender)
        })
    }

    /// How one-click unsubscribe is checked on the mail of `lane`: its
    /// `unsubscribe` for a bulk app, `Off` for any other.
    pub fn unsubscribe(&self, lane: usize) -> UnsubscribeMode {
        self.apps
            .get(lane)
            .filter(|app| app.class == AppClass::Bulk)
            .map_or(UnsubscribeMode::Off, |app| app.unsubscribe)
    }

    /// Whether mail of `lane` asks for delivery status notifications (its
    /// app's `dsn`; never for `other`).
    pub fn dsn(&self, lane: usize) -> bool {
        self.apps.get(lane).is_some_and(|app| app.dsn)
    }

    /// The configured apps (`other`, the implicit last lane, not counted).
    pub fn configured(&self) -> usize {
        self.apps.len()
    }

    /// The lane of `other`: where the notifications smtp-shaper writes
    /// travel (transactional, never bulk; see `outbound::worker`).
    pub fn other_lane(&self) -> usize {
        self.apps.len()
    }

    /// What becomes of each lane's mail held long, `other` last (which
    /// takes the gateway's `max_age` and sends no delay notices).
    pub fn holding(&self) -> Vec<Holding> {
        self.apps
            .iter()
            .map(|app| Holding {
                app: app.name.clone(),
                expire_after: app.expire_after,
                notify_delay: app.notify_delay,
            })
            .chain([Holding {
                app: OTHER_APP.to_string(),
                ..Holding::default()
            }])
            .collect()
    }

    /// Every sender address (not domain) the apps list, for rule 3 checks.
    pub fn sender_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self
            .apps
            .iter()
            .flat_map(|app| &app.senders)
            .filter_map(|pattern| match pattern {
                SenderPattern::Address(address) => Some(address.clone()),
                _ => None,
            })
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// The name of `lane`.
    pub fn name(&self, lane: usize) -> &str {
        self.apps
            .get(lane)
            .map_or(OTHER_APP, |app| app.name.as_str())
    }

    /// The lane of the app named `name` (`other`'s for an unknown name).
    pub fn lane_named(&self, name: &str) -> usize {
        self.apps
            .iter()
            .position(|app| app.name == name)
            .unwrap_or(self.apps.len())
    }

    /// Lane names, `other` last.
    pub fn names(&self) -> Vec<String> {
        (0..=self.apps.len())
            .map(|lane| self.name(lane).to_string())
            .collect()
    }

    /// The lanes of the fair queue: each app's `priority` and `class`;
    /// `other` has priority 1, is transactional and waits as long as the
    /// gateway's `max_queue_delay`.
    pub fn lanes(&self) -> Vec<Lane> {
        self.apps
            .iter()
            .map(|app| Lane {
                weight: app.priority,
                class: app.class,
                max_queue_delay: app.max_queue_delay,
                expire_after: app.expire_after,
            })
            .chain([Lane {
                weight: 1,
                class: AppClass::Transactional,
                max_queue_delay: None,
                expire_after: None,
            }])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// An argon2id hash of `password` with the smallest parameters (fast in
    /// debug builds).
    fn quick_hash(password: &str) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(
                password.as_bytes(),
                &SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap(),
            )
            .unwrap()
            .to_string()
    }

    fn apps() -> Apps {
        let hash = quick_hash("s3cret");
        let config = Config::parse(&format!(
            r#"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            [[apps]]
            name = "billing"
            networks = ["10.1.0.0/16"]
            senders = ["billing.example.com"]
            [[apps]]
            name = "auth"
            senders = ["*.example.com"]
            priority = 2
            [[apps]]
            name = "batch"
            networks = ["10.0.0.0/8"]
            class = "bulk"
            [[apps]]
            name = "portal"
            user = "portal"
            password_hash = "{hash}"
            senders = ["noreply@portal.example.org"]
            "#
        ))
        .unwrap();
        Apps::new(&config.apps)
    }

    #[test]
    fn recognised_by_network_then_sender_and_the_rest_is_other() {
        let apps = apps();
        let ip = |text: &str| text.parse().unwrap();
        assert_eq!(apps.lane(ip("10.1.2.3"), "x@billing.example.com"), 0);
        assert_eq!(apps.lane(ip("10.1.2.3"), "x@other.test"), 0, "by network");
        assert_eq!(apps.lane(ip("10.2.2.3"), "x@billing.example.com"), 2);
        assert_eq!(apps.lane(ip("192.0.2.1"), "x@app.example.com"), 1);
        assert_eq!(apps.lane(ip("192.0.2.1"), "noreply@portal.example.org"), 4);
        assert_eq!(
            apps.names(),
            vec!["billing", "auth", "batch", "portal", "other"]
        );
        let lanes = apps.lanes();
        assert_eq!(
            lanes.iter().map(|lane| lane.weight).collect::<Vec<_>>(),
            vec![1, 2, 1, 1, 1]
        );
        assert_eq!(
            lanes.iter().map(|lane| lane.class).collect::<Vec<_>>(),
            [
                AppClass::Transactional,
                AppClass::Transactional,
                AppClass::Bulk,
                AppClass::Transactional,
                AppClass::Transactional
            ]
        );
    }

    #[test]
    fn rule_2_each_app_sends_from_its_own_senders() {
        let apps = apps();
        assert!(apps.sender_allowed(0, "invoices@billing.example.com"));
        assert!(!apps.sender_allowed(0, "ceo@example.com"));
        assert!(apps.sender_allowed(2, "anyone@anywhere.test"), "no list");
        assert!(apps.sender_allowed(3, "NoReply@portal.example.org"));
        assert!(!apps.sender_allowed(3, "x@portal.example.org"));
        assert!(apps.sender_allowed(4, "x@y.test"), "other");
    }

    #[test]
    fn login_verifies_the_argon2_hash() {
        let apps = apps();
        assert!(apps.has_logins());
        assert_eq!(apps.login("portal", b"s3cret"), Some(3));
        assert_eq!(apps.login("portal", b"wrong"), None);
        assert_eq!(apps.login("billing", b"s3cret"), None, "no user billing");
    }

    #[test]
    fn an_unknown_user_costs_what_a_wrong_password_costs() {
        let apps = apps();
        let (lane, checked) = apps.hash_to_check("nobody");
        assert_eq!(lane, None);
        // A real argon2id hash with hash-password's (the default) cost.
        let hash = PasswordHash::new(checked).unwrap();
        let params = argon2::Params::try_from(&hash).unwrap();
        let default = argon2::Params::default();
        assert_eq!(hash.algorithm.as_str(), "argon2id");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
        assert_eq!(apps.login("nobody", b""), None);
        assert_eq!(apps.login("nobody", b"s3cret"), None);
    }

    #[test]
    fn a_sender_of_an_app_with_a_login_belongs_to_that_login() {
        let apps = apps();
        assert_eq!(apps.login_owner("NoReply@portal.example.org"), Some(3));
        assert_eq!(apps.login_owner("x@billing.example.com"), None);
        assert_eq!(apps.login_owner("x@portal.example.org"), None);
    }
}
