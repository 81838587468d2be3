//! Human units in the configuration: sizes (`25MiB`), durations (`15m`),
//! rates (`60/min`), allowances (`10/min`, a whole count per period) and
//! growth factors (`2x/day`).
//!
//! Pure parsing with messages that name the accepted forms, because an operator
//! reads these errors, not a developer.

use std::time::Duration;

/// What a size may look like; printed in every size error.
pub const SIZE_FORMS: &str = "a whole number with a unit B, KiB, MiB or GiB, e.g. \"25MiB\"";

/// What a duration may look like; printed in every duration error.
pub const DURATION_FORMS: &str =
    "a whole number with a unit ms, s, m, h or d, e.g. \"30s\", \"15m\", \"5d\"";

/// What a rate may look like; printed in every rate error.
pub const RATE_FORMS: &str =
    "a number of messages per s, min, h or day, e.g. \"60/min\", \"0.5/s\", \"10000/day\"";

/// What an allowance may look like; printed in every allowance error.
pub const ALLOWANCE_FORMS: &str =
    "a whole number from 1 to 1000000 per s, min, h or day, e.g. \"600/min\", \"10/min\"";

/// At most `count` events per `period`, as many as `count` of them at once
/// (a bucket of that depth refilled evenly over the period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub count: u32,
    pub period: Duration,
}

/// Parses `600/min`, `10/h` into an allowance (a whole count, at least 1).
pub fn parse_allowance(text: &str) -> Option<Allowance> {
    let (count, period) = text.trim().split_once('/')?;
    let count: u32 = count.trim().parse().ok()?;
    (1..=1_000_000).contains(&count).then_some(())?;
    Some(Allowance {
        count,
        period: Duration::from_secs_f64(Period::parse(period.trim())?.seconds()),
    })
}

/// What a growth factor may look like; printed in every growth error.
pub const GROWTH_FORMS: &str =
    "a factor above 1 per s, min, h or day, e.g. \"2x/day\", \"1.5x/day\"";

/// Parses `60/min`, `0.5/s`, `100/h`, `10000/day` into events per second.
pub fn parse_rate(text: &str) -> Option<f64> {
    parse_rate_per(text).map(|(rate, _)| rate)
}

/// Like [`parse_rate`], with the period the text counts over, so the rate
/// can be written back the way the operator wrote it.
pub fn parse_rate_per(text: &str) -> Option<(f64, Period)> {
    let (count, period) = text.trim().split_once('/')?;
    let count: f64 = count.trim().parse().ok()?;
    (count.is_finite() && count >= 0.0).then_some(())?;
    let period = Period::parse(period.trim())?;
    Some((count / period.seconds(), period))
}

/// Parses `2x/day` into the factor per day (here 2.0); `1.1x/h` becomes
/// 1.1^24 per day.
pub fn parse_growth(text: &str) -> Option<f64> {
    let (factor, period) = text.trim().split_once('/')?;
    let factor: f64 = factor.trim().strip_suffix('x')?.parse().ok()?;
    (factor.is_finite() && factor > 1.0).then_some(())?;
    let per_day = factor.powf(86_400.0 / Period::parse(period.trim())?.seconds());
    per_day.is_finite().then_some(per_day)
}

/// The period of a rate: `s`, `min`, `h` or `day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
}

impl Period {
    fn parse(text: &str) -> Option<Period> {
        Some(match text {
            "s" => Period::Second,
            "min" => Period::Minute,
            "h" => Period::Hour,
            "day" => Period::Day,
            _ => return None,
        })
    }

    pub fn seconds(self) -> f64 {
        match self {
            Period::Second => 1.0,
            Period::Minute => 60.0,
            Period::Hour => 3_600.0,
            Period::Day => 86_400.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "s",
            Period::Minute => "min",
            Period::Hour => "h",
            Period::Day => "day",
        }
    }

    /// A rate in events per second written per this period, as a
    /// configuration would say it (`60/min`, `0.5/min`, `0.013/min`): one
    /// decimal from 1 up, two significant digits below, so a slow rate
    /// never reads as 0.
    pub fn format(self, per_second: f64) -> String {
        let count = per_second * self.seconds();
        let decimals = if count >= 1.0 || count <= 0.0 || !count.is_finite() {
            1
        } else {
            (-count.log10()).floor() as usize + 2
        };
        let text = format!("{count:.decimals$}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text}/{}", self.as_str())
    }
}

/// Writes a rate in events per second the way it is configured, in the
/// largest period that keeps the number readable (`1.5/s`, `20/min`, `4/h`).
pub fn format_rate(per_second: f64) -> String {
    let (count, period) = if per_second >= 1.0 {
        (per_second, "s")
    } else if per_second * 60.0 >= 1.0 {
        (per_second * 60.0, "min")
    } else if per_second * 3_600.0 >= 1.0 {
        (per_second * 3_600.0, "h")
    } else {
        (per_second * 86_400.0, "day")
    };
    let rounded = (count * 10.0).round() / 10.0;
    format!("{rounded}/{period}")
}

/// Writes a wait for people: `45s`, `12m`, `2h5m`, `3d4h` (rounded up to
/// the unit shown, so "try again in" is never too early).
pub fn format_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0).ceil() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds.div_ceil(60)),
        3_600..86_400 => {
            let minutes = seconds.div_ceil(60);
            format!("{}h{}m", minutes / 60, minutes % 60)
        }
        _ => {
            let hours = seconds.div_ceil(3_600);
            format!("{}d{}h", hours / 24, hours % 24)
        }
    }
}

/// Parses `512B`, `64KiB`, `25MiB`, `1GiB` into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = split_number(text)?;
    let factor: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Parses `250ms`, `30s`, `15m`, `2h`, `7d` into a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = split_number(text)?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
}

/// Splits `25MiB` into `(25, "MiB")`; the number must be whole and present.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("25MiB"), Some(25 * 1024 * 1024));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("25MB"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5d"), Some(Duration::from_secs(5 * 86_400)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("1w"), None);
    }

    #[test]
    fn rates_are_written_back_in_the_period_they_were_given_in() {
        for written in ["60/min", "0.5/s", "4/h", "10000/day", "12.5/min"] {
            let (rate, period) = parse_rate_per(written).unwrap();
            assert_eq!(period.format(rate), written);
        }
        let minute = parse_rate_per("60/min").unwrap().1;
        assert_eq!(minute.format(1.0), "60/min", "not 1/s");
        assert_eq!(minute.format(2.0 / 3.0), "40/min");
        assert_eq!(minute.format(1.0 / 120.0), "0.5/min");
        assert_eq!(minute.format(1.0 / 4_500.0), "0.013/min", "slow is never 0");
        assert_eq!(minute.format(0.0), "0/min");
        assert_eq!(Period::Second.format(2.0 / 3.0), "0.67/s");
        assert_eq!(Period::Day.format(0.5), "43200/day");
    }

    #[test]
    fn rates_and_growth() {
        assert_eq!(parse_rate("60/min"), Some(1.0));
        assert_eq!(parse_rate("0.5/s"), Some(0.5));
        assert_eq!(parse_rate("3600 / h"), Some(1.0));
        assert_eq!(parse_rate("86400/day"), Some(1.0));
        assert_eq!(parse_rate("60/minute"), None);
        assert_eq!(parse_rate("-1/s"), None);
        assert_eq!(parse_rate("60"), None);
        assert_eq!(parse_growth("2x/day"), Some(2.0));
        assert!((parse_growth("2x/h").unwrap() - 2f64.powi(24)).abs() < 1.0);
        assert_eq!(parse_growth("1x/day"), None, "no growth is not a warm-up");
        assert_eq!(parse_growth("2/day"), None);
        assert_eq!(
            parse_allowance("10 / min"),
            Some(Allowance {
                count: 10,
                period: Duration::from_secs(60)
            })
        );
        assert_eq!(parse_allowance("0/min"), None);
        assert_eq!(parse_allowance("1.5/s"), None);
        assert_eq!(parse_allowance("10/week"), None);
        assert_eq!(format_rate(1.5), "1.5/s");
        assert_eq!(format_rate(0.5), "30/min");
        assert_eq!(format_rate(1.0 / 900.0), "4/h");
        assert_eq!(format_rate(0.0), "0/day");
        assert_eq!(format_duration(44.2), "45s");
        assert_eq!(format_duration(61.0), "2m");
        assert_eq!(format_duration(2.0 * 3_600.0 + 1.0), "2h1m");
        assert_eq!(format_duration(86_400.0 * 3.0 + 1.0), "3d1h");
    }
}
