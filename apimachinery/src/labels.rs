//! Label selectors (`?labelSelector=`), parsed and matched as `k8s.io/apimachinery/pkg/labels`
//! does.
//!
//! Syntax: requirements joined by commas, each one of `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a)`, `k` (exists), `!k` (does not exist), and Kubernetes' `k>5` / `k<5` (integer
//! comparison). Whitespace between tokens is ignored; `in` and `notin` are keywords only where
//! an operator is expected, so `in in (in)` is valid.
//!
//! A label selects an object if (and only if) every requirement holds:
//! - `=`, `==`, `in`: the label exists and its value is one of the values;
//! - `!=`, `notin`: the label is absent, or its value is none of the values;
//! - exists / does not exist: the label is present / absent;
//! - `>` / `<`: the label exists, its value is an integer, and it compares so.
//!
//! **Invariants:**
//! - Keys are qualified names and values label values; anything else is a parse error with
//!   Kubernetes' message (`unable to parse requirement: …`).
//! - Requirements are kept sorted by key (stable) and set values sorted and deduplicated, so
//!   [`Display`](std::fmt::Display) is canonical and `parse(display(s)) == s`.
//! - Parsing never panics, whatever the input.

use crate::validation::{is_qualified_name, is_valid_label_value};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// A label selector that failed to parse; the message is Kubernetes'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectorError {
    message: String,
}

impl SelectorError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// The operator of one requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `k=v`
    Equals,
    /// `k==v`
    DoubleEquals,
    /// `k!=v`
    NotEquals,
    /// `k in (a,b)`
    In,
    /// `k notin (a,b)`
    NotIn,
    /// `k`
    Exists,
    /// `!k`
    DoesNotExist,
    /// `k>5`
    GreaterThan,
    /// `k<5`
    LessThan,
}

/// One requirement of a selector: a key, an operator, and its (sorted, unique) values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted and without duplicates; empty for exists / does not exist.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether labels, looked up by `get`, satisfy this requirement.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        let value = get(&self.key);
        let has_value = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(has_value)
            }
            Operator::NotEquals | Operator::NotIn => !value.is_some_and(has_value),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(actual), [bound]) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.as_slice(),
                ) else {
                    return false;
                };
                let Ok(bound) = bound.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    actual > bound
                } else {
                    actual < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let joined = self.values.join(",");
        match self.operator {
            Operator::Exists | Operator::DoesNotExist => Ok(()),
            Operator::Equals => write!(f, "={joined}"),
            Operator::DoubleEquals => write!(f, "=={joined}"),
            Operator::NotEquals => write!(f, "!={joined}"),
            Operator::GreaterThan => write!(f, ">{joined}"),
            Operator::LessThan => write!(f, "<{joined}"),
            Operator::In => write!(f, " in ({joined})"),
            Operator::NotIn => write!(f, " notin ({joined})"),
        }
    }
}

/// A parsed label selector: the conjunction of its requirements. The empty selector selects
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that selects everything (what an empty `labelSelector` means).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses a selector in Kubernetes syntax; the empty string selects everything.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let tokens = lex(input)?;
        let mut requirements = Parser {
            tokens,
            position: 0,
        }
        .parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether every requirement holds for labels looked up by `get`.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(&get))
    }

    /// Whether the selector selects an object with these labels.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// Whether the selector selects an object whose `metadata.labels` is `labels`. A missing or
    /// non-object value has no labels; a non-string label value counts as absent.
    pub fn matches_json(&self, labels: Option<&Value>) -> bool {
        let labels = labels.and_then(Value::as_object);
        self.matches_with(|key| labels.and_then(|l| l.get(key)).and_then(Value::as_str))
    }

    /// The single value the selector requires `key` to have (`k=v`, `k==v`, `k in (v)`), if any.
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let requirement = self.requirements.iter().find(|r| r.key == key)?;
        match (requirement.operator, requirement.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [value]) => Some(value),
            _ => None,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Identifier,
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

/// Whether a token is read where a key or an operator is expected, or where a value is: in the
/// latter, `in` and `notin` are plain identifiers.
#[derive(Clone, Copy)]
enum Context {
    KeyAndOperator,
    Values,
}

fn literal_token(s: &str) -> Option<Token> {
    Some(match s {
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::DoesNotExist,
        "==" => Token::DoubleEquals,
        "=" => Token::Equals,
        ">" => Token::GreaterThan,
        "in" => Token::In,
        "<" => Token::LessThan,
        "!=" => Token::NotEquals,
        "notin" => Token::NotIn,
        "(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special_symbol(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the input into tokens, as Kubernetes' `Lexer` does: identifiers run until whitespace
/// or a special symbol, and special symbols are read greedily (`!=`, `==`).
fn lex(input: &str) -> Result<Vec<(Token, String)>, SelectorError> {
    let bytes = input.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            tokens.push((Token::EndOfString, String::new()));
            return Ok(tokens);
        }
        let start = pos;
        if is_special_symbol(bytes[pos]) {
            let mut last: Option<(Token, usize)> = None;
            while pos < bytes.len() && is_special_symbol(bytes[pos]) {
                let candidate = &input[start..=pos];
                if let Some(token) = literal_token(candidate) {
                    last = Some((token, pos + 1));
                } else if last.is_some() {
                    break;
                }
                pos += 1;
            }
            match last {
                Some((token, end)) => {
                    tokens.push((token, input[start..end].to_string()));
                    pos = end;
                }
                None => {
                    // Kubernetes turns this into an ErrorToken that no rule accepts.
                    return Err(SelectorError::new(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        &input[start..pos]
                    )));
                }
            }
        } else {
            while pos < bytes.len() && !is_special_symbol(bytes[pos]) && !is_whitespace(bytes[pos])
            {
                pos += 1;
            }
            // Identifiers end at ASCII bytes only, so these are character boundaries.
            let word = &input[start..pos];
            let token = literal_token(word).unwrap_or(Token::Identifier);
            tokens.push((token, word.to_string()));
        }
    }
}

struct Parser {
    tokens: Vec<(Token, String)>,
    position: usize,
}

impl Parser {
    fn lookahead(&self, context: Context) -> (Token, String) {
        let (token, literal) = self
            .tokens
            .get(self.position)
            .cloned()
            .unwrap_or((Token::EndOfString, String::new()));
        (Self::in_context(token, context), literal)
    }

    fn consume(&mut self, context: Context) -> (Token, String) {
        let item = self.lookahead(context);
        self.position += 1;
        item
    }

    fn in_context(token: Token, context: Context) -> Token {
        match (context, token) {
            (Context::Values, Token::In | Token::NotIn) => Token::Identifier,
            _ => token,
        }
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let (token, literal) = self.lookahead(Context::Values);
            match token {
                Token::Identifier | Token::DoesNotExist => {
                    let requirement = self.parse_requirement().map_err(|e| {
                        SelectorError::new(format!("unable to parse requirement: {e}"))
                    })?;
                    requirements.push(requirement);
                    let (token, literal) = self.consume(Context::Values);
                    match token {
                        Token::EndOfString => return Ok(requirements),
                        Token::Comma => {
                            let (next, next_literal) = self.lookahead(Context::Values);
                            if next != Token::Identifier && next != Token::DoesNotExist {
                                return Err(SelectorError::new(format!(
                                    "found '{next_literal}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError::new(format!(
                                "found '{literal}', expected: ',' or 'end of string'"
                            )));
                        }
                    }
                }
                Token::EndOfString => return Ok(requirements),
                _ => {
                    return Err(SelectorError::new(format!(
                        "found '{literal}', expected: !, identifier, or 'end of string'"
                    )));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, inferred) = self.parse_key_and_infer_operator()?;
        if let Some(operator) = inferred {
            return new_requirement(key, operator, Vec::new());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        new_requirement(key, operator, values)
    }

    /// The key, and the operator when it is unary (`k` exists, `!k` does not).
    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let (mut token, mut literal) = self.consume(Context::Values);
        let negated = token == Token::DoesNotExist;
        if negated {
            (token, literal) = self.consume(Context::Values);
        }
        if token != Token::Identifier {
            return Err(format!("found '{literal}', expected: identifier"));
        }
        let errs = is_qualified_name(&literal);
        if !errs.is_empty() {
            // Kubernetes validates the key with a nil field path, which prints as "<nil>".
            return Err(format!(
                "<nil>: Invalid value: {}: {}",
                crate::validation::go_quote(&literal),
                errs.join("; ")
            ));
        }
        if negated {
            return Ok((literal, Some(Operator::DoesNotExist)));
        }
        let (next, _) = self.lookahead(Context::Values);
        let operator =
            matches!(next, Token::EndOfString | Token::Comma).then_some(Operator::Exists);
        Ok((literal, operator))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (token, literal) = self.consume(Context::KeyAndOperator);
        Ok(match token {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => {
                return Err(format!(
                    "found '{literal}', expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        })
    }

    /// `(a,b)`: a possibly empty list of possibly empty values.
    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let (token, literal) = self.consume(Context::Values);
        if token != Token::OpenPar {
            return Err(format!("found '{literal}' expected: '('"));
        }
        let (token, literal) = self.lookahead(Context::Values);
        match token {
            Token::Identifier | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                let (token, _) = self.consume(Context::Values);
                if token != Token::ClosedPar {
                    return Err(format!("found '{literal}', expected: ')'"));
                }
                Ok(values)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(format!(
                "found '{literal}', expected: ',', ')' or identifier"
            )),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut values: Vec<String> = Vec::new();
        loop {
            let (token, literal) = self.consume(Context::Values);
            match token {
                Token::Identifier => {
                    values.push(literal);
                    let (next, next_literal) = self.lookahead(Context::Values);
                    match next {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(values),
                        _ => return Err(format!("found '{next_literal}', expected: ',' or ')'")),
                    }
                }
                Token::Comma => {
                    // "(,", ",)" and ",," each stand for an empty value.
                    if values.is_empty() {
                        values.push(String::new());
                    }
                    let (next, _) = self.lookahead(Context::Values);
                    if next == Token::ClosedPar {
                        values.push(String::new());
                        return Ok(values);
                    }
                    if next == Token::Comma {
                        self.consume(Context::Values);
                        values.push(String::new());
                    }
                }
                _ => return Err(format!("found '{literal}', expected: ',', or identifier")),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        let (token, _) = self.lookahead(Context::Values);
        if matches!(token, Token::EndOfString | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        let (token, literal) = self.consume(Context::Values);
        if token == Token::Identifier {
            Ok(vec![literal])
        } else {
            Err(format!("found '{literal}', expected: identifier"))
        }
    }
}

/// `NewRequirement`: validates the values and sorts them; several errors are aggregated as
/// `[e1, e2]`.
fn new_requirement(
    key: String,
    operator: Operator,
    mut values: Vec<String>,
) -> Result<Requirement, String> {
    values.sort();
    values.dedup();
    let mut errors = Vec::new();
    if matches!(operator, Operator::GreaterThan | Operator::LessThan) {
        for (i, value) in values.iter().enumerate() {
            if value.parse::<i64>().is_err() {
                errors.push(format!(
                    "values[{i}]: Invalid value: {}: for 'Gt', 'Lt' operators, the value must be an integer",
                    crate::validation::go_quote(value)
                ));
            }
        }
    }
    for (i, value) in values.iter().enumerate() {
        let errs = is_valid_label_value(value);
        if !errs.is_empty() {
            errors.push(format!(
                "values[{i}][{key}]: Invalid value: {}: {}",
                crate::validation::go_quote(value),
                errs.join("; ")
            ));
        }
    }
    match errors.as_slice() {
        [] => Ok(Requirement {
            key,
            operator,
            values,
        }),
        [one] => Err(one.clone()),
        many => Err(format!("[{}]", many.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check(input: &str, expected: Result<&str, &str>) {
        let actual = Selector::parse(input)
            .map(|s| s.to_string())
            .map_err(|e| e.to_string());
        let expected = expected.map(str::to_string).map_err(str::to_string);
        assert_eq!(actual, expected, "input {input:?}");
    }

    #[test]
    fn parses_every_form_to_canonical_text() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("x=a", "x=a"),
            ("x==a", "x==a"),
            ("x!=a", "x!=a"),
            ("x = a , y != b", "x=a,y!=b"),
            ("y,x", "x,y"),
            ("!x", "!x"),
            (" ! x ", "!x"),
            ("x in (b,a,b)", "x in (a,b)"),
            ("x notin (a)", "x notin (a)"),
            ("x in ()", "x in ()"),
            ("x in (,a)", "x in (,a)"),
            ("x in (a,,b)", "x in (,a,b)"),
            ("x=", "x="),
            ("x=,y", "x=,y"),
            ("x>1", "x>1"),
            ("x<10", "x<10"),
            ("in in (in,notin)", "in in (in,notin)"),
            ("example.com/app=web", "example.com/app=web"),
            ("a=b\t,\nc", "a=b,c"),
            ("z=1,a=2,m", "a=2,m,z=1"),
        ];
        for (input, expected) in cases {
            check(input, Ok(expected));
        }
    }

    #[test]
    fn reports_kubernetes_errors() {
        let name_part = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
        let label_value = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
        let cases: Vec<(&str, String)> = vec![
            ("x>a", "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' operators, the value must be an integer".into()),
            ("x=a,", "found '', expected: identifier after ','".into()),
            (",x", "found ',', expected: !, identifier, or 'end of string'".into()),
            ("x=a b", "found 'b', expected: ',' or 'end of string'".into()),
            ("x in a", "unable to parse requirement: found 'a' expected: '('".into()),
            ("x in (a", "unable to parse requirement: found '', expected: ',' or ')'".into()),
            ("x in (a b)", "unable to parse requirement: found 'b', expected: ',' or ')'".into()),
            ("x notin", "unable to parse requirement: found '' expected: '('".into()),
            ("!x=a", "found '=', expected: ',' or 'end of string'".into()),
            ("x (", "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt".into()),
            ("!", "unable to parse requirement: found '', expected: identifier".into()),
            ("x=(", "unable to parse requirement: found '(', expected: identifier".into()),
            ("-x", format!("unable to parse requirement: <nil>: Invalid value: \"-x\": {name_part}")),
            ("x=-a", format!("unable to parse requirement: values[0][x]: Invalid value: \"-a\": {label_value}")),
            (
                "x>-a",
                format!(
                    "unable to parse requirement: [values[0]: Invalid value: \"-a\": for 'Gt', 'Lt' operators, the value must be an integer, values[0][x]: Invalid value: \"-a\": {label_value}]"
                ),
            ),
            ("x=>", "unable to parse requirement: found '>', expected: identifier".into()),
        ];
        for (input, expected) in cases {
            check(input, Err(&expected));
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    type MatchCase<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

    #[test]
    fn matches_like_kubernetes() {
        let cases: &[MatchCase] = &[
            ("", &[], true),
            ("x=a", &[("x", "a")], true),
            ("x=a", &[("x", "b")], false),
            ("x=a", &[], false),
            ("x==a", &[("x", "a")], true),
            ("x!=a", &[("x", "a")], false),
            ("x!=a", &[("x", "b")], true),
            ("x!=a", &[], true),
            ("x in (a,b)", &[("x", "b")], true),
            ("x in (a,b)", &[("x", "c")], false),
            ("x notin (a,b)", &[], true),
            ("x notin (a,b)", &[("x", "a")], false),
            ("x", &[("x", "")], true),
            ("x", &[], false),
            ("!x", &[], true),
            ("!x", &[("x", "a")], false),
            ("x=", &[("x", "")], true),
            ("x>1", &[("x", "2")], true),
            ("x>1", &[("x", "1")], false),
            ("x>1", &[("x", "a")], false),
            ("x<1", &[("x", "-5")], true),
            ("x<1", &[("x", "1")], false),
            ("x<1", &[], false),
            ("x=a,y", &[("x", "a")], false),
            ("x=a,y", &[("x", "a"), ("y", "")], true),
        ];
        for (selector, labels_given, expected) in cases {
            let parsed = Selector::parse(selector).unwrap();
            assert_eq!(
                parsed.matches(&labels(labels_given)),
                *expected,
                "{selector} on {labels_given:?}"
            );
        }
    }

    #[test]
    fn matches_json_labels() {
        let selector = Selector::parse("app=web,!legacy").unwrap();
        assert!(selector.matches_json(Some(&json!({"app": "web"}))));
        assert!(!selector.matches_json(Some(&json!({"app": "web", "legacy": "yes"}))));
        assert!(!selector.matches_json(None));
        assert!(!selector.matches_json(Some(&json!("app=web"))));
        assert!(!selector.matches_json(Some(&json!({"app": 1}))));
        assert!(Selector::parse("!app").unwrap().matches_json(None));
    }

    #[test]
    fn exact_match() {
        let selector = Selector::parse("a=1,b in (2),c in (3,4),d!=5").unwrap();
        assert_eq!(selector.requires_exact_match("a"), Some("1"));
        assert_eq!(selector.requires_exact_match("b"), Some("2"));
        assert_eq!(selector.requires_exact_match("c"), None);
        assert_eq!(selector.requires_exact_match("d"), None);
        assert_eq!(selector.requires_exact_match("e"), None);
    }

    fn key() -> impl Strategy<Value = String> {
        (
            "(([a-z0-9]{1,5}\\.)?[a-z0-9]{1,5}/)?",
            "[A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?",
        )
            .prop_map(|(prefix, name)| format!("{prefix}{name}"))
            .prop_filter("not a keyword", |k| k != "in" && k != "notin")
    }

    fn value() -> impl Strategy<Value = String> {
        "([A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?)?"
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let operator = prop_oneof![
            Just(Operator::Equals),
            Just(Operator::DoubleEquals),
            Just(Operator::NotEquals),
            Just(Operator::In),
            Just(Operator::NotIn),
            Just(Operator::Exists),
            Just(Operator::DoesNotExist),
            Just(Operator::GreaterThan),
            Just(Operator::LessThan),
        ];
        (
            key(),
            operator,
            proptest::collection::vec(value(), 1..4),
            0i64..1000,
        )
            .prop_map(|(key, operator, values, number)| {
                let mut values = match operator {
                    Operator::Exists | Operator::DoesNotExist => Vec::new(),
                    Operator::In | Operator::NotIn => values,
                    Operator::GreaterThan | Operator::LessThan => vec![number.to_string()],
                    _ => values[..1].to_vec(),
                };
                values.sort();
                values.dedup();
                Requirement {
                    key,
                    operator,
                    values,
                }
            })
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(mut requirements in proptest::collection::vec(requirement(), 0..5)) {
            requirements.sort_by(|a, b| a.key.cmp(&b.key));
            let selector = Selector { requirements };
            let reparsed = Selector::parse(&selector.to_string());
            prop_assert_eq!(reparsed, Ok(selector));
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,40}") {
            let _ = Selector::parse(&input).map(|s| s.matches(&BTreeMap::new()));
        }

        #[test]
        fn parse_never_panics_on_selector_alphabet(input in "[a-z!=(), <>in]{0,30}") {
            if let Ok(selector) = Selector::parse(&input) {
                prop_assert_eq!(Selector::parse(&selector.to_string()), Ok(selector));
            }
        }
    }
}
