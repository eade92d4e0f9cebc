//! Times as numbers since the Unix epoch, the one way the receiver writes
//! them: signed (a clock set before 1970 gives a negative number, not a panic
//! or a silent 0).

use std::time::{Duration, SystemTime};

/// Microseconds since the epoch (negative before it).
pub fn micros(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_micros() as i64,
        Err(before) => -(before.duration().as_micros() as i64),
    }
}

/// Milliseconds since the epoch (negative before it).
pub fn millis(time: SystemTime) -> i64 {
    micros(time).div_euclid(1000)
}

/// Whole seconds since the epoch (0 before it).
pub fn seconds(time: SystemTime) -> u64 {
    micros(time).max(0) as u64 / 1_000_000
}

/// A time in RFC 3339 (`2026-12-01T08:00:00Z`, `2026-12-01T16:00:00+08:00`,
/// with or without a fraction); without a zone, read as UTC.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let (local, offset_minutes) = match text.strip_suffix(['Z', 'z']) {
        Some(local) => (local, 0),
        None => {
            match text.len().checked_sub(6).and_then(|split| Some((text.get(..split)?, text.get(split..)?))) {
                Some((local, offset)) if offset.starts_with(['+', '-']) => {
                    (local, parse_utc_offset(offset).ok()?)
                }
                _ => (text, 0),
            }
        }
    };
    let utc_wall = humantime::parse_rfc3339_weak(local).ok()?;
    let shift = Duration::from_secs(u64::from(offset_minutes.unsigned_abs()) * 60);
    if offset_minutes >= 0 { utc_wall.checked_sub(shift) } else { utc_wall.checked_add(shift) }
}

/// Parses `+08:00`, `-05:30`, `+00:00` (also `+0800`, `Z`) into minutes east of UTC.
pub fn parse_utc_offset(text: &str) -> Result<i32, String> {
    let invalid = || format!("{text:?} is not a UTC offset like +08:00");
    if text == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(invalid()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let (hours, minutes) = (
        digits[..2].parse::<i32>().map_err(|_| invalid())?,
        digits[2..].parse::<i32>().map_err(|_| invalid())?,
    );
    if hours > 14 || minutes > 59 {
        return Err(invalid());
    }
    Ok(sign * (hours * 60 + minutes))
}

/// The time `micros` microseconds from the epoch.
pub fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 { SystemTime::UNIX_EPOCH + magnitude } else { SystemTime::UNIX_EPOCH - magnitude }
}

/// The civil date (year, month, day) of a day number, days since 1970-01-01
/// (Howard Hinnant's civil-from-days).
pub fn civil(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day_of_month = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day_of_month as u32)
}

/// `time` as RFC 3339 in UTC to the microsecond (`2026-11-27T03:19:30.565162Z`),
/// as humantime writes it, without going through `fmt` (a log record is
/// written per message). A clock before 1970 gives its real date (humantime
/// would panic); a year past 0–9999 is written with its sign.
pub fn rfc3339_micros(time: SystemTime) -> Rfc3339 {
    let micros = micros(time);
    let (seconds, fraction) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil(days);
    if !(0..=9999).contains(&year) {
        let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
        return Rfc3339::Other(format!(
            "{year:+}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{fraction:06}Z"
        ));
    }
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for index in (at..at + width).rev() {
            text[index] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month.into());
    put(8, 2, day.into());
    put(11, 2, (of_day / 3600) as u64);
    put(14, 2, (of_day / 60 % 60) as u64);
    put(17, 2, (of_day % 60) as u64);
    put(20, 6, fraction as u64);
    Rfc3339::Fixed(text)
}

/// A time written by [`rfc3339_micros`].
pub enum Rfc3339 {
    Fixed([u8; 27]),
    Other(String),
}

impl Rfc3339 {
    pub fn as_str(&self) -> &str {
        match self {
            Rfc3339::Fixed(bytes) => std::str::from_utf8(bytes).expect("ASCII digits and separators"),
            Rfc3339::Other(text) => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_takes_z_an_offset_or_none() {
        let at = |text| parse_rfc3339(text).map(millis);
        assert_eq!(at("2024-11-27T02:40:00Z"), Some(1_732_675_200_000));
        assert_eq!(at("2024-11-27T10:40:00+08:00"), Some(1_732_675_200_000));
        assert_eq!(at("2024-11-26T21:40:00-05:00"), Some(1_732_675_200_000));
        assert_eq!(at("2024-11-27T02:40:00"), Some(1_732_675_200_000), "no zone: UTC");
        assert_eq!(at("2024-11-27T02:40:00.5Z"), Some(1_732_675_200_500));
        assert_eq!(at("yesterday"), None);
        assert_eq!(at("2024-11-27T02:40:00+8"), None);
    }

    #[test]
    fn rfc3339_is_humantimes_to_the_microsecond() {
        let mut micros = 0;
        while micros < 253_402_300_799_000_000 {
            let time = from_micros(micros);
            assert_eq!(rfc3339_micros(time).as_str(), humantime::format_rfc3339_micros(time).to_string());
            micros += 7_777_777_777_777;
        }
        let now = SystemTime::now();
        assert_eq!(rfc3339_micros(now).as_str(), humantime::format_rfc3339_micros(now).to_string());
        // Before the epoch, where humantime panics: the real date.
        assert_eq!(rfc3339_micros(from_micros(-1)).as_str(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            rfc3339_micros(from_micros(-62_167_219_200_000_001)).as_str(),
            "-1-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        for value in [1_732_675_200_123_456_i64, -1_500, 0] {
            assert_eq!(micros(from_micros(value)), value);
        }
        assert_eq!(millis(from_micros(-1_500)), -2, "floored, as days and minutes are cut");
        assert_eq!(seconds(from_micros(1_732_675_200_999_999)), 1_732_675_200);
    }
}
