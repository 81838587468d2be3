//! `[spool]`: where accepted mail waits, and how it is cut into segments.

use super::*;

/// `[spool]`: where accepted mail waits for delivery.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub segment_size: u64,
    /// Envelopes each gateway's queue keeps in memory; past it, new
    /// messages wait as a reference to their spool record (`outbound::queue`).
    pub active_limit: usize,
}

pub(super) fn read_spool(mut s: Section<'_>) -> SpoolConfig {
    let spool = SpoolConfig {
        dir: s.parsed("dir", "smtp-shaper-spool", "a directory path", |v| {
            (!v.is_empty()).then(|| PathBuf::from(v))
        }),
        segment_size: s.parsed(
            "segment_size",
            "64MiB",
            units::SIZE_FORMS,
            units::parse_size,
        ),
        active_limit: s.integer("active_limit", 10_000, 1, 10_000_000),
    };
    if spool.segment_size < 64 * 1024 {
        s.problem("segment_size", "must be at least 64KiB");
    }
    s.finish();
    spool
}
