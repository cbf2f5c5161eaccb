//! Manifests: reading YAML and JSON documents from files, directories and standard input, each
//! with its [`Origin`] (file, 1-based document number, item of a `List`), so that every error
//! can say where it comes from.
//!
//! - A path that is a directory means its `*.yaml`, `*.yml` and `*.json` files, in name order
//!   (not recursive). `-` means standard input (once).
//! - YAML files hold any number of documents separated by `---` lines. Documents with nothing
//!   but blanks and comments are skipped and not counted.
//! - A file whose first non-blank character is `{` or `[` (or named `*.json`) is JSON: one or
//!   more values; an array's elements are items.
//! - A `kind: List` document (`items: [...]`) stands for its items.
//!
//! A document that does not parse becomes one [`Document`] carrying the error; the other
//! documents of the file are still read (a YAML syntax error spoils only its own document,
//! since document markers are found before parsing). What cannot be read at all (a missing
//! file) is a [`ManifestError`].

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where a document comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The path as given (or inside a given directory), or `<stdin>`.
    pub file: String,
    /// 1-based, counting the non-empty documents of the file.
    pub document: usize,
    /// 1-based index in a `List` document's items (or a JSON array).
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// One document, parsed or not.
#[derive(Clone, Debug)]
pub struct Document {
    pub origin: Origin,
    pub content: Result<Value, DocumentError>,
}

/// What makes a whole command fail before any document is looked at.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading standard input")]
    Stdin(#[source] std::io::Error),
    #[error("standard input (-) may be given only once")]
    StdinTwice,
    #[error("no manifests given (use -f FILE, -f DIRECTORY or -f -)")]
    NoSources,
    #[error("no objects found in {0}")]
    Empty(String),
}

/// What is wrong with one document. Each message names the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("invalid YAML{}: {message}", at_line(*.line))]
    Yaml { line: Option<u64>, message: String },
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("a manifest must be a mapping of fields, not {found}")]
    NotAnObject { found: &'static str },
    #[error("field {field}: Required value")]
    Missing { field: &'static str },
    #[error("field {field}: must be a string")]
    NotAString { field: &'static str },
    #[error("field {field}: must be a mapping")]
    NotAMapping { field: &'static str },
    #[error("field kind: the server does not serve kind {kind:?} in apiVersion {api_version:?}{}", other_versions(.served))]
    UnknownKind {
        api_version: String,
        kind: String,
        /// Versions at which the server does serve the kind.
        served: Vec<String>,
    },
    #[error(
        "field metadata.namespace: the document's namespace {document:?} does not match --namespace {flag:?}"
    )]
    NamespaceMismatch { document: String, flag: String },
    /// The server refused the document.
    #[error("{}", join_causes(.causes, .message))]
    Rejected {
        message: String,
        causes: Vec<FieldCause>,
    },
}

/// One field the server named in a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldCause {
    pub field: String,
    pub message: String,
}

fn at_line(line: Option<u64>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

fn other_versions(served: &[String]) -> String {
    if served.is_empty() {
        String::new()
    } else {
        format!(" (it is served as {})", served.join(", "))
    }
}

fn join_causes(causes: &[FieldCause], message: &str) -> String {
    if causes.is_empty() {
        return message.to_string();
    }
    causes
        .iter()
        .map(|c| format!("field {}: {}", c.field, c.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a document says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// Reads `apiVersion`, `kind`, `metadata.name` and `metadata.namespace` of a document.
pub fn identify(document: &Value) -> Result<Identity, DocumentError> {
    let Value::Object(fields) = document else {
        return Err(DocumentError::NotAnObject {
            found: type_name(document),
        });
    };
    let string = |value: Option<&Value>, field: &'static str| match value {
        None | Some(Value::Null) => Err(DocumentError::Missing { field }),
        Some(Value::String(s)) if s.is_empty() => Err(DocumentError::Missing { field }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(DocumentError::NotAString { field }),
    };
    let api_version = string(fields.get("apiVersion"), "apiVersion")?;
    let kind = string(fields.get("kind"), "kind")?;
    let metadata = match fields.get("metadata") {
        None | Some(Value::Null) => {
            return Err(DocumentError::Missing {
                field: "metadata.name",
            });
        }
        Some(Value::Object(m)) => m,
        Some(_) => return Err(DocumentError::NotAMapping { field: "metadata" }),
    };
    let name = string(metadata.get("name"), "metadata.name")?;
    let namespace = match metadata.get("namespace") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(DocumentError::NotAString {
                field: "metadata.namespace",
            });
        }
    };
    Ok(Identity {
        api_version,
        kind,
        name,
        namespace,
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Every document of `sources` (paths, directories or `-`), in order. `stdin` is read for `-`.
pub fn read(sources: &[String], stdin: &mut dyn Read) -> Result<Vec<Document>, ManifestError> {
    if sources.is_empty() {
        return Err(ManifestError::NoSources);
    }
    let mut documents = Vec::new();
    let mut stdin_read = false;
    for source in sources {
        if source == "-" {
            if stdin_read {
                return Err(ManifestError::StdinTwice);
            }
            stdin_read = true;
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(ManifestError::Stdin)?;
            documents.extend(parse("<stdin>", &text, false));
            continue;
        }
        for path in expand(Path::new(source))? {
            let text = std::fs::read_to_string(&path).map_err(|e| ManifestError::Read {
                path: path.display().to_string(),
                source: e,
            })?;
            let json = path.extension().is_some_and(|e| e == "json");
            documents.extend(parse(&path.display().to_string(), &text, json));
        }
    }
    if documents.is_empty() {
        return Err(ManifestError::Empty(sources.join(", ")));
    }
    Ok(documents)
}

/// A file as itself, a directory as its manifest files in name order.
fn expand(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: path.display().to_string(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let file = entry.path();
        let manifest = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if manifest && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// The documents of one file's text. `json` forces JSON; otherwise JSON is recognised by its
/// first character.
pub fn parse(file: &str, text: &str, json: bool) -> Vec<Document> {
    let first = text.trim_start().chars().next();
    let values: Vec<(usize, Result<Value, DocumentError>)> =
        if json || matches!(first, Some('{') | Some('[')) {
            parse_json(text)
        } else {
            split_yaml(text)
                .into_iter()
                .enumerate()
                .map(|(i, (first_line, chunk))| (i + 1, parse_yaml(&chunk, first_line)))
                .collect()
        };
    let mut documents = Vec::new();
    for (number, content) in values {
        let origin = |item| Origin {
            file: file.to_string(),
            document: number,
            item,
        };
        match content {
            Ok(Value::Array(items)) => {
                documents.extend(items.into_iter().enumerate().map(|(i, item)| Document {
                    origin: origin(Some(i + 1)),
                    content: Ok(item),
                }))
            }
            Ok(value) if is_list(&value) => {
                let items = match value.get("items") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => Vec::new(),
                };
                documents.extend(items.into_iter().enumerate().map(|(i, item)| Document {
                    origin: origin(Some(i + 1)),
                    content: Ok(item),
                }))
            }
            content => documents.push(Document {
                origin: origin(None),
                content,
            }),
        }
    }
    documents
}

/// `kind: List` with an `items` array (any `v1`-ish apiVersion, as kubectl accepts).
fn is_list(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str) == Some("List")
        && value.get("items").is_some_and(Value::is_array)
}

fn parse_json(text: &str) -> Vec<(usize, Result<Value, DocumentError>)> {
    let mut out = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, value) in stream.enumerate() {
        match value {
            Ok(value) => out.push((i + 1, Ok(value))),
            Err(e) => {
                out.push((
                    i + 1,
                    Err(DocumentError::Json {
                        line: e.line(),
                        column: e.column(),
                        message: json_message(&e),
                    }),
                ));
                // A JSON stream cannot be resumed after a syntax error.
                break;
            }
        }
    }
    out
}

/// serde_json's message without its trailing " at line L column C" (the error says it).
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Splits YAML text at document markers: (1-based line of the chunk's first line, chunk).
/// Chunks holding only blanks, comments and directives are dropped.
pub fn split_yaml(text: &str) -> Vec<(usize, String)> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut ended = false;
    let flush = |chunks: &mut Vec<(usize, String)>, current: &mut String, start: usize| {
        if has_content(current) {
            chunks.push((start, std::mem::take(current)));
        } else {
            current.clear();
        }
    };
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if is_marker(line, "---") {
            flush(&mut chunks, &mut current, start);
            ended = false;
            // Content may follow the marker on its line (`--- {a: 1}`); keep it, in place.
            let rest = line[3..].trim_start();
            start = number;
            if !rest.is_empty() && !rest.starts_with('#') {
                current.push_str(rest);
            }
            current.push('\n');
            continue;
        }
        if is_marker(line, "...") {
            flush(&mut chunks, &mut current, start);
            ended = true;
            continue;
        }
        if ended {
            // Between `...` and the next `---` only directives and comments may appear.
            continue;
        }
        if current.is_empty() {
            start = number;
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut chunks, &mut current, start);
    chunks
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#') && !line.starts_with('%')
    })
}

fn parse_yaml(chunk: &str, first_line: usize) -> Result<Value, DocumentError> {
    serde_saphyr::from_str::<Value>(chunk).map_err(|error| {
        let error = error.without_snippet();
        let line = error
            .location()
            .map(|l| l.line())
            .filter(|&l| l > 0)
            .map(|l| l + first_line as u64 - 1);
        let message = error.to_string();
        // The parser's message names a line within the document; the file's line is given
        // separately, so keep only the description.
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        DocumentError::Yaml {
            line,
            message: message.lines().next().unwrap_or("").trim().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml_documents_are_numbered_skipping_empty_ones() {
        let text =
            "# header\n---\napiVersion: v1\nkind: A\n---\n# only a comment\n---\nkind: B\n...\n";
        let documents = parse("f.yaml", text, false);
        let found: Vec<(usize, Value)> = documents
            .into_iter()
            .map(|d| (d.origin.document, d.content.unwrap()))
            .collect();
        assert_eq!(
            found,
            vec![
                (1, json!({"apiVersion": "v1", "kind": "A"})),
                (2, json!({"kind": "B"}))
            ]
        );
    }

    #[test]
    fn a_broken_yaml_document_spoils_only_itself_and_names_its_file_line() {
        let text = "kind: A\n---\nkind: B\nspec: [unclosed\n---\nkind: C\n";
        let documents = parse("f.yaml", text, false);
        assert_eq!(documents.len(), 3);
        assert!(documents[0].content.is_ok());
        assert!(documents[2].content.is_ok());
        match &documents[1].content {
            Err(DocumentError::Yaml { line, message }) => {
                assert!(line.is_some_and(|l| (3..=5).contains(&l)), "{line:?}");
                assert!(!message.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(documents[1].origin.to_string(), "f.yaml: document 2");
    }

    #[test]
    fn json_streams_arrays_and_lists_become_items() {
        let documents = parse(
            "f.json",
            r#"{"kind":"A"} {"kind":"List","items":[{"kind":"B"},{"kind":"C"}]}"#,
            true,
        );
        let origins: Vec<String> = documents.iter().map(|d| d.origin.to_string()).collect();
        assert_eq!(
            origins,
            [
                "f.json: document 1",
                "f.json: document 2, item 1",
                "f.json: document 2, item 2"
            ]
        );
        let documents = parse("<stdin>", "[{\"kind\": \"A\"}]", false);
        assert_eq!(documents[0].origin.item, Some(1));
        let broken = parse("f.json", "{\"kind\": \n  oops}", true);
        assert!(
            matches!(&broken[0].content, Err(DocumentError::Json { line: 2, .. })),
            "{:?}",
            broken[0].content
        );
    }

    #[test]
    fn identify_names_the_missing_or_mistyped_field() {
        let cases = [
            (
                json!({"kind": "A", "metadata": {"name": "a"}}),
                "field apiVersion: Required value",
            ),
            (
                json!({"apiVersion": "v1", "metadata": {"name": "a"}}),
                "field kind: Required value",
            ),
            (
                json!({"apiVersion": "v1", "kind": "A"}),
                "field metadata.name: Required value",
            ),
            (
                json!({"apiVersion": "v1", "kind": "A", "metadata": {}}),
                "field metadata.name: Required value",
            ),
            (
                json!({"apiVersion": 1, "kind": "A", "metadata": {"name": "a"}}),
                "field apiVersion: must be a string",
            ),
            (
                json!({"apiVersion": "v1", "kind": "A", "metadata": {"name": "a", "namespace": 3}}),
                "field metadata.namespace: must be a string",
            ),
            (
                json!("text"),
                "a manifest must be a mapping of fields, not a string",
            ),
        ];
        for (document, expected) in cases {
            assert_eq!(
                identify(&document).unwrap_err().to_string(),
                expected,
                "{document}"
            );
        }
        let found = identify(
            &json!({"apiVersion": "v1", "kind": "A", "metadata": {"name": "a", "namespace": "p"}}),
        )
        .unwrap();
        assert_eq!(found.namespace.as_deref(), Some("p"));
    }

    #[test]
    fn split_keeps_content_after_a_marker_and_line_numbers() {
        let chunks = split_yaml("--- {a: 1}\n---\n\nb: 2\n");
        assert_eq!(
            chunks,
            vec![(1, "{a: 1}\n".to_string()), (2, "\n\nb: 2\n".to_string())]
        );
    }

    #[test]
    fn directories_are_read_in_name_order_and_only_manifest_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "kind: B\n").unwrap();
        std::fs::write(dir.path().join("a.json"), "{\"kind\": \"A\"}").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "kind: X\n").unwrap();
        let documents = read(&[dir.path().display().to_string()], &mut std::io::empty()).unwrap();
        let kinds: Vec<&str> = documents
            .iter()
            .map(|d| d.content.as_ref().unwrap()["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["A", "B"]);
        let missing = read(&["/nonexistent/x.yaml".to_string()], &mut std::io::empty());
        assert!(matches!(missing, Err(ManifestError::Read { .. })));
        let stdin = read(&["-".to_string()], &mut "kind: S\n".as_bytes()).unwrap();
        assert_eq!(stdin[0].origin.file, "<stdin>");
    }
}
