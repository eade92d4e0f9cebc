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

/// The time `micros` microseconds from the epoch.
pub fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 { SystemTime::UNIX_EPOCH + magnitude } else { SystemTime::UNIX_EPOCH - magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        for value in [1_732_675_200_123_456_i64, -1_500, 0] {
            assert_eq!(micros(from_micros(value)), value);
        }
        assert_eq!(millis(from_micros(-1_500)), -2, "floored, as days and minutes are cut");
        assert_eq!(seconds(from_micros(1_732_675_200_999_999)), 1_732_675_200);
    }
}
