//! Why the inbound side refused something: the reason is chosen where the
//! refusal is decided (the listener, the session, the message rules) and
//! travels with the reply, so `smtp_shaper_rejections_total{reason}` never
//! depends on a reply's wording. Shaping deferrals (`451 4.7.1`, `452 4.5.3`
//! for the volume budget) and the 421 of a stopping service are not
//! refusals: they are plain replies and carry no reason.

use crate::smtp::Reply;

/// Why a client was refused; a fixed set, so it can label a metric.
/// Keep [`RefusalReason::Other`] last: the test of [`RefusalReason::ALL`]
/// relies on it to see that every variant is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The client's address is outside `server.allowed_networks` (554).
    ClientDenied,
    /// `max_connections` or `max_connections_per_client` reached (421).
    TooManyConnections,
    /// A command, parameter, address or AUTH response that does not parse.
    Syntax,
    /// A command out of order (503).
    Sequence,
    /// MAIL before AUTH with `require_auth`, or AUTH without TLS (530, 538).
    AuthRequired,
    /// Wrong credentials or a cancelled AUTH exchange.
    AuthFailed,
    /// Relay rule 2 on MAIL FROM: a sender outside the app's own.
    RelayDenied,
    /// Relay rule 3: a sender the gateway does not know.
    SenderRejected,
    /// More than `max_recipients` in one message (452 4.5.3).
    TooManyRecipients,
    /// Over `max_message_size` (552).
    TooBig,
    /// A body or header the relay will not pass on (bare CR/LF, NUL, long
    /// lines, malformed From:/Sender:), or a non-ASCII address without
    /// SMTPUTF8.
    BadContent,
    /// Too many Received: headers (554 5.4.6).
    MailLoop,
    /// The spool could not store the message (452 4.3.1).
    SpoolError,
    /// The client was silent or too slow (421 4.4.2).
    Timeout,
    /// `max_errors` or `max_junk_commands` used up: the session is closed.
    TooManyErrors,
    /// STARTTLS asked for where no certificate is configured (454).
    TlsUnavailable,
    /// `client_connection_rate` used up (421).
    ConnectionRate,
    /// `client_auth_failures` used up: AUTH refused unchecked (421).
    AuthFailureRate,
    /// Too many password checks running at once, all clients together:
    /// AUTH refused unchecked, try again (454 4.7.0).
    AuthBusy,
    /// Relay rule 2 on the From:/Sender: header fields.
    HeaderSender,
    /// The From: domain is not DMARC-aligned (`alignment = "enforce"`).
    Alignment,
    /// Bulk mail without one-click unsubscribe (`unsubscribe = "require"`).
    Unsubscribe,
    /// No refusal is decided with this reason today; the label stays
    /// exported because the dashboards and the README list it, and it is
    /// where a refusal not worth its own reason would go.
    Other,
}

impl RefusalReason {
    /// Every reason, in the order the README lists the labels.
    pub const ALL: [RefusalReason; 23] = [
        RefusalReason::ClientDenied,
        RefusalReason::TooManyConnections,
        RefusalReason::Syntax,
        RefusalReason::Sequence,
        RefusalReason::AuthRequired,
        RefusalReason::AuthFailed,
        RefusalReason::RelayDenied,
        RefusalReason::SenderRejected,
        RefusalReason::TooManyRecipients,
        RefusalReason::TooBig,
        RefusalReason::BadContent,
        RefusalReason::MailLoop,
        RefusalReason::SpoolError,
        RefusalReason::Timeout,
        RefusalReason::TooManyErrors,
        RefusalReason::TlsUnavailable,
        RefusalReason::ConnectionRate,
        RefusalReason::AuthFailureRate,
        RefusalReason::AuthBusy,
        RefusalReason::HeaderSender,
        RefusalReason::Alignment,
        RefusalReason::Unsubscribe,
        RefusalReason::Other,
    ];

    /// The `reason` label of `smtp_shaper_rejections_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::ClientDenied => "client_denied",
            RefusalReason::TooManyConnections => "too_many_connections",
            RefusalReason::Syntax => "syntax",
            RefusalReason::Sequence => "sequence",
            RefusalReason::AuthRequired => "auth_required",
            RefusalReason::AuthFailed => "auth_failed",
            RefusalReason::RelayDenied => "relay_denied",
            RefusalReason::SenderRejected => "sender_rejected",
            RefusalReason::TooManyRecipients => "too_many_recipients",
            RefusalReason::TooBig => "too_big",
            RefusalReason::BadContent => "bad_content",
            RefusalReason::MailLoop => "mail_loop",
            RefusalReason::SpoolError => "spool_error",
            RefusalReason::Timeout => "timeout",
            RefusalReason::TooManyErrors => "too_many_errors",
            RefusalReason::TlsUnavailable => "tls_unavailable",
            RefusalReason::ConnectionRate => "connection_rate",
            RefusalReason::AuthFailureRate => "auth_failure_rate",
            RefusalReason::AuthBusy => "auth_busy",
            RefusalReason::HeaderSender => "header_sender",
            RefusalReason::Alignment => "alignment",
            RefusalReason::Unsubscribe => "unsubscribe",
            RefusalReason::Other => "other",
        }
    }
}

/// An error reply and the reason it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub reply: Reply,
    /// Counted, not logged: logged already where it was decided, with
    /// fields the connection does not have (the message rules, a spool
    /// failure), or one of a run the session logged already (a client
    /// pipelining thousands of excess recipients gets one line).
    pub quiet: bool,
}

impl Refusal {
    /// A one-line refusal; `text` starts with the enhanced status.
    pub fn new(reason: RefusalReason, code: u16, text: impl Into<String>) -> Refusal {
        Refusal::with_reply(reason, Reply::new(code, text))
    }

    /// A refusal with `reply` as it is.
    pub fn with_reply(reason: RefusalReason, reply: Reply) -> Refusal {
        Refusal {
            reason,
            reply,
            quiet: false,
        }
    }

    /// The same refusal, counted but not logged.
    pub fn quiet(self) -> Refusal {
        Refusal {
            quiet: true,
            ..self
        }
    }

    /// A command out of order: 503 with `text` (which starts `5.5.1`).
    pub fn out_of_sequence(text: &'static str) -> Refusal {
        Refusal::new(RefusalReason::Sequence, 503, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_once_in_declaration_order() {
        // Discriminants count from 0 in declaration order, so with `Other`
        // last a variant missing from ALL (or listed twice) shows here.
        assert_eq!(RefusalReason::ALL.len(), RefusalReason::Other as usize + 1);
        for (index, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{reason:?}");
        }
    }

    #[test]
    fn labels_are_distinct_metric_label_values() {
        let mut labels: Vec<&str> = RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(labels.iter().all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        }));
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
    }
}
