//! Printing objects as YAML or JSON, the way `kubectl get -o yaml|json` does: one object as
//! itself, several as a `v1` `List`, `metadata.managedFields` left out unless asked for.

use serde_json::{Value, json};

use crate::error::Error;

/// `-o` for `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The server's Table with the kind's printer columns (the default).
    #[value(skip)]
    Table,
    /// The Table with every column, those of priority above zero included.
    Wide,
    Yaml,
    Json,
    /// `kind.group/name` per object.
    Name,
}

/// Removes what `-o yaml|json` does not show by default.
pub fn strip_managed_fields(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
}

/// A `v1` `List` of `items`.
pub fn list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": items,
    })
}

/// YAML text for `value`, ending in a newline.
pub fn to_yaml(value: &Value) -> Result<String, Error> {
    let mut text = serde_saphyr::to_string(value).map_err(|e| Error::EncodeYaml(e.to_string()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Pretty JSON text for `value`, ending in a newline.
pub fn to_json(value: &Value) -> Result<String, Error> {
    let mut text = serde_json::to_string_pretty(value).map_err(Error::Encode)?;
    text.push('\n');
    Ok(text)
}

/// `text` with every line indented by `by` spaces (blank lines stay blank).
pub fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_string()
            } else {
                format!("{pad}{line}\n")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_block_style_and_strings_that_look_like_numbers_stay_strings() {
        let value = json!({"metadata": {"name": "web", "labels": {"v": "1"}}, "spec": {"cpus": 2, "nics": [{"name": "a"}]}});
        let yaml = to_yaml(&value).unwrap();
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, value, "{yaml}");
        assert!(yaml.contains("cpus: 2"), "{yaml}");
    }

    #[test]
    fn managed_fields_are_left_out() {
        let mut object = json!({"metadata": {"name": "a", "managedFields": []}});
        strip_managed_fields(&mut object);
        assert_eq!(object, json!({"metadata": {"name": "a"}}));
    }

    #[test]
    fn indenting_keeps_blank_lines_blank() {
        assert_eq!(indent("a\n\nb\n", 2), "  a\n\n  b\n");
    }
}
