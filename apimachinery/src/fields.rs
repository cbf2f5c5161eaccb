//! Field selectors (`?fieldSelector=`), parsed and matched as `k8s.io/apimachinery/pkg/fields`
//! does.
//!
//! Syntax: terms joined by commas, each `field=value`, `field==value` or `field!=value`. There
//! is no whitespace trimming. In a value, `\,`, `\=` and `\\` stand for `,`, `=` and `\`; any
//! other escape, an unescaped `,` or `=`, or a trailing `\` is an error. The field name is taken
//! up to the first operator and is not unescaped.
//!
//! An object is selected if (and only if) every term holds, where a field the object does not
//! have reads as the empty string (Kubernetes' `fields.Set` semantics): `f=` selects objects
//! without `f`, and `f!=v` selects them too.
//!
//! **Invariants:** terms are kept in Kubernetes' order (sorted by their raw text);
//! [`Display`](std::fmt::Display) re-escapes values and writes `==` as `=`, so
//! `parse(display(s))` selects exactly what `s` selects. Parsing never panics.
//!
//! **Not responsible for:** which fields exist. The API server checks each
//! [`Requirement::field`] against `metadata.name`, `metadata.namespace` and the CRD's
//! `selectableFields` and answers 400 `field label not supported: …` itself.

use std::fmt;

/// A field selector that failed to parse; the messages are Kubernetes'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A term has no operator.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    InvalidTerm { selector: String, term: String },
    /// A value contains an escape other than `\,`, `\=`, `\\`, or ends in `\`.
    #[error("invalid field selector: invalid escape sequence: {sequence}")]
    InvalidEscape { sequence: String },
    /// A value contains an unescaped `,` or `=`.
    #[error("invalid field selector: unescaped character in value: {character:?}")]
    UnescapedCharacter { character: char },
}

/// The operator of one term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `f=v`
    Equals,
    /// `f==v`
    DoubleEquals,
    /// `f!=v`
    NotEquals,
}

impl Operator {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equals => "=",
            Self::DoubleEquals => "==",
            Self::NotEquals => "!=",
        }
    }
}

/// One term: a field, an operator and the (unescaped) value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub field: String,
    pub operator: Operator,
    pub value: String,
}

impl Requirement {
    /// Whether the field's value (`None`: the object has no such field) satisfies the term.
    pub fn matches(&self, actual: Option<&str>) -> bool {
        let equal = actual.unwrap_or("") == self.value;
        match self.operator {
            Operator::Equals | Operator::DoubleEquals => equal,
            Operator::NotEquals => !equal,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let operator = if self.operator == Operator::NotEquals {
            "!="
        } else {
            "="
        };
        write!(f, "{}{operator}{}", self.field, escape_value(&self.value))
    }
}

/// A parsed field selector: the conjunction of its terms. The empty selector selects
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldSelector {
    requirements: Vec<Requirement>,
}

impl FieldSelector {
    /// The selector that selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses a field selector; the empty string (and empty terms) select everything.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut terms = split_terms(selector);
        terms.sort_unstable();
        let mut requirements = Vec::new();
        for term in terms.into_iter().filter(|t| !t.is_empty()) {
            let Some((field, operator, raw_value)) = split_term(term) else {
                return Err(SelectorError::InvalidTerm {
                    selector: selector.to_string(),
                    term: term.to_string(),
                });
            };
            requirements.push(Requirement {
                field: field.to_string(),
                operator,
                value: unescape_value(raw_value)?,
            });
        }
        Ok(Self { requirements })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The terms, each a (field, operator, value) the server can check is supported.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether an object whose field values `get` returns is selected.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches(get(&r.field).as_deref()))
    }

    /// The single value the selector requires `field` to have (`metadata.name=n`), if any.
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator != Operator::NotEquals)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
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

impl std::str::FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `EscapeValue`: `\` → `\\`, `,` → `\,`, `=` → `\=`.
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `UnescapeValue`.
pub fn unescape_value(value: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('\\' | ',' | '=')) => out.push(escaped),
                Some(other) => {
                    return Err(SelectorError::InvalidEscape {
                        sequence: format!("\\{other}"),
                    });
                }
                None => {
                    return Err(SelectorError::InvalidEscape {
                        sequence: "\\".to_string(),
                    });
                }
            },
            ',' | '=' => return Err(SelectorError::UnescapedCharacter { character: c }),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Splits on commas that are not escaped; escapes stay in the terms.
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in selector.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits a term at the first operator (`!=`, then `==`, then `=` at each position).
fn split_term(term: &str) -> Option<(&str, Operator, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for operator in [
            Operator::NotEquals,
            Operator::DoubleEquals,
            Operator::Equals,
        ] {
            if let Some(value) = rest.strip_prefix(operator.as_str()) {
                return Some((&term[..i], operator, value));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn check(input: &str, expected: Result<&[(&str, Operator, &str)], &str>) {
        let actual = FieldSelector::parse(input)
            .map(|s| {
                s.requirements()
                    .iter()
                    .map(|r| (r.field.clone(), r.operator, r.value.clone()))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.to_string());
        let expected = expected
            .map(|terms| {
                terms
                    .iter()
                    .map(|(f, o, v)| (f.to_string(), *o, v.to_string()))
                    .collect::<Vec<_>>()
            })
            .map_err(str::to_string);
        assert_eq!(actual, expected, "input {input:?}");
    }

    #[test]
    fn parses_terms() {
        use Operator::*;
        check("", Ok(&[]));
        check(",", Ok(&[]));
        check("metadata.name=web", Ok(&[("metadata.name", Equals, "web")]));
        check(
            "metadata.name==web",
            Ok(&[("metadata.name", DoubleEquals, "web")]),
        );
        check(
            "spec.state!=Running",
            Ok(&[("spec.state", NotEquals, "Running")]),
        );
        check("b=1,a=2", Ok(&[("a", Equals, "2"), ("b", Equals, "1")]));
        check("a=", Ok(&[("a", Equals, "")]));
        check("=v", Ok(&[("", Equals, "v")]));
        check(" a = b ", Ok(&[(" a ", Equals, " b ")]));
        check(r"a=x\,y\=z\\", Ok(&[("a", Equals, r"x,y=z\")]));
        check(
            r"a=1\,2,b=3",
            Ok(&[("a", Equals, "1,2"), ("b", Equals, "3")]),
        );
    }

    #[test]
    fn reports_kubernetes_errors() {
        check("a", Err("invalid selector: 'a'; can't understand 'a'"));
        check(
            "x=1,a",
            Err("invalid selector: 'x=1,a'; can't understand 'a'"),
        );
        check(
            r"a=\x",
            Err(r"invalid field selector: invalid escape sequence: \x"),
        );
        check(
            r"a=x\",
            Err(r"invalid field selector: invalid escape sequence: \"),
        );
        check(
            "a=b=c",
            Err("invalid field selector: unescaped character in value: '='"),
        );
        check(
            "a==b=c",
            Err("invalid field selector: unescaped character in value: '='"),
        );
    }

    #[test]
    fn display_escapes_and_normalizes() {
        let selector = FieldSelector::parse(r"b!=x\,y,a==1").unwrap();
        assert_eq!(selector.to_string(), r"a=1,b!=x\,y");
    }

    #[test]
    fn matches_missing_fields_as_empty() {
        let fields: BTreeMap<&str, &str> =
            [("metadata.name", "web"), ("spec.state", "Running")].into();
        let get = |f: &str| fields.get(f).map(|v| v.to_string());
        let cases = [
            ("", true),
            ("metadata.name=web", true),
            ("metadata.name==web", true),
            ("metadata.name=db", false),
            ("metadata.name!=db", true),
            ("metadata.name=web,spec.state=Running", true),
            ("metadata.name=web,spec.state=Stopped", false),
            ("spec.missing=", true),
            ("spec.missing!=x", true),
            ("spec.missing=x", false),
        ];
        for (selector, expected) in cases {
            assert_eq!(
                FieldSelector::parse(selector).unwrap().matches(get),
                expected,
                "{selector}"
            );
        }
    }

    #[test]
    fn exact_match() {
        let selector = FieldSelector::parse("metadata.name=n,spec.x!=y").unwrap();
        assert_eq!(selector.requires_exact_match("metadata.name"), Some("n"));
        assert_eq!(selector.requires_exact_match("spec.x"), None);
    }

    proptest! {
        #[test]
        fn escape_then_unescape_round_trips(value in "\\PC{0,30}") {
            prop_assert_eq!(unescape_value(&escape_value(&value)), Ok(value));
        }

        #[test]
        fn display_then_parse_selects_the_same(
            terms in proptest::collection::vec(("[a-z.]{1,8}", any::<bool>(), "[a-z,=\\\\!]{0,6}"), 0..4)
        ) {
            let requirements: Vec<Requirement> = terms
                .into_iter()
                .map(|(field, negated, value)| Requirement {
                    field,
                    operator: if negated { Operator::NotEquals } else { Operator::Equals },
                    value,
                })
                .collect();
            let text = FieldSelector { requirements: requirements.clone() }.to_string();
            let reparsed = FieldSelector::parse(&text).unwrap();
            let mut expected = requirements;
            expected.sort_by_key(|r| r.to_string());
            prop_assert_eq!(reparsed.requirements(), expected.as_slice());
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,40}") {
            let _ = FieldSelector::parse(&input).map(|s| s.matches(|_| None));
        }
    }
}
