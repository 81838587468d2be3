//! Relay rule 3, a valid existing sender: what the gateways said when asked
//! whether each configured sender address exists (see
//! `outbound::verify`). A sender the gateway does not know is refused at
//! MAIL; one never asked, or whose check failed for a transient reason, is
//! let through (the check must not turn a gateway hiccup into bounces).

use crate::poison::LockRecovered;
use std::collections::HashMap;
use std::sync::Mutex;

/// What a gateway answered about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The gateway accepts mail for it (2xx to RCPT).
    Exists,
    /// The gateway refused it permanently (5xx to RCPT), with its reply.
    Missing(String),
}

/// The latest verdict per sender address (lower case), shared by the
/// verifier that fills it and the sessions that read it.
#[derive(Debug, Default)]
pub struct SenderChecks {
    verdicts: Mutex<HashMap<String, (Verdict, u64)>>,
}

impl SenderChecks {
    /// Records `verdict` for `address` at `unix_seconds`.
    pub fn record(&self, address: &str, verdict: Verdict, unix_seconds: u64) {
        self.lock()
            .insert(address.to_ascii_lowercase(), (verdict, unix_seconds));
    }

    /// The gateway's refusal when it said `sender` does not exist.
    pub fn missing(&self, sender: &str) -> Option<String> {
        match self.lock().get(&sender.to_ascii_lowercase()) {
            Some((Verdict::Missing(reply), _)) => Some(reply.clone()),
            _ => None,
        }
    }

    /// Every verdict with the time it was given, sorted by address.
    pub fn all(&self) -> Vec<(String, Verdict, u64)> {
        let mut all: Vec<_> = self
            .lock()
            .iter()
            .map(|(address, (verdict, at))| (address.clone(), verdict.clone(), *at))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Verdict, u64)>> {
        self.verdicts.lock_recovered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_permanent_refusal_counts_as_missing() {
        let checks = SenderChecks::default();
        assert_eq!(checks.missing("a@example.com"), None, "never asked");
        checks.record("A@example.com", Verdict::Exists, 1);
        checks.record(
            "ghost@example.com",
            Verdict::Missing("550 5.1.1 unknown".into()),
            2,
        );
        assert_eq!(checks.missing("a@EXAMPLE.com"), None);
        assert_eq!(
            checks.missing("Ghost@example.com").as_deref(),
            Some("550 5.1.1 unknown")
        );
        assert_eq!(checks.all().len(), 2);
    }
}
