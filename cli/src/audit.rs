//! `corralctl audit`: who changed what, and when — the API server's audit trail (`GET /audit`,
//! docs/security.md "Audit"), oldest first: every request that changed state or tried to, with
//! its user (and whom it impersonated), verb, object, answer and program.
//!
//! `--resource` takes any name the server knows the kind by (`sled`, `sleds`, `Sled`); the
//! trail records plurals.

use serde_json::Value;

use crate::command::{Outcome, Terminal};
use crate::context::Context;
use crate::error::Error;
use crate::output::{self, OutputFormat};
use crate::table;

pub struct AuditOptions {
    pub resource: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub user: Option<String>,
    pub verb: Option<String>,
    pub limit: usize,
    pub output: Option<OutputFormat>,
}

/// The request path for `options`, the resource already a plural.
pub fn path(options: &AuditOptions, resource: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let pairs = [
        ("resource", resource),
        ("namespace", options.namespace.as_deref()),
        ("name", options.name.as_deref()),
        ("user", options.user.as_deref()),
        ("verb", options.verb.as_deref()),
    ];
    for (key, value) in pairs {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    query.append_pair("limit", &options.limit.to_string());
    format!("/audit?{}", query.finish())
}

/// The table's header and one row per audit Event.
pub fn rows(events: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![
        ["TIME", "USER", "VERB", "OBJECT", "CODE", "AGENT"]
            .map(String::from)
            .to_vec(),
    ];
    for event in events {
        let text = |pointer: &str| {
            event
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let user = match event.pointer("/impersonatedUser/username") {
            Some(Value::String(acting)) => {
                format!("{acting} (as {})", text("/user/username"))
            }
            _ => text("/user/username"),
        };
        let object = match event.get("objectRef") {
            Some(object) => {
                let at = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or("");
                let mut named = at("resource").to_string();
                if !at("name").is_empty() {
                    named = format!("{named}/{}", at("name"));
                }
                if !at("subresource").is_empty() {
                    named = format!("{named}/{}", at("subresource"));
                }
                if !at("namespace").is_empty() {
                    named = format!("{}/{named}", at("namespace"));
                }
                named
            }
            None => text("/requestURI"),
        };
        let time = text("/requestReceivedTimestamp");
        rows.push(vec![
            // Seconds are enough to read; the Event keeps microseconds.
            time.split('.').next().unwrap_or(&time).to_string() + "Z",
            if user.is_empty() {
                table::NONE.to_string()
            } else {
                user
            },
            text("/verb"),
            object,
            event
                .pointer("/responseStatus/code")
                .and_then(Value::as_u64)
                .map_or_else(|| table::NONE.to_string(), |c| c.to_string()),
            text("/userAgent"),
        ]);
    }
    rows
}

pub async fn audit(
    ctx: &Context,
    options: &AuditOptions,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let resource = match &options.resource {
        Some(word) => Some(match ctx.resolve(word).await {
            Ok(found) => found.api_resource.plural.clone(),
            // A kind no longer served may still be in the trail.
            Err(Error::UnknownResource(_)) => word.clone(),
            Err(error) => return Err(error),
        }),
        None => None,
    };
    let request = http::Request::get(path(options, resource.as_deref()))
        .body(Vec::new())
        .map_err(|e| Error::Usage(format!("building the request: {e}")))?;
    let list: Value = ctx
        .client
        .request(request)
        .await
        .map_err(Error::api("reading the audit trail"))?;
    let events = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match options.output {
        None | Some(OutputFormat::Table) | Some(OutputFormat::Wide) => {
            if events.is_empty() {
                writeln!(term.err, "No audit events found.")?;
                return Ok(Outcome::Succeeded);
            }
            let rows = rows(&events);
            let headers: Vec<&str> = rows[0].iter().map(String::as_str).collect();
            write!(term.out, "{}", table::render(&headers, &rows[1..]))?;
        }
        Some(OutputFormat::Json) => writeln!(term.out, "{}", output::to_json(&list)?)?,
        Some(OutputFormat::Yaml) => write!(term.out, "{}", output::to_yaml(&list)?)?,
        Some(OutputFormat::Name) => {
            return Err(Error::Usage(
                "audit prints a table, -o json or -o yaml".into(),
            ));
        }
    }
    Ok(Outcome::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_query_names_what_is_asked_and_escapes_it() {
        let options = AuditOptions {
            resource: Some("sled".into()),
            name: Some("sled 1".into()),
            namespace: None,
            user: Some("alice".into()),
            verb: None,
            limit: 50,
            output: None,
        };
        assert_eq!(
            path(&options, Some("sleds")),
            "/audit?resource=sleds&name=sled+1&user=alice&limit=50"
        );
    }

    #[test]
    fn a_row_names_the_acting_user_the_object_and_the_answer() {
        let events = [
            json!({
                "requestReceivedTimestamp": "2026-12-03T12:00:01.123456Z",
                "user": {"username": "admin"},
                "impersonatedUser": {"username": "alice"},
                "verb": "patch",
                "objectRef": {"resource": "sleds", "name": "sled-1"},
                "responseStatus": {"code": 200},
                "userAgent": "corralctl/0.1.0 (cordon)",
            }),
            json!({
                "requestReceivedTimestamp": "2026-12-03T12:00:02.000001Z",
                "user": {"username": "bob"},
                "verb": "create",
                "objectRef": {"resource": "instances", "namespace": "team-a", "name": "web",
                              "subresource": "status"},
                "responseStatus": {"code": 403},
            }),
        ];
        let rows = rows(&events);
        assert_eq!(
            rows[1],
            [
                "2026-12-03T12:00:01Z",
                "alice (as admin)",
                "patch",
                "sleds/sled-1",
                "200",
                "corralctl/0.1.0 (cordon)"
            ]
        );
        assert_eq!(rows[2][1], "bob");
        assert_eq!(rows[2][3], "team-a/instances/web/status");
        assert_eq!(rows[2][4], "403");
    }
}
