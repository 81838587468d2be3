//! `[gateways.shaping]`: the reader of one gateway's shaping (the rates,
//! budgets, caps and feedback, in the shaper's own types: see
//! `shaper::rules`), and the period the file writes its rates in.

use std::str::FromStr;

use super::*;

/// `[gateways.shaping]` of a gateway whose mail may stay queued `max_age`
/// (`None`: a table read alone, with no gateway to check it against),
/// and the period the file writes this gateway's rates in: that of the
/// first of initial_rate, min_rate, max_rate given, else the defaults'
/// `/min` (logs say rates the same way).
pub(super) fn read_shaping(
    mut s: Section<'_>,
    max_age: Option<Duration>,
) -> (ShapingConfig, units::Period) {
    let delay_given = s.has("max_queue_delay");
    let mut given = None;
    let mut rate = |s: &mut Section<'_>, key, default| {
        let present = s.has(key);
        let (rate, period) = s.parsed(key, default, units::RATE_FORMS, |v| {
            units::parse_rate_per(v).filter(|(rate, _)| *rate > 0.0)
        });
        if present {
            given = given.or(Some(period));
        }
        rate
    };
    let (initial_rate, initial_period, initial_volume) =
        horizon_rates(&mut s, "initial_rate", "60/min");
    let (min_rate, min_period, min_volume) = horizon_rates(&mut s, "min_rate", "10/min");
    let max_rate = rate(&mut s, "max_rate", "1000/min");
    let shaping = ShapingConfig {
        initial_rate,
        initial_volume,
        min_rate,
        min_volume,
        max_rate,
        headroom: s.number("headroom", 2.0, 1.0, 100.0),
        warmup: s.parsed("warmup", "2x/day", units::GROWTH_FORMS, units::parse_growth),
        burst: s.integer("burst", 5, 1, 100_000),
        max_queue_delay: s.duration("max_queue_delay", DEFAULT_MAX_QUEUE_DELAY),
        max_queued: s.integer("max_queued", 100_000, 1, 100_000_000),
        limits: s.list("limits", &[], LIMIT_FORMS, parse_limit),
        count: s.parsed(
            "count",
            "messages",
            "\"messages\" or \"recipients\"",
            |v| match v {
                "messages" => Some(CountUnit::Messages),
                "recipients" => Some(CountUnit::Recipients),
                _ => None,
            },
        ),
        backoff_factor: s.number("backoff_factor", 0.5, 0.01, 0.99),
        backoff_pause: s.duration("backoff_pause", "1m"),
        backoff_recovery: s.duration("backoff_recovery", "1h"),
        mode: s.parsed(
            "mode",
            "enforce",
            "\"enforce\" or \"observe\"",
            |v| match v {
                "enforce" => Some(ShapingMode::Enforce),
                "observe" => Some(ShapingMode::Observe),
                _ => None,
            },
        ),
        observe_until: s.optional_duration("observe_until"),
        baseline_half_life: s.duration("baseline_half_life", "7d"),
        receiver_min_volume: volume_rates(&mut s, "receiver_min_rate", DEFAULT_RECEIVER_MIN_RATE),
        receivers: Vec::new(),
    };
    if shaping.min_rate > shaping.max_rate {
        s.problem("min_rate", "must not be above max_rate");
    }
    for (index, horizon) in Horizon::ALL.into_iter().enumerate() {
        if shaping.initial_volume[index].is_some() && shaping.min_volume[index].is_none() {
            s.problem(
                "initial_rate",
                &format!(
                    "names a {} volume but min_rate has no {} floor to budget it (e.g. min_rate = [\"10/min\", \"60/h\", \"300/day\"])",
                    horizon.label(),
                    horizon.label()
                ),
            );
        }
    }
    let mut shaping = shaping;
    if shaping.observe_until.is_some() && shaping.mode != ShapingMode::Observe {
        s.problem(
            "observe_until",
            "only applies with mode = \"observe\" (observe until the history covers this span, then enforce)",
        );
    }
    if shaping.observe_until.is_some_and(|until| until.is_zero()) {
        s.problem("observe_until", "must be longer than 0");
    }
    if shaping.backoff_recovery.is_zero() {
        s.problem(
            "backoff_recovery",
            "must be above 0 (the time the ceiling takes to climb back after a throttling cut)",
        );
    }
    if shaping.max_queue_delay.is_zero() {
        s.problem("max_queue_delay", "must be longer than 0");
    } else if !delay_given {
        // Held mail must leave before it expires: a short max_age shortens
        // the default.
        if let Some(max_age) = max_age {
            shaping.max_queue_delay = shaping
                .max_queue_delay
                .min(max_age.mul_f64(HELD_SHARE_OF_LIFETIME));
        }
    } else if max_age.is_some_and(|max_age| shaping.max_queue_delay >= max_age) {
        s.problem(
            "max_queue_delay",
            "must be shorter than the gateway's max_age (5d by default), or mail accepted to wait that long expires first: shorten it, or raise max_age (e.g. max_age = \"8d\" for max_queue_delay = \"7d\")",
        );
    }
    if shaping.baseline_half_life < Duration::from_secs(3_600) {
        s.problem("baseline_half_life", "must be at least 1h");
    }
    s.finish();
    let rate_period = initial_period
        .or(min_period)
        .or(given)
        .unwrap_or(units::Period::Minute);
    (shaping, rate_period)
}

/// The lines of one `[gateways.shaping]` table, read alone: every key and
/// check as in a whole file, except those against the gateway's
/// `max_age` (a table alone has none; [`Config::parse`] checks them). For
/// tests, benchmarks and tools that shape without a whole file.
///
/// ```
/// use smtp_shaper::shaper::ShapingConfig;
///
/// let shaping: ShapingConfig = "min_rate = [\"10/min\", \"100/h\"]".parse().unwrap();
/// assert_eq!(shaping.min_volume, [Some(100), None]);
/// let error = "burst = 0".parse::<ShapingConfig>().unwrap_err();
/// assert!(error.problems[0].starts_with("line 1: burst:"));
/// ```
impl FromStr for ShapingConfig {
    type Err = ConfigError;

    fn from_str(lines: &str) -> Result<ShapingConfig, ConfigError> {
        let table: toml::Table = lines
            .parse()
            .map_err(|error: toml::de::Error| ConfigError {
                problems: vec![format!("not valid TOML: {}", error.message().trim())],
            })?;
        let mut problems = Problems::new(reader::Lines::of(lines));
        let (mut shaping, _) =
            read_shaping(Section::new(String::new(), table, &mut problems), None);
        shaping.receivers = ReceiversConfig::default().rules(&shaping);
        problems.into_result(shaping)
    }
}

/// The gateway's `max_queue_delay` by default: long enough to hold a
/// thousand-message burst whole on a gateway with no history and the
/// shipped floors (the last leaves after about two days, see the README's
/// "Admission: hold, don't hand back"), and shorter than `max_age` (5
/// days), so mail accepted on its projection leaves before it would expire.
pub const DEFAULT_MAX_QUEUE_DELAY: &str = "4d";

/// What `min_rate` and `initial_rate` accept.
const HORIZON_RATE_FORMS: &str = "a rate such as \"10/min\", or one rate per horizon: [\"10/min\", \"60/h\", \"300/day\"] (the minute in /s or /min, the hour in /h, the day in /day)";

/// One rate of a `min_rate`/`initial_rate` list: the horizon its period
/// names (`None`: the minute, as events per second), its value, and the
/// period it is written in.
fn parse_horizon_rate(text: &str) -> Option<(Option<Horizon>, f64, units::Period)> {
    let (per_second, period) = units::parse_rate_per(text).filter(|(rate, _)| *rate > 0.0)?;
    let horizon = match period {
        units::Period::Second | units::Period::Minute => {
            return Some((None, per_second, period));
        }
        units::Period::Hour => Horizon::Hour,
        units::Period::Day => Horizon::Day,
    };
    let count = (per_second * period.seconds() * 1e6).round() / 1e6;
    (count >= 1.0 && count.fract() == 0.0).then_some((Some(horizon), count, period))
}

/// `key` as one minute rate or a list with one rate per horizon (there the
/// period names the horizon: `/s` or `/min` the minute, `/h` the hour,
/// `/day` the day): the minute rate (`default` when the list names none),
/// the period it was written in (when given), and the whole counts of the
/// hour and day.
fn horizon_rates(
    s: &mut Section<'_>,
    key: &'static str,
    default: &str,
) -> (f64, Option<units::Period>, [Option<u64>; 2]) {
    if !s.is_list(key) {
        // One rate is the minute's, whatever its period (`"100/h"` has
        // always meant a minute floor of 100 an hour).
        let present = s.has(key);
        let (rate, period) = s.parsed(key, default, units::RATE_FORMS, |v| {
            units::parse_rate_per(v).filter(|(rate, _)| *rate > 0.0)
        });
        return (rate, present.then_some(period), [None; 2]);
    }
    let present = s.has(key);
    let rates = s.list(key, &[default], HORIZON_RATE_FORMS, parse_horizon_rate);
    let mut minute = None;
    let mut written = None;
    let mut volumes = [None; 2];
    for (horizon, value, period) in rates {
        if horizon.is_none() && present {
            written = Some(period);
        }
        let twice = match horizon {
            None => minute.replace(value).is_some(),
            Some(horizon) => volumes[horizon as usize].replace(value as u64).is_some(),
        };
        if twice {
            s.problem(
                key,
                &format!(
                    "names the {} twice; accepted: {HORIZON_RATE_FORMS}",
                    horizon.map_or("minute", Horizon::label)
                ),
            );
        }
    }
    let minute =
        minute.unwrap_or_else(|| parse_horizon_rate(default).expect("defaults are valid").1);
    (minute, written, volumes)
}

/// Each receiver's floors by default (`receiver_min_rate`): see the
/// README's "What each receiver sees" for why these.
pub const DEFAULT_RECEIVER_MIN_RATE: &[&str] = &["20/h", "100/day"];

/// [`DEFAULT_RECEIVER_MIN_RATE`] as counts per [`Horizon`].
pub fn default_receiver_min_volume() -> [Option<u64>; 2] {
    let mut volumes = [None; 2];
    for rate in DEFAULT_RECEIVER_MIN_RATE {
        if let Some((Some(horizon), count, _)) = parse_horizon_rate(rate) {
            volumes[horizon as usize] = Some(count as u64);
        }
    }
    volumes
}

/// What `receiver_min_rate` (and `[[receivers]] min_rate`) accept.
pub(super) const VOLUME_RATE_FORMS: &str = "a list of an hour and a day floor, e.g. [\"20/h\", \"100/day\"] (either may be left out; [] budgets no receiver)";

/// `key` as a list of whole counts per hour and per day (`["20/h",
/// "100/day"]`): the count per [`Horizon`], `None` where it names none.
pub(super) fn volume_rates(
    s: &mut Section<'_>,
    key: &'static str,
    default: &[&str],
) -> [Option<u64>; 2] {
    let rates = s.list(
        key,
        default,
        VOLUME_RATE_FORMS,
        |text| match parse_horizon_rate(text)? {
            (Some(horizon), count, _) => Some((horizon, count as u64)),
            (None, ..) => None,
        },
    );
    let mut volumes = [None; 2];
    for (horizon, count) in rates {
        if volumes[horizon as usize].replace(count).is_some() {
            s.problem(
                key,
                &format!(
                    "names the {} twice; accepted: {VOLUME_RATE_FORMS}",
                    horizon.label()
                ),
            );
        }
    }
    volumes
}

/// `30/min` as a cap of 30 per 60 s: a whole count per period.
fn parse_limit(text: &str) -> Option<Limit> {
    let (count, _) = text.trim().split_once('/')?;
    let count: u64 = count.trim().parse().ok().filter(|count| *count > 0)?;
    let per_second = units::parse_rate(text)?;
    Some(Limit {
        count,
        window: Duration::from_secs_f64(count as f64 / per_second),
    })
}
