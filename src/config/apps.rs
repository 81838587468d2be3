//! `[[apps]]`: who sends (login, networks, senders), with what class,
//! and what becomes of their held mail.

use super::*;

/// A bulk app's `unsubscribe`: what happens to a message without one-click
/// unsubscribe (RFC 8058), which Gmail, Yahoo and Outlook.com require of
/// bulk senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnsubscribeMode {
    /// Refused with 550 5.7.1.
    Require,
    /// Accepted, logged and counted.
    #[default]
    Warn,
    /// Not checked.
    Off,
}

/// One `[[apps]]` entry: an application sending through the proxy, matched
/// by client network and/or sender domain, with its share of the queue.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub networks: Vec<Network>,
    pub senders: Vec<SenderPattern>,
    /// Messages per round-robin turn (1 to 100).
    pub priority: u32,
    pub class: AppClass,
    /// One-click unsubscribe on bulk mail (a bulk app's setting only).
    pub unsubscribe: UnsubscribeMode,
    /// Send the envelope sender a delivery status notification (RFC 3464)
    /// for each recipient dead-lettered. Off by default: app senders are
    /// often no-reply addresses nobody reads, and a report to one the
    /// gateway refuses is only more traffic on the apps' gateway; turn it
    /// on for apps whose sender mailbox is read or processed (bounce
    /// handling that removes dead addresses).
    pub dsn: bool,
    /// The AUTH user name that identifies this app, with its password's
    /// argon2 hash (a PHC string, `smtp-shaper hash-password` makes one).
    pub user: Option<String>,
    pub password_hash: Option<String>,
    /// The longest wait in the queue this app's new mail takes before it
    /// is deferred (451) instead; `None` takes the gateway's.
    pub max_queue_delay: Option<Duration>,
    /// How long this app's mail may stay queued, held or retried, before
    /// it is dead-lettered (and reported with `dsn`); `None` takes the
    /// gateway's `max_age` (5 days, Postfix's `maximal_queue_lifetime`).
    pub expire_after: Option<Duration>,
    /// Held this long without being sent, the sender gets one delivery
    /// status notification with `Action: delayed` (Postfix's
    /// `delay_warning_time`); `None` (the default): none.
    pub notify_delay: Option<Duration>,
}

pub(super) fn read_app(mut s: Section<'_>) -> AppConfig {
    let unsubscribe_given = s.has("unsubscribe");
    let hash_given = s.has("password_hash");
    let app = AppConfig {
        name: s.required("name", NAME_FORMS, parse_name),
        networks: s.list("networks", &[], NETWORK_FORMS, |v| v.parse().ok()),
        senders: s.list("senders", &[], SENDER_FORMS, |v| v.parse().ok()),
        priority: s.integer("priority", 1, 1, 100),
        class: s.parsed(
            "class",
            "transactional",
            "\"transactional\" or \"bulk\"",
            |v| match v {
                "transactional" => Some(AppClass::Transactional),
                "bulk" => Some(AppClass::Bulk),
                _ => None,
            },
        ),
        unsubscribe: s.parsed(
            "unsubscribe",
            "warn",
            "\"require\", \"warn\" or \"off\"",
            |v| match v {
                "require" => Some(UnsubscribeMode::Require),
                "warn" => Some(UnsubscribeMode::Warn),
                "off" => Some(UnsubscribeMode::Off),
                _ => None,
            },
        ),
        dsn: s.boolean("dsn", false),
        user: s.optional(
            "user",
            "an AUTH user name without spaces or control characters",
            |v| {
                v.chars()
                    .all(|c| !c.is_control() && c != ' ')
                    .then(|| v.to_string())
            },
        ),
        password_hash: s.optional(
            "password_hash",
            "an argon2 hash such as \"$argon2id$v=19$m=19456,t=2,p=1$...\" (smtp-shaper hash-password)",
            |v| argon2::PasswordHash::new(v).ok().map(|_| v.to_string()),
        ),
        max_queue_delay: s.optional_duration("max_queue_delay"),
        expire_after: s.optional_duration("expire_after"),
        notify_delay: s.optional_duration("notify_delay"),
    };
    if app.notify_delay.is_some_and(|delay| delay.is_zero()) {
        s.problem("notify_delay", "must be longer than 0");
    }
    if let (Some(delay), Some(after)) = (app.notify_delay, app.expire_after)
        && delay >= after
    {
        s.problem(
            "notify_delay",
            "must be shorter than expire_after: mail held that long has expired already",
        );
    }
    if app.max_queue_delay.is_some_and(|delay| delay.is_zero()) {
        s.problem("max_queue_delay", "must be longer than 0");
    }
    if app.expire_after.is_some_and(|after| after.is_zero()) {
        s.problem("expire_after", "must be longer than 0");
    }
    if let (Some(delay), Some(after)) = (app.max_queue_delay, app.expire_after)
        && delay >= after
    {
        s.problem(
            "max_queue_delay",
            "must be shorter than expire_after: mail accepted to wait that long would expire first",
        );
    }
    if app.networks.is_empty() && app.senders.is_empty() && app.user.is_none() {
        s.problem(
            "networks",
            "an app needs a user, networks or senders to be recognised",
        );
    }
    if unsubscribe_given && app.class != AppClass::Bulk {
        s.problem(
            "unsubscribe",
            "applies to bulk mail only: set class = \"bulk\" too, or remove it",
        );
    }
    // A hash given but not valid is said once, above.
    if app.user.is_some() != hash_given {
        s.problem(
            "password_hash",
            "user and password_hash go together (an app that logs in needs both)",
        );
    }
    s.finish();
    app
}
