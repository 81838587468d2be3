//! What gateway replies say about our sending, beyond the message itself.
//!
//! - Throttling ("you are sending too much") cuts the ceiling. Permanent
//!   (5xx) replies never are; a transient reply is one when its code or
//!   enhanced status is about load or reputation, or its text asks to come
//!   back later.
//! - A quota used up (Exchange Online's `554 5.2.0 ...QuotaExceeded...`,
//!   or `550 5.7.233`: the tenant's external recipient rate limit, a
//!   rolling day cap over every mailbox and app of the tenant) is a cap the
//!   gateway counted: the message is held, not bounced, and the gateway
//!   rests until its window resets. The code is permanent, the condition is
//!   not: bouncing would lose mail that goes through tomorrow.
//! - Reputation trouble (Exchange's `5.7.705`, `5.7.708`, `5.7.750`: the
//!   tenant or IP is blocked) is for operators: the reply stands, and it is
//!   logged as such.

use crate::smtp::Reply;

/// Phrases gateways use when they throttle (matched case-insensitively).
const THROTTLING_PHRASES: &[&str] = &[
    "try again later",
    "try later",
    "rate limit",
    "throttl",
    "slow down",
    "too many connections",
    "too many messages",
    "sending too fast",
    "higher volume",
];

/// What a reply tells about the gateway's view of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Throttling,
    QuotaExhausted,
    Reputation,
}

/// Enhanced status codes of day caps that a later retry gets past:
/// Exchange Online's tenant external recipient rate limit (TERRL).
const QUOTA_CODES: &[&str] = &["5.7.233"];

/// Enhanced status codes of Exchange Online's sender blocks: `5.7.705` the
/// tenant exceeded its threshold, `5.7.708` the IP is not accepted,
/// `5.7.750` the sender domain is not registered (accepted) in the tenant.
const REPUTATION_CODES: &[&str] = &["5.7.705", "5.7.708", "5.7.750"];

/// The signal in `reply`, if any (see the module notes).
///
/// ```
/// use smtp_shaper::shaper::feedback::{Signal, classify};
/// use smtp_shaper::smtp::Reply;
///
/// let quota = Reply::new(554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException");
/// assert_eq!(classify(&quota), Some(Signal::QuotaExhausted));
/// let blocked = Reply::new(550, "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP");
/// assert_eq!(classify(&blocked), Some(Signal::Reputation));
/// ```
pub fn classify(reply: &Reply) -> Option<Signal> {
    let text = reply.lines.join(" ");
    if (reply.code == 554 && text.starts_with("5.2.0"))
        || text.contains("QuotaExceeded")
        || QUOTA_CODES.iter().any(|code| text.starts_with(code))
    {
        return Some(Signal::QuotaExhausted);
    }
    if REPUTATION_CODES.iter().any(|code| text.starts_with(code)) {
        return Some(Signal::Reputation);
    }
    is_throttling(reply).then_some(Signal::Throttling)
}

/// True when `reply` asks us to send less (see the module notes).
///
/// ```
/// use smtp_shaper::shaper::is_throttling;
/// use smtp_shaper::smtp::Reply;
///
/// let exchange = Reply::new(451, "4.7.500 Server busy. Please try again later from [192.0.2.1]. (AS770)");
/// assert!(is_throttling(&exchange));
/// assert!(!is_throttling(&Reply::new(550, "5.7.1 Service unavailable; try again later")));
/// assert!(!is_throttling(&Reply::new(450, "4.2.1 Mailbox busy")));
/// ```
pub fn is_throttling(reply: &Reply) -> bool {
    match reply.code {
        421 | 432 => true,
        400..=499 => {
            let text = reply.lines.join(" ").to_ascii_lowercase();
            text.starts_with("4.7.")
                || text.starts_with("4.3.2")
                || THROTTLING_PHRASES
                    .iter()
                    .any(|phrase| text.contains(phrase))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_gateway_replies() {
        let throttling = [
            (421, "4.7.0 Too many connections, try again later"),
            (
                432,
                "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
            ),
            (
                451,
                "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation",
            ),
            (450, "4.2.0 Rate limit exceeded"),
            (451, "Throttled: slow down"),
            (452, "4.3.2 Too many messages in this session"),
        ];
        for (code, text) in throttling {
            assert!(is_throttling(&Reply::new(code, text)), "{code} {text}");
        }
        let not_throttling = [
            (250, "2.0.0 Ok"),
            (451, "4.3.0 Temporary lookup failure"),
            (452, "4.5.3 Too many recipients"),
            (450, "4.1.1 Mailbox unavailable"),
            (
                554,
                "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            ),
            (
                550,
                "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP",
            ),
        ];
        for (code, text) in not_throttling {
            assert!(!is_throttling(&Reply::new(code, text)), "{code} {text}");
        }
        assert_eq!(classify(&Reply::new(550, "5.1.1 User unknown")), None);
        assert_eq!(
            classify(&Reply::new(
                432,
                "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
            )),
            Some(Signal::Throttling)
        );
        let exchange = [
            (
                550,
                "5.7.705 Access denied, tenant has exceeded threshold",
                Signal::Reputation,
            ),
            (
                550,
                "5.7.750 Service unavailable. Client blocked from sending from unregistered domains",
                Signal::Reputation,
            ),
            (
                550,
                "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP",
                Signal::Reputation,
            ),
            (
                550,
                "5.7.233 Your message can't be sent because your tenant has exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)",
                Signal::QuotaExhausted,
            ),
            (
                554,
                "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                Signal::QuotaExhausted,
            ),
        ];
        for (code, text, signal) in exchange {
            assert_eq!(classify(&Reply::new(code, text)), Some(signal), "{text}");
        }
        // A 5.7.233 is not a throttling signal (no ceiling cut): the day
        // cap is a quota, not a rate.
        assert!(!is_throttling(&Reply::new(
            550,
            "5.7.233 tenant external recipient rate limit"
        )));
    }
}
