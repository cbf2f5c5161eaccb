//! Human ages for Table `date` cells, exactly as Kubernetes renders them.
//!
//! [`human_duration`] is `k8s.io/apimachinery/pkg/util/duration.HumanDuration`: about two to
//! three significant figures (`45s`, `5m30s`, `3h`, `2d5h`, `3y`). [`human_age`] is the
//! tableconvertor's `translateTimestampSince`: the age of a timestamp at `now`, tolerating a
//! clock skew of up to two seconds (`0s`) and printing `<invalid>` for anything further in the
//! future.
//!
//! **Invariants:** total functions: no input panics, however large.

use std::time::Duration;

/// `HumanDuration(d)`.
///
/// | range of `d`      | form            |
/// |-------------------|-----------------|
/// | < 2 min           | `119s`          |
/// | < 10 min          | `5m`, `5m30s`   |
/// | < 3 h             | `179m`          |
/// | < 8 h             | `3h`, `3h15m`   |
/// | < 2 d             | `47h`           |
/// | < 8 d             | `2d`, `2d5h`    |
/// | < 2 y (of 365 d)  | `400d`          |
/// | < 8 y             | `3y`, `3y20d`   |
/// | otherwise         | `12y`           |
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        let years = hours / 24 / 365;
        return if days == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{days}d")
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `HumanDuration` of a signed duration: less than two seconds in the future is `0s` (clock
/// skew), further is `<invalid>`.
pub fn human_duration_signed(d: jiff::SignedDuration) -> String {
    // Go truncates toward zero: -1.9 s is -1 s, which still counts as "now".
    let seconds = d.as_secs();
    if seconds < -1 {
        "<invalid>".to_string()
    } else if d.is_negative() {
        "0s".to_string()
    } else {
        human_duration(d.unsigned_abs())
    }
}

/// The age of `timestamp` at `now`, as a Table `date` cell shows it.
pub fn human_age(timestamp: jiff::Timestamp, now: jiff::Timestamp) -> String {
    human_duration_signed(now.duration_since(timestamp))
}

/// The age of an RFC 3339 timestamp string at `now`; `None` when it does not parse, in which
/// case Kubernetes leaves the cell `null`.
pub fn human_age_of_str(timestamp: &str, now: jiff::Timestamp) -> Option<String> {
    timestamp
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| human_age(t, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(seconds: u64, expected: &str) {
        assert_eq!(
            human_duration(Duration::from_secs(seconds)),
            expected,
            "{seconds}s"
        );
    }

    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    const YEAR: u64 = 365 * DAY;

    #[test]
    fn human_duration_matches_kubernetes_table() {
        // The cases of Kubernetes' own TestHumanDuration.
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1s"),
            (45, "45s"),
            (60 * 2 - 1, "119s"),
            (2 * MINUTE, "2m"),
            (5 * MINUTE + 30, "5m30s"),
            (10 * MINUTE - 1, "9m59s"),
            (10 * MINUTE, "10m"),
            (3 * HOUR - 1, "179m"),
            (3 * HOUR, "3h"),
            (3 * HOUR + 15 * MINUTE, "3h15m"),
            (8 * HOUR - 1, "7h59m"),
            (8 * HOUR, "8h"),
            (48 * HOUR - 1, "47h"),
            (48 * HOUR, "2d"),
            (2 * DAY + 5 * HOUR, "2d5h"),
            (8 * DAY - 1, "7d23h"),
            (8 * DAY, "8d"),
            (2 * YEAR - 1, "729d"),
            (2 * YEAR, "2y"),
            (3 * YEAR + 20 * DAY, "3y20d"),
            (8 * YEAR - 1, "7y364d"),
            (8 * YEAR, "8y"),
            (12 * YEAR + 100 * DAY, "12y"),
        ];
        for (seconds, expected) in cases {
            check(*seconds, expected);
        }
    }

    #[test]
    fn subsecond_parts_are_truncated() {
        assert_eq!(human_duration(Duration::from_millis(1999)), "1s");
        assert_eq!(human_duration(Duration::from_millis(119_999)), "119s");
    }

    #[test]
    fn future_timestamps_tolerate_two_seconds_of_skew() {
        let cases = [
            (-500, "0s"),
            (-1_999, "0s"),
            (-2_000, "<invalid>"),
            (0, "0s"),
            (90_000, "90s"),
        ];
        for (millis, expected) in cases {
            assert_eq!(
                human_duration_signed(jiff::SignedDuration::from_millis(millis)),
                expected,
                "{millis}ms"
            );
        }
    }

    #[test]
    fn ages_of_timestamps() {
        let now: jiff::Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            human_age_of_str("2024-05-01T11:55:00Z", now).as_deref(),
            Some("5m")
        );
        assert_eq!(
            human_age_of_str("2024-04-29T12:00:00Z", now).as_deref(),
            Some("2d")
        );
        assert_eq!(
            human_age_of_str("2024-05-01T12:00:10Z", now).as_deref(),
            Some("<invalid>")
        );
        assert_eq!(human_age_of_str("not a time", now), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(seconds in proptest::num::u64::ANY, nanos in 0u32..1_000_000_000) {
            let _ = human_duration(Duration::new(seconds, nanos));
        }

        #[test]
        fn signed_never_panics(seconds in proptest::num::i64::ANY) {
            let _ = human_duration_signed(jiff::SignedDuration::from_secs(seconds));
        }
    }
}
