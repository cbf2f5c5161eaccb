//! What every `corral` command shares: the syntax of duration and count flags, and the signals
//! that end a command that serves.

use std::time::Duration;

/// Parses a count that must be at least 1 (objects, requests in flight, a rate).
pub fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h` (and a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = |per_unit: u64| {
        n.checked_mul(per_unit)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {text:?} is too long"))
    };
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(format!(
            "invalid duration unit in {text:?} (use ms, s, m or h)"
        )),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_never_overflow() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("18446744073709551615h").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn counts_are_whole_numbers_from_one() {
        assert_eq!(parse_count("64"), Ok(64));
        assert_eq!(parse_count("0"), Err("must be at least 1".into()));
        assert!(parse_count("-1").is_err());
        assert!(parse_count("1.5").is_err());
    }
}
