//! Reading the timestamps gateway logs write: RFC 3339 (rsyslog's high
//! precision format, `journalctl -o short-iso`, ISO 8601 in CSV exports),
//! traditional syslog's `Dec  7 09:00:01` (local time, no year) and
//! Windows' `12/7/2026 9:00:01 AM`.
//!
//! Pure: the "now" a yearless date is judged against and the time zone
//! come from the caller ([`Zone`]); [`Zone::System`] asks libc, at the edge.
//! Times are Unix seconds (fractions kept).

use std::cell::Cell;

/// How far ahead of "now" a yearless date may be and still be this year's:
/// a gateway whose clock runs a little ahead of this host's.
const AHEAD: i64 = 86_400;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = of_era * 365 + of_era / 4 - of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The year of a day count from [`days_from_civil`].
fn year_of_days(days: i64) -> i64 {
    civil_from_days(days).0
}

/// (year, month, day) of a day count from [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2026-12-07 09:00Z`: a Unix time to the minute, as reports print it.
pub fn format_minute(seconds: f64) -> String {
    let seconds = seconds.floor() as i64;
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}Z",
        of_day / 3_600,
        of_day % 3_600 / 60
    )
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Seconds since the epoch of a wall-clock time read as if it were UTC
/// (a "naive" time); `None` for a date or time that does not exist.
pub fn naive(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: f64) -> Option<f64> {
    let valid = (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour < 24
        && minute < 60
        && (0.0..61.0).contains(&second);
    valid.then(|| {
        (days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3_600 + minute * 60)) as f64
            + second
    })
}

/// The time zone local timestamps are written in.
pub enum Zone {
    /// A fixed offset east of UTC, in seconds (tests; a log written in UTC).
    Fixed(i64),
    /// The system's (`TZ`, `/etc/localtime`), through libc; remembers the
    /// offset of the last hour asked (a log asks the same hour many times).
    System(Cell<Option<(i64, i64)>>),
}

impl Zone {
    pub fn system() -> Zone {
        Zone::System(Cell::new(None))
    }

    /// The UTC time of a naive local time (see [`naive`]).
    pub fn to_utc(&self, naive: f64) -> f64 {
        match self {
            Zone::Fixed(offset) => naive - *offset as f64,
            Zone::System(cached) => {
                let hour = (naive / 3_600.0).floor() as i64;
                let offset = match cached.get() {
                    Some((cached_hour, offset)) if cached_hour == hour => offset,
                    _ => {
                        let offset = system_offset_of_local(hour * 3_600);
                        cached.set(Some((hour, offset)));
                        offset
                    }
                };
                naive - offset as f64
            }
        }
    }

    /// The naive local time of a UTC time.
    pub fn to_local(&self, utc: f64) -> f64 {
        match self {
            Zone::Fixed(offset) => utc + *offset as f64,
            Zone::System(_) => utc + system_offset_of_utc(utc.floor() as i64) as f64,
        }
    }
}

/// The offset east of UTC in force at naive local time `naive` (libc's
/// `mktime`, which also settles times a DST change skips or repeats).
fn system_offset_of_local(naive: i64) -> i64 {
    let days = naive.div_euclid(86_400);
    let seconds = naive.rem_euclid(86_400);
    // SAFETY: a zeroed `tm` is a valid value; mktime reads and normalises it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let year = year_of_days(days);
    let day_of_year = days - days_from_civil(year, 1, 1);
    tm.tm_year = (year - 1900) as libc::c_int;
    tm.tm_mon = 0;
    tm.tm_mday = (day_of_year + 1) as libc::c_int;
    tm.tm_hour = (seconds / 3_600) as libc::c_int;
    tm.tm_min = (seconds % 3_600 / 60) as libc::c_int;
    tm.tm_sec = (seconds % 60) as libc::c_int;
    tm.tm_isdst = -1;
    // SAFETY: a valid `tm`; mktime has no other input.
    let utc = unsafe { libc::mktime(&mut tm) };
    if utc == -1 { 0 } else { naive - utc as i64 }
}

/// The offset east of UTC in force at `utc` (libc's `localtime_r`).
fn system_offset_of_utc(utc: i64) -> i64 {
    let time = utc as libc::time_t;
    // SAFETY: a zeroed `tm` for localtime_r to fill from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
        return 0;
    }
    tm.tm_gmtoff as i64
}

/// The month number (1-12) of an English abbreviation (`Dec`).
pub fn month_number(name: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|month| month.eq_ignore_ascii_case(name))
        .map(|index| index as u32 + 1)
}

/// `HH:MM:SS` (fractions allowed) as (hour, minute, second).
fn clock(text: &str) -> Option<(u32, u32, f64)> {
    let mut parts = text.splitn(3, ':');
    let hour = parts.next()?.parse().ok()?;
    let minute = parts.next()?.parse().ok()?;
    let second: &str = parts.next()?;
    if second.is_empty() || !second.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((hour, minute, second.parse().ok()?))
}

/// A traditional syslog date, `Dec  7 09:00:01` (already split into month,
/// day and clock): local time in `zone`, in the most recent year that puts
/// it no later than `now` (plus a day of clock skew), so a log that crosses
/// New Year gets both years right.
pub fn syslog_date(month: &str, day: &str, time: &str, zone: &Zone, now: f64) -> Option<f64> {
    let month = month_number(month)?;
    let day: u32 = day.parse().ok()?;
    let (hour, minute, second) = clock(time)?;
    let this_year = year_of_days((zone.to_local(now) / 86_400.0).floor() as i64);
    // Feb 29 goes back to the last leap year; anything else at most one.
    for year in (this_year - 8..=this_year).rev() {
        let Some(local) = naive(year, month, day, hour, minute, second) else {
            if day > 31 {
                return None;
            }
            continue;
        };
        let utc = zone.to_utc(local);
        if utc <= now + AHEAD as f64 {
            return Some(utc);
        }
    }
    None
}

/// An RFC 3339 / ISO 8601 time: `2026-12-07T09:00:01.123456+00:00`,
/// `2026-12-07T09:00:01+0000`, `2026-12-07 09:00:01Z`; without a zone it is
/// read in `default_offset` (seconds east of UTC).
pub fn rfc3339(text: &str, default_offset: i64) -> Option<f64> {
    let bytes = text.as_bytes();
    if bytes.len() < 19 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let year: i64 = text.get(0..4)?.parse().ok()?;
    let month: u32 = text.get(5..7)?.parse().ok()?;
    let day: u32 = text.get(8..10)?.parse().ok()?;
    let rest = text.get(11..)?;
    let zone_at = rest
        .char_indices()
        .skip(8)
        .find(|(_, c)| matches!(c, 'Z' | 'z' | '+' | '-'))
        .map(|(index, _)| index);
    let (time, zone) = match zone_at {
        Some(index) => rest.split_at(index),
        None => (rest, ""),
    };
    let (hour, minute, second) = clock(time)?;
    let offset = match zone {
        "" => default_offset,
        "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hours: i64 = digits[..2].parse().ok()?;
            let minutes: i64 = digits[2..].parse().ok()?;
            sign * (hours * 3_600 + minutes * 60)
        }
    };
    Some(naive(year, month, day, hour, minute, second)? - offset as f64)
}

/// Windows' en-US form `12/7/2026 9:00:01 AM` (or 24-hour without AM/PM),
/// read in UTC as message traces write it.
pub fn us_date(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let date = words.next()?;
    let time = words.next()?;
    let meridiem = words.next();
    if words.next().is_some() {
        return None;
    }
    let mut parts = date.split('/');
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let (mut hour, minute, second) = clock(time)?;
    match meridiem.map(str::to_ascii_uppercase).as_deref() {
        None => {}
        Some("AM") if (1..=12).contains(&hour) => hour %= 12,
        Some("PM") if (1..=12).contains(&hour) => hour = hour % 12 + 12,
        Some(_) => return None,
    }
    naive(year, month, day, hour, minute, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T09:00:01Z.
    const DEC_7: f64 = 1_796_634_001.0;

    #[test]
    fn civil_days_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [-800_000, -1, 0, 59, 11_016, 20_000, 2_000_000] {
            let year = year_of_days(days);
            assert!(days_from_civil(year, 1, 1) <= days && days < days_from_civil(year + 1, 1, 1));
        }
        assert_eq!(naive(2026, 12, 7, 9, 0, 1.0), Some(DEC_7));
        assert_eq!(naive(2026, 2, 29, 0, 0, 0.0), None);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            civil_from_days(days_from_civil(1999, 12, 31)),
            (1999, 12, 31)
        );
        assert_eq!(format_minute(DEC_7), "2026-12-07 09:00Z");
        assert!(naive(2028, 2, 29, 0, 0, 0.0).is_some());
    }

    #[test]
    fn reads_rfc_3339_in_every_form_logs_write() {
        for text in [
            "2026-12-07T09:00:01+00:00",
            "2026-12-07T09:00:01Z",
            "2026-12-07 09:00:01z",
            "2026-12-07T10:00:01+0100",
            "2026-12-07T04:00:01-05:00",
        ] {
            assert_eq!(rfc3339(text, 0), Some(DEC_7), "{text}");
        }
        let precise = rfc3339("2026-12-07T09:00:01.123456+00:00", 0).unwrap();
        assert!((precise - DEC_7 - 0.123456).abs() < 1e-6);
        assert_eq!(rfc3339("2026-12-07T11:00:01", 7_200), Some(DEC_7));
        assert_eq!(
            rfc3339("2026-12-07T11:00:01.1234567Z", 0).map(f64::floor),
            Some(DEC_7 + 7_200.0)
        );
        for garbage in [
            "2026-13-07T09:00:01Z",
            "2026-12-07T09:00Z",
            "2026-12-07X09:00:01",
            "x",
            "2026-12-07T09:00:01+1",
        ] {
            assert_eq!(rfc3339(garbage, 0), None, "{garbage}");
        }
    }

    #[test]
    fn a_yearless_date_is_the_latest_not_in_the_future() {
        let utc = Zone::Fixed(0);
        assert_eq!(
            syslog_date("Dec", "7", "09:00:01", &utc, DEC_7 + 60.0),
            Some(DEC_7)
        );
        // Read on Jan 2: December is last year's, January this year's.
        let january = naive(2027, 1, 2, 12, 0, 0.0).unwrap();
        assert_eq!(
            syslog_date("Dec", "31", "23:59:59", &utc, january),
            naive(2026, 12, 31, 23, 59, 59.0)
        );
        assert_eq!(
            syslog_date("Jan", "1", "00:00:00", &utc, january),
            naive(2027, 1, 1, 0, 0, 0.0)
        );
        // A day ahead still counts as this year (a clock a little ahead).
        assert_eq!(
            syslog_date("Jan", "3", "06:00:00", &utc, january),
            naive(2027, 1, 3, 6, 0, 0.0)
        );
        assert_eq!(
            syslog_date("Jan", "9", "06:00:00", &utc, january),
            naive(2026, 1, 9, 6, 0, 0.0)
        );
        // Feb 29 goes back to the last leap year.
        assert_eq!(
            syslog_date("Feb", "29", "00:00:00", &utc, january),
            naive(2024, 2, 29, 0, 0, 0.0)
        );
        // Local time: 10:00:01 at +01:00 is 09:00:01 UTC.
        assert_eq!(
            syslog_date("Dec", "7", "10:00:01", &Zone::Fixed(3_600), DEC_7),
            Some(DEC_7)
        );
        assert_eq!(syslog_date("Foo", "7", "10:00:01", &utc, DEC_7), None);
        assert_eq!(syslog_date("Dec", "x", "10:00:01", &utc, DEC_7), None);
        assert_eq!(syslog_date("Dec", "7", "10:0x", &utc, DEC_7), None);
        assert_eq!(syslog_date("Dec", "32", "10:00:00", &utc, DEC_7), None);
    }

    #[test]
    fn reads_windows_us_dates() {
        assert_eq!(us_date("12/7/2026 9:00:01 AM"), Some(DEC_7));
        assert_eq!(us_date("12/7/2026 09:00:01"), Some(DEC_7));
        assert_eq!(
            us_date("12/7/2026 9:00:01 PM"),
            Some(DEC_7 + 12.0 * 3_600.0)
        );
        assert_eq!(
            us_date("12/7/2026 12:00:01 AM"),
            Some(DEC_7 - 9.0 * 3_600.0)
        );
        assert_eq!(
            us_date("13/7/2026 9:00:01 AM"),
            None,
            "day first is not read"
        );
        assert_eq!(us_date("12/7/2026 13:00:01 PM"), None);
    }

    #[test]
    fn the_system_zone_agrees_with_libc_both_ways() {
        let zone = Zone::system();
        let local = zone.to_local(DEC_7);
        assert_eq!(zone.to_utc(local), DEC_7);
    }
}
