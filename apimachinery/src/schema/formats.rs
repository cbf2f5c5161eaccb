//! String `format`s, checked as kube-openapi's `strfmt.Default` registry checks them for the
//! formats custom resources support (apiextensions' `supportedFormats`; others are ignored).
//!
//! Format names are normalized by removing dashes (`date-time` is `datetime`), as go-openapi does.
//!
//! **Caveats:** `email` and `uri` are approximations of Go's `net/mail` and `net/url` parsers;
//! `isbn`, `isbn10`, `isbn13` and `creditcard` are accepted unchecked.

use regex::Regex;
use std::sync::LazyLock;

/// Whether `value` is valid for `format`; `None` when the format is not one that custom
/// resources check (so any string passes).
pub(super) fn check(format: &str, value: &str) -> Option<bool> {
    let normalized = format.replace('-', "");
    Some(match normalized.as_str() {
        "bsonobjectid" => value.len() == 24 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "uri" => is_request_uri(value),
        "email" => is_email(value),
        "hostname" => is_hostname(value),
        "ipv4" => parse_ipv4_sloppy(value).is_some(),
        "ipv6" => value.contains(':') && parse_ip_sloppy(value),
        "cidr" => is_cidr(value),
        "mac" => is_mac(value),
        "uuid" => UUID.is_match(value),
        "uuid3" => UUID3.is_match(value),
        "uuid4" => UUID4.is_match(value),
        "uuid5" => UUID5.is_match(value),
        "ssn" => SSN.is_match(value),
        "hexcolor" => HEX_COLOR.is_match(value),
        "rgbcolor" => RGB_COLOR.is_match(value),
        "byte" => BASE64.is_match(value),
        "date" => is_date(value),
        "datetime" => is_date_time(value),
        "duration" => is_duration(value),
        "password" | "isbn" | "isbn10" | "isbn13" | "creditcard" => true,
        _ => return None,
    })
}

fn regex(pattern: &str) -> Regex {
    // The patterns are constants of this file, covered by its tests.
    Regex::new(pattern).unwrap_or_else(|e| panic!("invalid built-in pattern {pattern}: {e}"))
}

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
});
static UUID3: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
});
static UUID4: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$")
});
static UUID5: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$")
});
static SSN: LazyLock<Regex> = LazyLock::new(|| regex(r"^[0-9]{3}[- ]?[0-9]{2}[- ]?[0-9]{4}$"));
static HEX_COLOR: LazyLock<Regex> = LazyLock::new(|| regex(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"));
static RGB_COLOR: LazyLock<Regex> = LazyLock::new(|| {
    let byte = r"(0|[1-9][0-9]?|1[0-9][0-9]?|2[0-4][0-9]|25[0-5])";
    regex(&format!(r"^rgb\(\s*{byte}\s*,\s*{byte}\s*,\s*{byte}\s*\)$"))
});
static BASE64: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$")
});
static HOSTNAME: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"^([a-zA-Z0-9\p{S}\p{L}]((-?[a-zA-Z0-9\p{S}\p{L}]{0,62})?)|([a-zA-Z0-9\p{S}\p{L}](([a-zA-Z0-9-\p{S}\p{L}]{0,61}[a-zA-Z0-9\p{S}\p{L}])?)(\.)){1,}([a-zA-Z\p{L}]){2,63})$",
    )
});
static TIME_OF_DAY: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$")
});
static SCALA_DURATION: LazyLock<Regex> = LazyLock::new(|| regex(r"([0-9]+)\s*([A-Za-zµ]+)"));

/// `strfmt.IsHostname`.
fn is_hostname(value: &str) -> bool {
    HOSTNAME.is_match(value) && value.len() <= 255 && value.split('.').all(|part| part.len() <= 63)
}

/// `time.Parse("2006-01-02", value)`: a real calendar date with a four-digit year.
fn is_date(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return false;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i16> {
        let part = value.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    match (digits(0..4), digits(5..7), digits(8..10)) {
        (Some(year), Some(month), Some(day)) => i8::try_from(month).is_ok_and(|m| {
            i8::try_from(day).is_ok_and(|d| jiff::civil::Date::new(year, m, d).is_ok())
        }),
        _ => false,
    }
}

/// `strfmt.IsDateTime`: a date, a `T` (any case), a time of day with optional fraction, and
/// `Z` or an offset.
fn is_date_time(value: &str) -> bool {
    if value.len() < 4 {
        return false;
    }
    let lower = value.to_lowercase();
    let parts: Vec<&str> = lower.split('t').collect();
    if parts.len() < 2 || !is_date(parts[0]) {
        return false;
    }
    let Some(captures) = TIME_OF_DAY.captures(parts[1]) else {
        return false;
    };
    let field = |i: usize| captures.get(i).map_or("", |m| m.as_str());
    field(1) <= "23" && field(2) <= "59" && field(3) <= "59"
}

/// `strfmt.ParseDuration`: Go's `time.ParseDuration`, else any `<number> <unit>` (`3 days`).
fn is_duration(value: &str) -> bool {
    if is_go_duration(value) {
        return true;
    }
    const UNITS: &[&[&str]] = &[
        &["ns", "nano"],
        &["us", "µs", "micro"],
        &["ms", "milli"],
        &["s", "sec"],
        &["m", "min"],
        &["h", "hr", "hour"],
        &["d", "day"],
        &["w", "wk", "week"],
    ];
    SCALA_DURATION.captures_iter(value).any(|captures| {
        let unit = captures
            .get(2)
            .map_or(String::new(), |m| m.as_str().to_lowercase());
        UNITS.iter().any(|variants| {
            variants.iter().enumerate().any(|(i, variant)| {
                (i == variants.len() - 1 && unit.starts_with(variant)) || unit == *variant
            })
        })
    })
}

/// `time.ParseDuration`'s grammar: `[-+]?` then one or more `<decimal><unit>`, or `0`.
fn is_go_duration(value: &str) -> bool {
    let rest = value.strip_prefix(['-', '+']).unwrap_or(value);
    if rest == "0" {
        return true;
    }
    if rest.is_empty() {
        return false;
    }
    let mut rest = rest;
    while !rest.is_empty() {
        let integer = rest.bytes().take_while(u8::is_ascii_digit).count();
        let mut consumed = integer;
        let mut fraction = 0;
        if rest.as_bytes().get(consumed) == Some(&b'.') {
            consumed += 1;
            fraction = rest[consumed..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            consumed += fraction;
        }
        if integer == 0 && fraction == 0 {
            return false;
        }
        rest = &rest[consumed..];
        let Some(unit) = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u))
        else {
            return false;
        };
        // "ms" must win over "m": the list has the longer units first.
        rest = &rest[unit.len()..];
    }
    true
}

/// An IPv4 address as `net.ParseIP` reads it (leading zeros allowed, as Kubernetes' sloppy
/// parser allows them).
fn parse_ipv4_sloppy(value: &str) -> Option<[u8; 4]> {
    let parts: Vec<&str> = value.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (octet, part) in octets.iter_mut().zip(parts) {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    Some(octets)
}

/// Whether `net.ParseIP` accepts the value (IPv4, or IPv6 possibly ending in an IPv4 part).
fn parse_ip_sloppy(value: &str) -> bool {
    if parse_ipv4_sloppy(value).is_some() {
        return true;
    }
    if value.parse::<std::net::Ipv6Addr>().is_ok() {
        return true;
    }
    // An IPv6 address whose embedded IPv4 part has leading zeros.
    match value.rsplit_once(':') {
        Some((head, tail)) if tail.contains('.') => {
            parse_ipv4_sloppy(tail).is_some_and(|[a, b, c, d]| {
                format!("{head}:{a}.{b}.{c}.{d}")
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()
            })
        }
        _ => false,
    }
}

/// `net.ParseCIDR` (sloppy): an address, `/`, and a prefix length that fits it.
fn is_cidr(value: &str) -> bool {
    let Some((address, prefix)) = value.split_once('/') else {
        return false;
    };
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    if parse_ipv4_sloppy(address).is_some() {
        prefix <= 32
    } else {
        address.contains(':') && parse_ip_sloppy(address) && prefix <= 128
    }
}

/// `net.ParseMAC`: 6, 8 or 20 octets as `xx:xx:…`, `xx-xx-…` or `xxxx.xxxx.…`.
fn is_mac(value: &str) -> bool {
    let hex =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
    let (separator, group) = if value.contains(':') {
        (':', 2)
    } else if value.contains('-') {
        ('-', 2)
    } else if value.contains('.') {
        ('.', 4)
    } else {
        return false;
    };
    let parts: Vec<&str> = value.split(separator).collect();
    let octets = parts.len() * group / 2;
    parts.iter().all(|p| hex(p, group)) && matches!(octets, 6 | 8 | 20)
}

/// `mail.ParseAddress`, approximated: `local@domain` or `Name <local@domain>`.
fn is_email(value: &str) -> bool {
    let address = match (value.rfind('<'), value.strip_suffix('>')) {
        (Some(open), Some(inner)) => &inner[open + 1..],
        _ => value.trim(),
    };
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !address
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ','))
        }
        None => false,
    }
}

/// `url.ParseRequestURI`, approximated: an absolute path, or a scheme followed by `:`, with no
/// spaces or control characters.
fn is_request_uri(value: &str) -> bool {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if value.starts_with('/') {
        return true;
    }
    match value.split_once(':') {
        Some((scheme, _)) => {
            scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all(format: &str, valid: &[&str], invalid: &[&str]) {
        for value in valid {
            assert_eq!(
                check(format, value),
                Some(true),
                "{format}: {value:?} should be valid"
            );
        }
        for value in invalid {
            assert_eq!(
                check(format, value),
                Some(false),
                "{format}: {value:?} should be invalid"
            );
        }
    }

    #[test]
    fn date_time() {
        check_all(
            "date-time",
            &[
                "2024-01-02T03:04:05Z",
                "2024-01-02t03:04:05.123z",
                "2024-01-02T03:04:05+02:00",
                "2024-02-29T00:00:00Z",
            ],
            &[
                "",
                "2024-01-02",
                "2024-01-02T03:04:05",
                "2024-13-02T03:04:05Z",
                "2023-02-29T00:00:00Z",
                "2024-01-02T24:00:00Z",
                "yesterday",
            ],
        );
        assert_eq!(check("datetime", "2024-01-02T03:04:05Z"), Some(true));
    }

    #[test]
    fn date() {
        check_all(
            "date",
            &["2024-01-02", "0001-12-31"],
            &[
                "2024-1-2",
                "2024-01-32",
                "24-01-01",
                "2024/01/01",
                "２０２４-01-01",
            ],
        );
    }

    #[test]
    fn byte() {
        check_all(
            "byte",
            &["aGVsbG8=", "aGk=", "YWJj", "a+/="],
            &["", "aGVsbG8", "not base64!", "a==="],
        );
    }

    #[test]
    fn network_formats() {
        check_all(
            "ipv4",
            &["10.0.0.1", "010.0.0.1"],
            &["10.0.0", "256.0.0.1", "::1", "a.b.c.d"],
        );
        check_all(
            "ipv6",
            &["::1", "fe80::1", "::ffff:10.0.0.1"],
            &["10.0.0.1", "fe80::g", ":"],
        );
        check_all(
            "cidr",
            &["10.0.0.0/8", "fd00::/64", "10.0.0.1/32"],
            &["10.0.0.0", "10.0.0.0/33", "fd00::/129", "x/8"],
        );
        check_all(
            "mac",
            &[
                "00:00:5e:00:53:01",
                "00-00-5E-00-53-01",
                "0000.5e00.5301",
                "02:00:5e:10:00:00:00:01",
            ],
            &["00:00:5e:00:53", "0:0:5e:0:53:1", "hello"],
        );
        check_all(
            "hostname",
            &["example.com", "a", "my-host.example.org"],
            &["-bad-.com", "a..b", &"a".repeat(256)],
        );
    }

    #[test]
    fn identifiers() {
        check_all(
            "uuid",
            &[
                "123e4567-e89b-12d3-a456-426614174000",
                "123E4567E89B12D3A456426614174000",
            ],
            &["123e4567", "g23e4567-e89b-12d3-a456-426614174000"],
        );
        check_all(
            "uuid4",
            &["123e4567-e89b-42d3-a456-426614174000"],
            &["123e4567-e89b-12d3-a456-426614174000"],
        );
        check_all(
            "bsonobjectid",
            &["507f1f77bcf86cd799439011"],
            &["507f1f77bcf86cd79943901", "zzzf1f77bcf86cd799439011"],
        );
    }

    #[test]
    fn durations() {
        check_all(
            "duration",
            &[
                "1h",
                "1.5h",
                "-3m",
                "300ms",
                "2h45m",
                "0",
                "3 days",
                "1 week",
                "5 minutes",
            ],
            &["", "h", "3", "forever", "1x"],
        );
    }

    #[test]
    fn misc_formats() {
        check_all(
            "email",
            &["a@b.c", "Alice <a@b.c>"],
            &["nope", "@b.c", "a@", "a b@c"],
        );
        check_all(
            "uri",
            &["https://example.com/x", "/abs/path", "urn:isbn:1"],
            &["", "relative/path", "http://a b"],
        );
        check_all("hexcolor", &["#fff", "ffffff"], &["#ffff", "#ggg"]);
        check_all(
            "rgbcolor",
            &["rgb(0, 128, 255)"],
            &["rgb(256,0,0)", "rgb(1,2)"],
        );
        check_all("ssn", &["123-45-6789", "123456789"], &["12-345-6789"]);
        check_all("password", &["", "anything"], &[]);
    }

    #[test]
    fn unsupported_formats_are_not_checked() {
        for format in [
            "int32", "int64", "float", "double", "quantity", "", "whatever",
        ] {
            assert_eq!(check(format, "x"), None, "{format}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(value in "\\PC{0,40}") {
            for format in ["date-time", "date", "byte", "ipv4", "ipv6", "cidr", "mac", "hostname", "email", "uri", "duration", "uuid"] {
                let _ = check(format, &value);
            }
        }
    }
}
