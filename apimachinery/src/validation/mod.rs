//! Kubernetes name rules and field errors, with Kubernetes' exact messages.
//!
//! - Name predicates ([`is_dns1123_subdomain`], [`is_dns1123_label`], [`is_qualified_name`],
//!   [`is_valid_label_value`], …) return the list of violated rules, empty when the value is
//!   valid, worded as `k8s.io/apimachinery/pkg/util/validation` words them.
//! - [`FieldError`] is `field.Error`: a kind, a field path, a detail and the offending value.
//!   Its [`Display`](std::fmt::Display) is `field.Error.Error()` and [`FieldError::error_body`] is
//!   `ErrorBody()`, which is what a `Status` cause carries as its message.
//! - [`validate_object_meta`] and [`validate_object_meta_update`] check `metadata` of a custom
//!   resource as `ValidateObjectMetaAccessor(…, NameIsDNSSubdomain, …)` does, working on the JSON
//!   body so that wrongly typed fields become errors instead of panics.
//!
//! **Invariants:** nothing here panics on any input; lengths are counted in bytes, as Go does.
//!
//! **Not responsible for:** schema validation of `spec`/`status` (see [`crate::schema`]).

mod gofmt;
mod objectmeta;

pub(crate) use gofmt::{float as go_float, quote as go_quote};
pub(crate) use objectmeta::validate_embedded_object_meta;
pub use objectmeta::{validate_object_meta, validate_object_meta_update};

use serde_json::Value;
use std::fmt;

/// Longest DNS-1123 label (and DNS-1035 label, and namespace name).
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// Longest DNS-1123 subdomain (and object name).
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// Longest name part of a qualified name.
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;
/// Longest label value.
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;
/// Largest total size of all annotation keys and values, in bytes.
pub const TOTAL_ANNOTATION_SIZE_LIMIT_BYTES: usize = 256 * 1024;

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";

/// `MaxLenError`.
fn max_len_error(length: usize) -> String {
    format!("must be no more than {length} characters")
}

/// `EmptyError`.
fn empty_error() -> &'static str {
    "must be non-empty"
}

/// `RegexError`: the message, then the examples and the regex Kubernetes validates with.
fn regex_error(msg: &str, regex: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{regex}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(example);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(regex);
    out.push_str("')");
    out
}

/// `^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`
fn matches_qualified_name_part(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
fn matches_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let lower_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            lower_alnum(first)
                && lower_alnum(last)
                && bytes.iter().all(|b| lower_alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
fn matches_dns1123_subdomain(value: &str) -> bool {
    value.split('.').all(matches_dns1123_label)
}

/// `^[a-z]([-a-z0-9]*[a-z0-9])?$`
fn matches_dns1035_label(value: &str) -> bool {
    matches_dns1123_label(value) && value.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// `IsQualifiedName`: the rule for label keys, annotation keys (lower-cased first) and finalizers:
/// an optional DNS subdomain prefix and `/`, then a name of at most 63 characters.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push(format!("prefix part {}", empty_error()));
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push(format!("name part {}", empty_error()));
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH)
        ));
    }
    if !matches_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `IsValidLabelValue`: empty, or a qualified-name part of at most 63 characters.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !value.is_empty() && !matches_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsDNS1123Label`: the rule for namespace names.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !matches_dns1123_label(value) {
        if matches_dns1123_subdomain(value) {
            // A valid subdomain but not a valid label: the length was checked, so it has dots.
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `IsDNS1123Subdomain`: the rule for object names of custom resources.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !matches_dns1123_subdomain(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `IsDNS1035Label`: the rule (after lower-casing) for the `kind` of an embedded resource.
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !matches_dns1035_label(value) {
        errs.push(regex_error(
            DNS1035_LABEL_ERR_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `IsValidPathSegmentName`: the rule for names of embedded resources.
pub fn is_valid_path_segment_name(value: &str) -> Vec<String> {
    if value == "." || value == ".." {
        return vec![format!("may not be '{value}'")];
    }
    is_valid_path_segment_prefix(value)
}

/// `IsValidPathSegmentPrefix`: the rule for `generateName` of embedded resources.
pub fn is_valid_path_segment_prefix(value: &str) -> Vec<String> {
    ["/", "%"]
        .iter()
        .filter(|illegal| value.contains(**illegal))
        .map(|illegal| format!("may not contain '{illegal}'"))
        .collect()
}

/// The kind of a [`FieldError`], Kubernetes' `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldErrorKind {
    /// A required field is missing or empty.
    Required,
    /// The value is wrong.
    Invalid,
    /// The value is not one of an enumerated set.
    NotSupported,
    /// The field may not be set (here, or to this value).
    Forbidden,
    /// The value is too long.
    TooLong,
    /// The list or map has too many items.
    TooMany,
    /// The value duplicates another one in a set.
    Duplicate,
    /// The value has the wrong JSON type.
    TypeInvalid,
}

impl FieldErrorKind {
    /// The `StatusCause.type` Kubernetes sends for this kind (`FieldValueRequired`, …).
    pub fn cause_type(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::Duplicate => "FieldValueDuplicate",
            Self::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    /// The words that open the error body (`Required value`, `Invalid value`, …).
    pub fn description(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::Duplicate => "Duplicate value",
        }
    }
}

/// One validation failure of one field, Kubernetes' `field.Error`.
///
/// `field` is the rendered path (`spec.cpus`, `metadata.labels`, `spec.items[0].name`);
/// `bad_value` is `None` when Kubernetes omits the value from the message.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    pub field: String,
    pub detail: String,
    pub bad_value: Option<Value>,
}

impl FieldError {
    /// `field.Required(path, detail)`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Required,
            field: field.into(),
            detail: detail.into(),
            bad_value: None,
        }
    }

    /// `field.Invalid(path, value, detail)`.
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: FieldErrorKind::Invalid,
            field: field.into(),
            detail: detail.into(),
            bad_value: Some(value.into()),
        }
    }

    /// `field.TypeInvalid(path, value, detail)`.
    pub fn type_invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: FieldErrorKind::TypeInvalid,
            field: field.into(),
            detail: detail.into(),
            bad_value: Some(value.into()),
        }
    }

    /// `field.NotSupported(path, value, valid)`: the detail lists the supported values quoted.
    pub fn not_supported<S: AsRef<str>>(
        field: impl Into<String>,
        value: impl Into<Value>,
        valid: &[S],
    ) -> Self {
        let detail = if valid.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = valid.iter().map(|v| go_quote(v.as_ref())).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self {
            kind: FieldErrorKind::NotSupported,
            field: field.into(),
            detail,
            bad_value: Some(value.into()),
        }
    }

    /// `field.Forbidden(path, detail)`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Forbidden,
            field: field.into(),
            detail: detail.into(),
            bad_value: None,
        }
    }

    /// `field.TooLong(path, _, max_bytes)`: Kubernetes omits the too-long value.
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> Self {
        let detail = if max_bytes == 1 {
            "may not be more than 1 byte".to_string()
        } else {
            format!("may not be more than {max_bytes} bytes")
        };
        Self {
            kind: FieldErrorKind::TooLong,
            field: field.into(),
            detail,
            bad_value: None,
        }
    }

    /// `field.TooMany(path, actual, max)`.
    pub fn too_many(field: impl Into<String>, actual: Option<usize>, max: usize) -> Self {
        let items = if max == 1 { "item" } else { "items" };
        Self {
            kind: FieldErrorKind::TooMany,
            field: field.into(),
            detail: format!("must have at most {max} {items}"),
            bad_value: actual.map(Value::from),
        }
    }

    /// `field.Duplicate(path, value)`.
    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            kind: FieldErrorKind::Duplicate,
            field: field.into(),
            detail: String::new(),
            bad_value: Some(value.into()),
        }
    }

    /// The `StatusCause.type` for this error.
    pub fn cause_type(&self) -> &'static str {
        self.kind.cause_type()
    }

    /// `ErrorBody()`: the message without the field path, as a `Status` cause carries it
    /// (`Invalid value: "x": must be …`, `Required value`).
    pub fn error_body(&self) -> String {
        let mut body = self.kind.description().to_string();
        let omits_value = matches!(
            self.kind,
            FieldErrorKind::Required | FieldErrorKind::Forbidden | FieldErrorKind::TooLong
        );
        if let (false, Some(value)) = (omits_value, &self.bad_value) {
            body.push_str(": ");
            body.push_str(&gofmt::error_value(value));
        }
        if !self.detail.is_empty() {
            body.push_str(": ");
            body.push_str(&self.detail);
        }
        body
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.error_body())
    }
}

impl std::error::Error for FieldError {}

/// `ErrorList.ToAggregate().Error()`: one error as itself, several as `[e1, e2]`, duplicates
/// dropped. The apiserver's 422 message is `Kind.group "name" is invalid: ` followed by this.
pub fn aggregate_message(errors: &[FieldError]) -> String {
    let mut seen = std::collections::HashSet::new();
    let messages: Vec<String> = errors
        .iter()
        .map(ToString::to_string)
        .filter(|m| seen.insert(m.clone()))
        .collect();
    match messages.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// Field-path rendering, as `field.Path` prints it.
pub(crate) mod path {
    /// `path.Child(name)`: `a.b`, or `b` at the root.
    pub fn child(path: &str, name: &str) -> String {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    }

    /// `path.Index(i)`: `a[0]`.
    pub fn index(path: &str, i: usize) -> String {
        format!("{path}[{i}]")
    }

    /// `path.Key(k)`: `a[k]`.
    pub fn key(path: &str, key: &str) -> String {
        format!("{path}[{key}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    const NAME_PART_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

    fn check(f: fn(&str) -> Vec<String>, input: &str, expected: &[&str]) {
        assert_eq!(f(input), expected, "input {input:?}");
    }

    #[test]
    fn dns1123_subdomain_accepts_lowercase_dotted_names() {
        for ok in ["a", "abc", "a-b", "a.b", "0", "a1.b2-c3", &"a".repeat(253)] {
            check(is_dns1123_subdomain, ok, &[]);
        }
        for bad in ["", "A", "-a", "a-", "a..b", ".a", "a.", "a_b", "ä", "a/b"] {
            check(is_dns1123_subdomain, bad, &[SUBDOMAIN_MSG]);
        }
        check(
            is_dns1123_subdomain,
            &"a".repeat(254),
            &["must be no more than 253 characters"],
        );
    }

    #[test]
    fn dns1123_label_rejects_dots_with_its_own_message() {
        check(is_dns1123_label, "default", &[]);
        check(is_dns1123_label, "a.b", &["must not contain dots"]);
        check(
            is_dns1123_label,
            "A",
            &[
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            ],
        );
        assert_eq!(
            is_dns1123_label(&"a".repeat(64)),
            vec!["must be no more than 63 characters".to_string()]
        );
    }

    #[test]
    fn qualified_name_rules() {
        for ok in [
            "a",
            "A_b.c-D",
            "example.com/MyName",
            "kubernetes",
            "foregroundDeletion",
            "x/y",
        ] {
            check(is_qualified_name, ok, &[]);
        }
        check(
            is_qualified_name,
            "",
            &["name part must be non-empty", NAME_PART_MSG],
        );
        check(is_qualified_name, "-a", &[NAME_PART_MSG]);
        check(is_qualified_name, "/a", &["prefix part must be non-empty"]);
        check(
            is_qualified_name,
            "Example.com/a",
            &[&format!("prefix part {SUBDOMAIN_MSG}")],
        );
        check(
            is_qualified_name,
            "a/b/c",
            &[
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
            ],
        );
        let long = "a".repeat(64);
        check(
            is_qualified_name,
            &long,
            &["name part must be no more than 63 characters"],
        );
    }

    #[test]
    fn label_value_rules() {
        for ok in ["", "a", "MyValue", "my_value", "12345", &"a".repeat(63)] {
            check(is_valid_label_value, ok, &[]);
        }
        let msg = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
        check(is_valid_label_value, "a b", &[msg]);
        check(is_valid_label_value, "_a", &[msg]);
        check(
            is_valid_label_value,
            &"a".repeat(64),
            &["must be no more than 63 characters"],
        );
    }

    #[test]
    fn path_segment_names() {
        check(is_valid_path_segment_name, "a", &[]);
        check(is_valid_path_segment_name, "..", &["may not be '..'"]);
        check(
            is_valid_path_segment_name,
            "a/b%",
            &["may not contain '/'", "may not contain '%'"],
        );
    }

    #[test]
    fn field_error_display_matches_kubernetes() {
        let cases = [
            (
                FieldError::required("metadata.name", "name or generateName is required"),
                "metadata.name: Required value: name or generateName is required",
            ),
            (
                FieldError::required("spec.cpus", ""),
                "spec.cpus: Required value",
            ),
            (
                FieldError::invalid("spec.cpus", "x", "must be an integer"),
                r#"spec.cpus: Invalid value: "x": must be an integer"#,
            ),
            (
                FieldError::type_invalid(
                    "spec.cpus",
                    "string",
                    "spec.cpus in body must be of type integer: \"string\"",
                ),
                r#"spec.cpus: Invalid value: "string": spec.cpus in body must be of type integer: "string""#,
            ),
            (
                FieldError::not_supported("spec.state", "x", &["A", "B"]),
                r#"spec.state: Unsupported value: "x": supported values: "A", "B""#,
            ),
            (
                FieldError::forbidden("metadata.namespace", "not allowed on this type"),
                "metadata.namespace: Forbidden: not allowed on this type",
            ),
            (
                FieldError::too_long("metadata.annotations", 262144),
                "metadata.annotations: Too long: may not be more than 262144 bytes",
            ),
            (
                FieldError::too_many("spec.items", Some(5), 3),
                "spec.items: Too many: 5: must have at most 3 items",
            ),
            (
                FieldError::duplicate("spec.tags[1]", "a"),
                r#"spec.tags[1]: Duplicate value: "a""#,
            ),
            (
                FieldError::invalid("spec.x", Value::Null, "bad"),
                r#"spec.x: Invalid value: "null": bad"#,
            ),
            (
                FieldError::invalid("spec.x", json!(3), "bad"),
                "spec.x: Invalid value: 3: bad",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn cause_types_are_kubernetes_strings() {
        let cases = [
            (FieldErrorKind::Required, "FieldValueRequired"),
            (FieldErrorKind::Invalid, "FieldValueInvalid"),
            (FieldErrorKind::NotSupported, "FieldValueNotSupported"),
            (FieldErrorKind::Forbidden, "FieldValueForbidden"),
            (FieldErrorKind::TooLong, "FieldValueTooLong"),
            (FieldErrorKind::TooMany, "FieldValueTooMany"),
            (FieldErrorKind::Duplicate, "FieldValueDuplicate"),
            (FieldErrorKind::TypeInvalid, "FieldValueTypeInvalid"),
        ];
        for (kind, expected) in cases {
            assert_eq!(kind.cause_type(), expected);
        }
    }

    #[test]
    fn aggregate_message_brackets_several_and_drops_duplicates() {
        let a = FieldError::required("a", "");
        let b = FieldError::required("b", "");
        assert_eq!(aggregate_message(&[]), "");
        assert_eq!(
            aggregate_message(std::slice::from_ref(&a)),
            "a: Required value"
        );
        assert_eq!(
            aggregate_message(&[a.clone(), b, a]),
            "[a: Required value, b: Required value]"
        );
    }

    proptest::proptest! {
        #[test]
        fn name_predicates_never_panic(s in "\\PC*") {
            let _ = is_qualified_name(&s);
            let _ = is_valid_label_value(&s);
            let _ = is_dns1123_label(&s);
            let _ = is_dns1123_subdomain(&s);
            let _ = is_dns1035_label(&s);
        }

        #[test]
        fn valid_subdomains_are_lowercase_ascii(s in "[a-z0-9.-]{0,20}") {
            let valid = is_dns1123_subdomain(&s).is_empty();
            let expected = !s.is_empty() && s.split('.').all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
            proptest::prop_assert_eq!(valid, expected);
        }
    }
}
