//! Go's `fmt` renderings of decoded JSON values, so that error messages read exactly as the
//! Kubernetes apiserver prints them.
//!
//! Kubernetes decodes JSON into `interface{}` values (`int64`, `float64`, `string`, `bool`,
//! `map[string]interface{}`, `[]interface{}`, `nil`) and formats them with `%v`, `%q` and `%#v`.
//! These functions reproduce those renderings for [`serde_json::Value`].
//!
//! **Invariants:** total functions; they never panic, whatever the value.
//!
//! **Caveats:** Go's `unicode.IsPrint` is approximated by "not a control, format or non-ASCII
//! space character", which differs only for exotic code points.

use serde_json::{Number, Value};

/// `strconv.Quote(s)`: a double-quoted Go string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if is_print(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint`.
fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    // Unicode format characters (category Cf) that Go does not print.
    !matches!(c as u32, 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
        | 0xE000..=0xF8FF)
}

/// `%v` of a `float64`: `strconv.FormatFloat(f, 'g', -1, 64)`.
///
/// The shortest representation that round-trips, in exponent form when the decimal exponent is
/// below -4 or at least 6 (`1e+06`, `1.5e-05`), plain otherwise (`123456`, `0.0001`).
pub fn float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".to_string()
        } else {
            "-Inf".to_string()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".to_string()
        } else {
            "0".to_string()
        };
    }
    // Rust's `{:e}` is the shortest round-trip representation: "-1.234567e6", "1e-5".
    let sci = format!("{f:e}");
    let Some((mantissa, exponent)) = sci.split_once('e') else {
        return sci;
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return sci;
    };
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if !(-4..6).contains(&exponent) {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if exponent < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exponent.unsigned_abs()));
        return out;
    }
    // Decimal point position: digits[..point] are the integer part.
    let point = exponent + 1;
    let n_digits = digits.len() as i32;
    if point <= 0 {
        out.push_str("0.");
        for _ in 0..(-point) {
            out.push('0');
        }
        out.push_str(&digits);
    } else if point >= n_digits {
        out.push_str(&digits);
        for _ in 0..(point - n_digits) {
            out.push('0');
        }
    } else {
        let (integer, fraction) = digits.split_at(point as usize);
        out.push_str(integer);
        out.push('.');
        out.push_str(fraction);
    }
    out
}

/// `%v` of a JSON number as Go decodes it: integers as `int64`, everything else as `float64`.
pub fn number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        float(n.as_f64().unwrap_or(0.0))
    }
}

/// `%#v` of a decoded JSON value held in an `interface{}`.
pub fn sharp_v(value: &Value) -> String {
    let mut out = String::new();
    write_sharp_v(&mut out, value);
    out
}

fn write_sharp_v(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("interface {}(nil)"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number(n)),
        Value::String(s) => out.push_str(&quote(s)),
        Value::Array(items) => {
            out.push_str("[]interface {}{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_sharp_v(out, item);
            }
            out.push('}');
        }
        Value::Object(map) => {
            // Go prints maps with their keys sorted.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push_str("map[string]interface {}{");
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&quote(key));
                out.push(':');
                write_sharp_v(out, item);
            }
            out.push('}');
        }
    }
}

/// The bad value of a `field.Error` as `ErrorBody` prints it: `%v` for numbers and booleans,
/// `%q` for strings, `"null"` for nil, `%#v` for maps and slices.
pub fn error_value(value: &Value) -> String {
    match value {
        Value::Null => quote("null"),
        Value::String(s) => quote(s),
        Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_) => sharp_v(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_matches_go_percent_v() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e6, "1e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e21, "1e+21"),
            (1e100, "1e+100"),
            (0.1, "0.1"),
            (100.5, "100.5"),
        ];
        for (input, expected) in cases {
            assert_eq!(float(*input), *expected, "input {input}");
        }
    }

    #[test]
    fn quote_escapes_like_strconv() {
        let cases = [
            ("abc", r#""abc""#),
            ("a\"b", r#""a\"b""#),
            ("a\\b", r#""a\\b""#),
            ("line\n", r#""line\n""#),
            ("\u{1}", r#""\x01""#),
            ("héllo", "\"héllo\""),
            ("\u{200b}", r#""\u200b""#),
        ];
        for (input, expected) in cases {
            assert_eq!(quote(input), expected);
        }
    }

    #[test]
    fn sharp_v_renders_go_syntax() {
        let cases = [
            (json!(null), "interface {}(nil)"),
            (json!(["a", 1]), r#"[]interface {}{"a", 1}"#),
            (
                json!({"b": 1, "a": "x"}),
                r#"map[string]interface {}{"a":"x", "b":1}"#,
            ),
            (
                json!({"a": [true]}),
                r#"map[string]interface {}{"a":[]interface {}{true}}"#,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(sharp_v(&input), expected);
        }
    }

    #[test]
    fn error_value_quotes_strings_and_null() {
        assert_eq!(error_value(&json!("x")), r#""x""#);
        assert_eq!(error_value(&json!(null)), r#""null""#);
        assert_eq!(error_value(&json!(3)), "3");
        assert_eq!(error_value(&json!(2.5)), "2.5");
        assert_eq!(error_value(&json!(false)), "false");
    }
}
