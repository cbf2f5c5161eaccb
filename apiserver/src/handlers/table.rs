//! `meta.k8s.io/v1` Table output from a CRD's additionalPrinterColumns (k8s-api.md §8): the
//! Name column first, `date` cells pre-rendered as ages, `priority` kept so `-o wide` can
//! choose, and each row's object as PartialObjectMetadata unless asked otherwise.

use corral_apimachinery::duration::human_duration;
use serde_json::{Value, json};

use crate::query::Query;
use crate::resource::Version;

/// What each row carries as `object` (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn from_query(query: &Query) -> IncludeObject {
        match query.get("includeObject") {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

pub fn column_definitions(version: &Version) -> Vec<Value> {
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    if version.printer_columns.is_empty() {
        columns.push(json!({
            "name": "Age", "type": "date", "format": "", "priority": 0,
            "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
        }));
    }
    for c in &version.printer_columns {
        columns.push(json!({
            "name": c.name, "type": c.type_, "format": c.format,
            "description": c.description, "priority": c.priority,
        }));
    }
    columns
}

fn age(value: &Value) -> Value {
    let Some(text) = value.as_str() else {
        return Value::Null;
    };
    match text.parse::<jiff::Timestamp>() {
        Ok(then) => {
            let elapsed = jiff::Timestamp::now().duration_since(then);
            let seconds = elapsed.as_secs().max(0) as u64;
            json!(human_duration(std::time::Duration::from_secs(seconds)))
        }
        Err(_) => Value::Null,
    }
}

fn cell(type_: &str, values: Vec<&Value>) -> Value {
    let first = match values.first() {
        None | Some(Value::Null) => return Value::Null,
        Some(v) => *v,
    };
    match type_ {
        "date" => age(first),
        "integer" if first.is_i64() || first.is_u64() => first.clone(),
        "number" if first.is_number() => first.clone(),
        "boolean" if first.is_boolean() => first.clone(),
        _ => {
            // Several matches (a [*] path) print comma-joined, as kubectl's JSONPath does.
            let text: Vec<String> = values
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            json!(text.join(","))
        }
    }
}

pub fn row(version: &Version, object: &Value, include: IncludeObject) -> Value {
    let mut cells = vec![json!(crate::object::name(object))];
    if version.printer_columns.is_empty() {
        cells.push(age(object
            .pointer("/metadata/creationTimestamp")
            .unwrap_or(&Value::Null)));
    }
    for c in &version.printer_columns {
        cells.push(cell(&c.type_, c.json_path.eval(object)));
    }
    let embedded = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => object.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
        }),
    };
    json!({"cells": cells, "object": embedded})
}

/// A whole Table.
pub fn table(version: &Version, rows: Vec<Value>, metadata: Value, with_columns: bool) -> Value {
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "rows": rows,
    });
    t["columnDefinitions"] = if with_columns {
        json!(column_definitions(version))
    } else {
        json!([])
    };
    t
}
