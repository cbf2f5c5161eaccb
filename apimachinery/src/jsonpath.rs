//! The JSONPath subset Kubernetes uses for `additionalPrinterColumns` and `selectableFields`
//! (client-go's `util/jsonpath` syntax), evaluated on JSON values.
//!
//! Supported, with or without `{…}` around the whole path and with an optional leading `$`:
//! - `.a.b` fields, `.a\.b` or `['a.b']` / `["a.b"]` for names with dots, `['a','b']` unions;
//! - `[0]`, `[-1]` (from the end), `[1:3]`, `[::2]` slices of arrays;
//! - `[*]` and `.*`: every item of an array or every value of an object;
//! - `..name`: recursive descent;
//! - filters on arrays: `[?(@.type=="Ready")]` with `==`, `!=`, `<`, `<=`, `>`, `>=` against a
//!   string, number, boolean or `null` literal, and `[?(@.status)]` (exists).
//!
//! Evaluation is that of client-go with `AllowMissingKeys(true)`, as the table convertor uses
//! it: anything missing (a key, an index out of range, a field of a non-object) contributes no
//! result, and a filter item whose left side is missing is skipped, whatever the operator.
//!
//! **Invariants:** parsing and evaluation never panic; results borrow from the evaluated value
//! and come in document order.
//!
//! **Not responsible for:** templates with text around `{…}`, `range`/`end`, or functions.

use serde_json::Value;
use std::cmp::Ordering;

/// How deeply filters may nest (`[?(@.a[?(@.b)])]` is depth 2), so that parsing a hostile path
/// cannot exhaust the stack.
const MAX_FILTER_DEPTH: usize = 16;

/// A path that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath {input:?} at offset {position}: {message}")]
pub struct JsonPathError {
    input: String,
    position: usize,
    message: String,
}

/// A parsed JSONPath.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// `.name` or `['name']`, or a union `['a','b']`.
    Fields(Vec<String>),
    /// `.*` or `[*]`.
    Wildcard,
    /// `..`: the value and all its descendants, in document order.
    RecursiveDescent,
    /// `[i]`.
    Index(i64),
    /// `[start:end:step]`.
    Slice {
        start: Option<i64>,
        end: Option<i64>,
        step: i64,
    },
    /// `[?(…)]`.
    Filter(Box<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    left: Operand,
    comparison: Option<(Comparison, Operand)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// `@…`: a path relative to the filtered item.
    Current(Vec<Segment>),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Comparison {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

impl JsonPath {
    /// Parses a path such as `.status.conditions[?(@.type=="Ready")].status` or
    /// `{.spec.replicas}`.
    pub fn parse(input: &str) -> Result<Self, JsonPathError> {
        let mut parser = Parser {
            input,
            chars: input.chars().collect(),
            position: 0,
        };
        parser.skip_spaces();
        let braced = parser.eat('{');
        parser.skip_spaces();
        parser.eat('$');
        // A bare leading name (`metadata.name`) is read as a field, as kubectl tolerates it.
        if parser.peek().is_some_and(is_name_char) {
            let name = parser.name()?;
            let mut segments = vec![Segment::Fields(vec![name])];
            segments.extend(parser.segments(0)?);
            return parser.finish(braced, segments);
        }
        let segments = parser.segments(0)?;
        parser.finish(braced, segments)
    }

    /// Every value the path selects in `root`, in document order.
    pub fn eval<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        eval_segments(&self.segments, vec![root])
    }

    /// The field names, when the path is a plain chain of fields (`.spec.color`), as
    /// `selectableFields` require; `None` otherwise.
    pub fn as_field_path(&self) -> Option<Vec<&str>> {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Fields(names) if names.len() == 1 => Some(names[0].as_str()),
                _ => None,
            })
            .collect()
    }
}

impl std::str::FromStr for JsonPath {
    type Err = JsonPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn is_name_char(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '.' | '['
                | ']'
                | '('
                | ')'
                | '{'
                | '}'
                | '\''
                | '"'
                | '='
                | '!'
                | '<'
                | '>'
                | ','
                | '*'
                | '@'
                | '?'
                | '$'
                | ':'
        )
}

struct Parser<'i> {
    input: &'i str,
    chars: Vec<char>,
    position: usize,
}

impl Parser<'_> {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, JsonPathError> {
        Err(JsonPathError {
            input: self.input.to_string(),
            position: self.position,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.position).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.position + offset).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), JsonPathError> {
        if self.eat(c) {
            Ok(())
        } else {
            self.error(format!("expected '{c}'"))
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.position += 1;
        }
    }

    fn finish(&mut self, braced: bool, segments: Vec<Segment>) -> Result<JsonPath, JsonPathError> {
        self.skip_spaces();
        if braced {
            self.expect('}')?;
            self.skip_spaces();
        }
        if self.peek().is_some() {
            return self.error("unexpected character");
        }
        Ok(JsonPath { segments })
    }

    /// Segments until something that cannot start one.
    fn segments(&mut self, depth: usize) -> Result<Vec<Segment>, JsonPathError> {
        let mut segments = Vec::new();
        loop {
            match self.peek() {
                Some('.') => {
                    self.position += 1;
                    if self.eat('.') {
                        segments.push(Segment::RecursiveDescent);
                        if self.peek() == Some('[') {
                            continue;
                        }
                    }
                    match self.peek() {
                        Some('*') => {
                            self.position += 1;
                            segments.push(Segment::Wildcard);
                        }
                        Some(c) if is_name_char(c) || c == '\\' => {
                            segments.push(Segment::Fields(vec![self.name()?]))
                        }
                        // `.[0]` and a trailing `.` (`{.}`, the whole object) add nothing.
                        Some('[') => {}
                        _ if segments.last() == Some(&Segment::RecursiveDescent) => {
                            return self.error("expected a field name after '..'");
                        }
                        _ => {}
                    }
                }
                Some('[') => segments.push(self.bracket(depth)?),
                _ => return Ok(segments),
            }
        }
    }

    /// A field name; `\x` stands for `x`, so `\.` is a literal dot.
    fn name(&mut self) -> Result<String, JsonPathError> {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c == '\\' {
                match self.peek_at(1) {
                    Some(escaped) => {
                        name.push(escaped);
                        self.position += 2;
                    }
                    None => return self.error("dangling '\\'"),
                }
            } else if is_name_char(c) {
                name.push(c);
                self.position += 1;
            } else {
                break;
            }
        }
        if name.is_empty() {
            return self.error("expected a field name");
        }
        Ok(name)
    }

    fn bracket(&mut self, depth: usize) -> Result<Segment, JsonPathError> {
        self.expect('[')?;
        self.skip_spaces();
        let segment = match self.peek() {
            Some('*') => {
                self.position += 1;
                Segment::Wildcard
            }
            Some('?') => {
                if depth >= MAX_FILTER_DEPTH {
                    return self.error("filters nested too deeply");
                }
                self.position += 1;
                self.skip_spaces();
                self.expect('(')?;
                let filter = self.filter(depth + 1)?;
                self.skip_spaces();
                self.expect(')')?;
                Segment::Filter(Box::new(filter))
            }
            Some('\'' | '"') => {
                let mut names = vec![self.quoted()?];
                self.skip_spaces();
                while self.eat(',') {
                    self.skip_spaces();
                    names.push(self.quoted()?);
                    self.skip_spaces();
                }
                Segment::Fields(names)
            }
            _ => self.index_or_slice()?,
        };
        self.skip_spaces();
        self.expect(']')?;
        Ok(segment)
    }

    fn quoted(&mut self) -> Result<String, JsonPathError> {
        let Some(quote @ ('\'' | '"')) = self.peek() else {
            return self.error("expected a quoted string");
        };
        self.position += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return self.error("unterminated string"),
                Some('\\') => {
                    let Some(escaped) = self.peek_at(1) else {
                        return self.error("unterminated string");
                    };
                    text.push(escaped);
                    self.position += 2;
                }
                Some(c) if c == quote => {
                    self.position += 1;
                    return Ok(text);
                }
                Some(c) => {
                    text.push(c);
                    self.position += 1;
                }
            }
        }
    }

    fn integer(&mut self) -> Result<Option<i64>, JsonPathError> {
        self.skip_spaces();
        let start = self.position;
        if self.peek() == Some('-') {
            self.position += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.position += 1;
        }
        let text: String = self.chars[start..self.position].iter().collect();
        self.skip_spaces();
        if text.is_empty() {
            return Ok(None);
        }
        match text.parse::<i64>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => self.error(format!("invalid array index {text:?}")),
        }
    }

    fn index_or_slice(&mut self) -> Result<Segment, JsonPathError> {
        let start = self.integer()?;
        if !self.eat(':') {
            return match start {
                Some(index) => Ok(Segment::Index(index)),
                None => self.error("expected an index, a slice, '*', a filter or a quoted name"),
            };
        }
        let end = self.integer()?;
        let step = if self.eat(':') {
            self.integer()?.unwrap_or(1)
        } else {
            1
        };
        if step <= 0 {
            return self.error("slice step must be positive");
        }
        Ok(Segment::Slice { start, end, step })
    }

    fn filter(&mut self, depth: usize) -> Result<Filter, JsonPathError> {
        self.skip_spaces();
        let left = self.operand(depth)?;
        self.skip_spaces();
        let comparison = match (self.peek(), self.peek_at(1)) {
            (Some('='), Some('=')) => Some((Comparison::Equal, 2)),
            (Some('!'), Some('=')) => Some((Comparison::NotEqual, 2)),
            (Some('<'), Some('=')) => Some((Comparison::LessEqual, 2)),
            (Some('>'), Some('=')) => Some((Comparison::GreaterEqual, 2)),
            (Some('<'), _) => Some((Comparison::Less, 1)),
            (Some('>'), _) => Some((Comparison::Greater, 1)),
            _ => None,
        };
        let comparison = match comparison {
            Some((comparison, width)) => {
                self.position += width;
                self.skip_spaces();
                Some((comparison, self.operand(depth)?))
            }
            None => None,
        };
        Ok(Filter { left, comparison })
    }

    fn operand(&mut self, depth: usize) -> Result<Operand, JsonPathError> {
        match self.peek() {
            Some('@') => {
                self.position += 1;
                Ok(Operand::Current(self.segments(depth)?))
            }
            Some('\'' | '"') => Ok(Operand::Literal(Value::String(self.quoted()?))),
            _ => {
                let start = self.position;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.'))
                {
                    self.position += 1;
                }
                let word: String = self.chars[start..self.position].iter().collect();
                let literal = match word.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "null" | "nil" => Value::Null,
                    _ => match serde_json::from_str::<serde_json::Number>(&word) {
                        Ok(n) => Value::Number(n),
                        Err(_) => {
                            self.position = start;
                            return self.error(
                                "expected '@', a quoted string, a number, true, false or null",
                            );
                        }
                    },
                };
                Ok(Operand::Literal(literal))
            }
        }
    }
}

fn eval_segments<'a>(segments: &[Segment], mut current: Vec<&'a Value>) -> Vec<&'a Value> {
    for segment in segments {
        let mut next = Vec::new();
        for value in current {
            eval_segment(segment, value, &mut next);
        }
        current = next;
    }
    current
}

fn eval_segment<'a>(segment: &Segment, value: &'a Value, out: &mut Vec<&'a Value>) {
    match segment {
        Segment::Fields(names) => {
            if let Value::Object(map) = value {
                out.extend(names.iter().filter_map(|name| map.get(name)));
            }
        }
        Segment::Wildcard => match value {
            Value::Array(items) => out.extend(items.iter()),
            Value::Object(map) => out.extend(map.values()),
            _ => {}
        },
        Segment::RecursiveDescent => descendants(value, out),
        Segment::Index(index) => {
            if let Value::Array(items) = value
                && let Some(i) = resolve_index(*index, items.len())
                && let Some(item) = items.get(i)
            {
                out.push(item);
            }
        }
        Segment::Slice { start, end, step } => {
            if let Value::Array(items) = value {
                let len = items.len() as i64;
                let clamp = |i: i64| if i < 0 { (i + len).max(0) } else { i.min(len) };
                let from = start.map_or(0, clamp);
                let to = end.map_or(len, clamp);
                let step = usize::try_from(*step).unwrap_or(1).max(1);
                if from < to {
                    out.extend(items[from as usize..to as usize].iter().step_by(step));
                }
            }
        }
        Segment::Filter(filter) => {
            if let Value::Array(items) = value {
                out.extend(items.iter().filter(|item| filter.accepts(item)));
            }
        }
    }
}

/// The value itself and every value below it, in document order.
fn descendants<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    // An explicit stack: recursion depth must not follow the (unbounded) document depth.
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        out.push(value);
        match value {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(map) => stack.extend(map.values().rev()),
            _ => {}
        }
    }
}

fn resolve_index(index: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let resolved = if index < 0 {
        index.checked_add(len)?
    } else {
        index
    };
    usize::try_from(resolved).ok().filter(|i| (*i as i64) < len)
}

impl Filter {
    fn accepts(&self, item: &Value) -> bool {
        let lefts = self.left.eval(item);
        let Some((comparison, right)) = &self.comparison else {
            return !lefts.is_empty();
        };
        let rights = right.eval(item);
        // client-go skips items whose operands are missing and refuses to compare several.
        let ([left], [right]) = (lefts.as_slice(), rights.as_slice()) else {
            return false;
        };
        let ordering = compare(left, right);
        match comparison {
            Comparison::Equal => ordering == Some(Ordering::Equal),
            Comparison::NotEqual => ordering.is_some_and(|o| o != Ordering::Equal),
            Comparison::Less => ordering == Some(Ordering::Less),
            Comparison::LessEqual => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
            Comparison::Greater => ordering == Some(Ordering::Greater),
            Comparison::GreaterEqual => {
                matches!(ordering, Some(Ordering::Greater | Ordering::Equal))
            }
        }
    }
}

impl Operand {
    fn eval<'a>(&'a self, item: &'a Value) -> Vec<&'a Value> {
        match self {
            Operand::Current(segments) => eval_segments(segments, vec![item]),
            Operand::Literal(value) => vec![value],
        }
    }
}

/// Compares two values of the same kind; values of different kinds are incomparable (`None`),
/// so that neither `==` nor `!=` holds between them, as in client-go where it is an error.
fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
        },
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"replicas": 3, "containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "priority": 1},
                {"type": "Degraded", "status": "False", "priority": 5},
                {"status": "Unknown"}
            ]}
        })
    }

    fn check(path: &str, expected: Value) {
        let object = object();
        let parsed = JsonPath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let actual: Vec<Value> = parsed.eval(&object).into_iter().cloned().collect();
        assert_eq!(Value::Array(actual), expected, "path {path}");
    }

    #[test]
    fn evaluates_the_kubernetes_subset() {
        let cases = [
            (".metadata.name", json!(["web"])),
            ("{.metadata.name}", json!(["web"])),
            (" { .metadata.name } ", json!(["web"])),
            ("$.metadata.name", json!(["web"])),
            ("{$.metadata.name}", json!(["web"])),
            ("metadata.name", json!(["web"])),
            (".spec.replicas", json!([3])),
            (".spec.containers[0].image", json!(["nginx"])),
            (".spec.containers[-1].image", json!(["redis"])),
            (".spec.containers[5].image", json!([])),
            (".spec.containers[*].image", json!(["nginx", "redis"])),
            (".spec.containers.*.name", json!(["a", "b"])),
            (".spec.containers[0:1].name", json!(["a"])),
            (".spec.containers[::2].name", json!(["a"])),
            (".spec.containers[-5:].name", json!(["a", "b"])),
            (
                ".status.conditions[?(@.type==\"Ready\")].status",
                json!(["True"]),
            ),
            (
                ".status.conditions[?(@.type=='Ready')].status",
                json!(["True"]),
            ),
            (
                ".status.conditions[?( @.type == 'Ready' )].status",
                json!(["True"]),
            ),
            (
                ".status.conditions[?(@.type!=\"Ready\")].status",
                json!(["False"]),
            ),
            (
                ".status.conditions[?(@.priority>1)].type",
                json!(["Degraded"]),
            ),
            (
                ".status.conditions[?(@.priority<=1)].type",
                json!(["Ready"]),
            ),
            (
                ".status.conditions[?(@.type)].status",
                json!(["True", "False"]),
            ),
            (
                ".status.conditions[?(@.priority==1.0)].type",
                json!(["Ready"]),
            ),
            (".status.conditions[?(@.priority==\"1\")].type", json!([])),
            (".metadata.labels['app.kubernetes.io/name']", json!(["web"])),
            (
                ".metadata.labels[\"app.kubernetes.io/name\"]",
                json!(["web"]),
            ),
            (
                ".metadata.labels.app\\.kubernetes\\.io/name",
                json!(["web"]),
            ),
            (".metadata['name','missing']", json!(["web"])),
            (".metadata.missing", json!([])),
            (".metadata.name.deeper", json!([])),
            (".spec.containers.name", json!([])),
            ("..image", json!(["nginx", "redis"])),
            (".", json!([object()])),
            ("", json!([object()])),
        ];
        for (path, expected) in cases {
            check(path, expected);
        }
    }

    #[test]
    fn rejects_malformed_paths() {
        for path in [
            "{.metadata.name",
            ".metadata.name}",
            ".a[",
            ".a[]",
            ".a[x]",
            ".a['x]",
            ".a[?(@.x==)]",
            ".a[?@.x]",
            ".a[1:2:0]",
            ".a\\",
            ".a b",
            "..",
            ".a[99999999999999999999]",
        ] {
            assert!(JsonPath::parse(path).is_err(), "{path} should not parse");
        }
    }

    #[test]
    fn field_paths_for_selectable_fields() {
        let cases: [(&str, Option<Vec<&str>>); 4] = [
            (".spec.color", Some(vec!["spec", "color"])),
            (
                ".metadata.labels['a.b']",
                Some(vec!["metadata", "labels", "a.b"]),
            ),
            (".spec.items[0]", None),
            (".spec.*", None),
        ];
        for (path, expected) in cases {
            assert_eq!(
                JsonPath::parse(path).unwrap().as_field_path(),
                expected,
                "{path}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let path = format!(".a{}", "[?(@.b".repeat(10_000));
        assert!(JsonPath::parse(&path).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_and_eval_never_panic(path in "\\PC{0,30}") {
            if let Ok(parsed) = JsonPath::parse(&path) {
                let _ = parsed.eval(&object());
            }
        }

        #[test]
        fn parse_and_eval_never_panic_on_path_alphabet(path in "[.\\[\\]?()@=!<>'\"*:0-9a-c$ {}-]{0,24}") {
            if let Ok(parsed) = JsonPath::parse(&path) {
                let _ = parsed.eval(&object());
            }
        }
    }
}
