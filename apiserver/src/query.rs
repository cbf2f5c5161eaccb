//! Query parameters parsed the way the Go apiserver parses them: unknown parameters are
//! ignored, empty pairs (`?&limit=2`) are accepted, and booleans are true unless they are `0`
//! or a case-insensitive `false` (so the Python client's `watch=True` counts).

use std::collections::HashMap;

use crate::error::{ApiError, ApiResult, Reason};

#[derive(Debug, Default)]
pub struct Query {
    values: HashMap<String, String>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let mut values = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if k.is_empty() {
                continue;
            }
            // The first occurrence wins, as with Go's url.Values.Get.
            values
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
        Query { values }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// A non-empty string parameter.
    pub fn string(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|s| !s.is_empty())
    }

    pub fn bool(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
        }
    }

    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.string(key) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value for query parameter {key}: {v:?} is not an integer"
                ))
            }),
        }
    }

    /// `dryRun`: only `All` is a valid value, as in Kubernetes.
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::new(
                Reason::Invalid,
                format!("dryRun: Unsupported value: {other:?}: supported values: \"All\""),
            )),
        }
    }
}

/// How to treat unknown fields in a request body (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Reject the request naming the unknown fields.
    Strict,
    /// Drop them and send a warning header (the default, as in Kubernetes).
    Warn,
    /// Drop them silently.
    Ignore,
}

impl FieldValidation {
    /// The directive from the `fieldValidation` parameter's value (`None` when it is absent).
    pub fn parse(value: Option<&str>) -> ApiResult<FieldValidation> {
        match value {
            None | Some("") => Ok(FieldValidation::Warn),
            Some(v) if v.eq_ignore_ascii_case("strict") => Ok(FieldValidation::Strict),
            Some(v) if v.eq_ignore_ascii_case("warn") => Ok(FieldValidation::Warn),
            Some(v) if v.eq_ignore_ascii_case("ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_parse_the_go_way() {
        let q = Query::parse(Some("watch=True&a=0&b=false&c=FALSE&d=1&e=&&limit=2"));
        assert!(q.bool("watch"));
        assert!(!q.bool("a"));
        assert!(!q.bool("b"));
        assert!(!q.bool("c"));
        assert!(q.bool("d"));
        assert!(q.bool("e"));
        assert!(!q.bool("missing"));
        assert_eq!(q.int("limit").unwrap(), Some(2));
    }

    #[test]
    fn empty_pairs_and_encoded_selectors_are_accepted() {
        let q = Query::parse(Some("&labelSelector=app+in+%28a%2Cb%29&"));
        assert_eq!(q.string("labelSelector"), Some("app in (a,b)"));
    }

    #[test]
    fn bad_integers_are_bad_requests() {
        let q = Query::parse(Some("limit=ten"));
        assert_eq!(q.int("limit").unwrap_err().reason, Reason::BadRequest);
    }
}
