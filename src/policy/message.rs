//! The relay rules on the message itself, read from its header after DATA:
//! who it says it is from, and one-click unsubscribe on bulk mail.
//!
//! - From: and Sender: must be readable and as RFC 5322 3.6 counts them:
//!   exactly one From: field, at most one Sender: field naming one mailbox,
//!   and a Sender: when From: names several mailboxes (3.6.2). A message
//!   without From: is left to the receivers (nothing here to hold against
//!   an app's senders).
//! - Relay rule 2 on the header: every From: mailbox and the Sender: must
//!   be one the app may send as, by the same matcher as MAIL FROM
//!   ([`super::Apps::sender_allowed`]), so an app cannot put its users'
//!   domain in front of the apps' reputation.
//! - Bulk mail needs `List-Unsubscribe` with an https URI and
//!   `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058), which
//!   Gmail, Yahoo (2024) and Outlook.com (2025) require of bulk senders.
//!
//! Pure functions of the message bytes and the policy.

use super::Apps;
use crate::smtp::header::{self, Mailbox};

/// The From: mailboxes and the Sender: of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authors {
    /// Empty when the message has no From: field.
    pub from: Vec<Mailbox>,
    pub sender: Option<Mailbox>,
}

impl Authors {
    /// Reads From: and Sender:; the error says which RFC 5322 rule the
    /// header breaks, for a `554 5.6.0` reply.
    pub fn of(message: &[u8]) -> Result<Authors, String> {
        let from_fields = header::values(message, "From");
        let sender_fields = header::values(message, "Sender");
        if from_fields.len() > 1 {
            return Err(format!(
                "{} From: header fields; a message has exactly one (RFC 5322 3.6)",
                from_fields.len()
            ));
        }
        if sender_fields.len() > 1 {
            return Err(format!(
                "{} Sender: header fields; a message has at most one (RFC 5322 3.6)",
                sender_fields.len()
            ));
        }
        let from = match from_fields.first() {
            Some(value) => header::mailboxes(value).map_err(|why| {
                format!("the From: header field cannot be read: {why} (RFC 5322 3.6.2)")
            })?,
            None => Vec::new(),
        };
        let sender = match sender_fields.first() {
            Some(value) => {
                let mut list = header::mailboxes(value).map_err(|why| {
                    format!("the Sender: header field cannot be read: {why} (RFC 5322 3.6.2)")
                })?;
                if list.len() > 1 {
                    return Err(format!(
                        "Sender: names {} mailboxes; it names the one that sent the message (RFC 5322 3.6.2)",
                        list.len()
                    ));
                }
                list.pop()
            }
            None => None,
        };
        if from.len() > 1 && sender.is_none() {
            return Err(format!(
                "From: names {} mailboxes and there is no Sender: field naming the one that sent it (RFC 5322 3.6.2)",
                from.len()
            ));
        }
        Ok(Authors { from, sender })
    }

    /// The first author the app in `lane` may not send as (relay rule 2),
    /// with the name of its field.
    pub fn not_allowed(&self, apps: &Apps, lane: usize) -> Option<(&'static str, &Mailbox)> {
        self.from
            .iter()
            .map(|mailbox| ("From:", mailbox))
            .chain(self.sender.iter().map(|mailbox| ("Sender:", mailbox)))
            .find(|(_, mailbox)| !apps.sender_allowed(lane, &mailbox.address))
    }
}

/// What a bulk message lacks for one-click unsubscribe (RFC 8058), or
/// `None` when it has it.
pub fn unsubscribe_problem(message: &[u8]) -> Option<&'static str> {
    let lists = header::values(message, "List-Unsubscribe");
    let posts = header::values(message, "List-Unsubscribe-Post");
    let [list] = lists.as_slice() else {
        return Some(if lists.is_empty() {
            "no List-Unsubscribe header field"
        } else {
            "more than one List-Unsubscribe header field"
        });
    };
    // RFC 2369: a comma-separated list of URIs in angle brackets.
    let https = list.split(',').any(|uri| {
        uri.trim()
            .strip_prefix('<')
            .and_then(|uri| uri.strip_suffix('>'))
            .is_some_and(|uri| {
                uri.len() > "https://".len()
                    && uri
                        .get(..8)
                        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
            })
    });
    if !https {
        return Some("List-Unsubscribe names no <https://...> URI");
    }
    match posts.as_slice() {
        [post]
            if post
                .trim()
                .eq_ignore_ascii_case("List-Unsubscribe=One-Click") =>
        {
            None
        }
        [] => Some("no List-Unsubscribe-Post header field"),
        [_] => Some("List-Unsubscribe-Post is not List-Unsubscribe=One-Click"),
        _ => Some("more than one List-Unsubscribe-Post header field"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn authors(headers: &str) -> Result<Authors, String> {
        Authors::of(format!("{headers}\r\n\r\nbody\r\n").as_bytes())
    }

    #[test]
    fn counts_from_and_sender_as_rfc_5322_does() {
        let one = authors("From: Billing\r\n <billing@example.com>\r\nTo: x@y.test").unwrap();
        assert_eq!(one.from[0].address, "billing@example.com");
        assert_eq!(one.sender, None);
        let none = authors("Subject: no from").unwrap();
        assert!(none.from.is_empty());
        let several = authors("From: a@x.test, b@y.test\r\nSender: Robot <robot@x.test>").unwrap();
        assert_eq!(several.from.len(), 2);
        assert_eq!(several.sender.unwrap().address, "robot@x.test");
        for (headers, why) in [
            ("From: a@x.test\r\nfrom: b@x.test", "2 From: header fields"),
            ("From: a@x.test, b@y.test", "no Sender: field"),
            (
                "From: a@x.test\r\nSender: a@x.test\r\nSender: b@x.test",
                "2 Sender: header fields",
            ),
            (
                "From: a@x.test\r\nSender: a@x.test, b@x.test",
                "Sender: names 2",
            ),
            ("From: Someone", "From: header field cannot be read"),
            (
                "From: a@x.test\r\nSender: <>",
                "Sender: header field cannot be read",
            ),
        ] {
            let error = authors(headers).unwrap_err();
            assert!(error.contains(why), "{headers:?}: {error}");
        }
    }

    #[test]
    fn rule_2_holds_every_author_to_the_apps_senders() {
        let config = Config::parse(
            r#"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            [[apps]]
            name = "billing"
            networks = ["10.0.0.0/8"]
            senders = ["billing.example.com", "alerts@example.com"]
            "#,
        )
        .unwrap();
        let apps = Apps::new(&config.apps);
        let check = |headers: &str, lane: usize| {
            authors(headers)
                .unwrap()
                .not_allowed(&apps, lane)
                .map(|(field, mailbox)| format!("{field} {}", mailbox.address))
        };
        assert_eq!(check("From: Bills <x@Billing.Example.com>", 0), None);
        assert_eq!(check("From: \"x y\"@billing.example.com", 0), None);
        assert_eq!(check("From: ALERTS@example.com", 0), None);
        assert_eq!(
            check("From: Boss <ceo@example.com>", 0).as_deref(),
            Some("From: ceo@example.com")
        );
        assert_eq!(
            check("From: a@billing.example.com\r\nSender: ceo@example.com", 0).as_deref(),
            Some("Sender: ceo@example.com")
        );
        assert_eq!(
            check(
                "From: a@billing.example.com, ceo@example.com\r\nSender: a@billing.example.com",
                0
            )
            .as_deref(),
            Some("From: ceo@example.com")
        );
        assert_eq!(
            check("From: \"a@billing.example.com\"@corp.test", 0).as_deref(),
            Some("From: \"a@billing.example.com\"@corp.test"),
            "a quoted local part does not lend its domain"
        );
        assert_eq!(check("From: ceo@example.com", 1), None, "other");
    }

    #[test]
    fn bulk_mail_needs_one_click_unsubscribe() {
        let problem =
            |headers: &str| unsubscribe_problem(format!("{headers}\r\n\r\nx\r\n").as_bytes());
        let good = "List-Unsubscribe: <mailto:u@news.test?subject=stop>,\r\n <https://news.test/u?id=1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click";
        assert_eq!(problem(good), None);
        for (headers, why) in [
            ("Subject: x", "no List-Unsubscribe header"),
            (
                "List-Unsubscribe: <mailto:u@news.test>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click",
                "no <https://...> URI",
            ),
            (
                "List-Unsubscribe: https://news.test/u\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click",
                "no <https://...> URI",
            ),
            (
                "List-Unsubscribe: <http://news.test/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click",
                "no <https://...> URI",
            ),
            (
                "List-Unsubscribe: <https://news.test/u>",
                "no List-Unsubscribe-Post",
            ),
            (
                "List-Unsubscribe: <https://news.test/u>\r\nList-Unsubscribe-Post: yes",
                "is not List-Unsubscribe=One-Click",
            ),
            (
                "List-Unsubscribe: <https://a.test/u>\r\nList-Unsubscribe: <https://b.test/u>",
                "more than one List-Unsubscribe header",
            ),
        ] {
            assert!(
                problem(headers).is_some_and(|p| p.contains(why)),
                "{headers:?}: {:?}",
                problem(headers)
            );
        }
    }
}
