//! Field paths and sets of them, and their `FieldsV1` wire encoding.
//!
//! A [`FieldSet`] is a tree: each node holds the path elements that are themselves *members*
//! (owned leaves, or owned nodes such as a map-list item) and the child sets below elements that
//! have owned descendants. This is the shape of structured-merge-diff's `fieldpath.Set`, and
//! the `FieldsV1` JSON is that tree written out (`{"f:spec":{"f:cpus":{}}}`, with `".":{}` for a
//! node that is both a member and has owned children).
//!
//! **Invariants:** a child set is never empty; path elements are ordered as Kubernetes orders
//! them (fields, then keys, then values, then indexes), so the encoding is canonical.
//!
//! **Caveats:** numbers inside `k:`/`v:` elements compare numerically (`1` equals `1.0`), like
//! Kubernetes; floats are written the way `serde_json` writes them, which for whole floats
//! (`1.0`) differs from Go's `1`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// One step in a field path.
#[derive(Clone, Debug)]
pub enum PathElement {
    /// A field of an object, `f:name`.
    Field(String),
    /// A map-list item, selected by its key fields sorted by name, `k:{"name":"eth0"}`.
    Key(Vec<(String, Value)>),
    /// A set item, selected by its value, `v:"a"`.
    Value(Value),
    /// A list item by position, `i:0` (read and written, never produced by this crate).
    Index(usize),
}

impl PathElement {
    fn rank(&self) -> u8 {
        match self {
            PathElement::Field(_) => 0,
            PathElement::Key(_) => 1,
            PathElement::Value(_) => 2,
            PathElement::Index(_) => 3,
        }
    }

    /// The `FieldsV1` key for this element: `f:x`, `k:{...}`, `v:...`, `i:n`.
    pub fn to_fields_v1_key(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(fields) => {
                let object: Map<String, Value> = fields.iter().cloned().collect();
                format!("k:{}", canonical_json(&Value::Object(object)))
            }
            PathElement::Value(value) => format!("v:{}", canonical_json(value)),
            PathElement::Index(index) => format!("i:{index}"),
        }
    }

    /// Parses a `FieldsV1` key. `Ok(None)` for an element kind this crate does not know, which
    /// Kubernetes also skips rather than rejects.
    pub fn from_fields_v1_key(key: &str) -> Result<Option<PathElement>, FieldsV1Error> {
        let bad = |reason: &str| FieldsV1Error::BadPathElement {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, rest) = key
            .split_at_checked(2)
            .filter(|(kind, _)| kind.ends_with(':'))
            .ok_or_else(|| bad("expected a 'f:', 'k:', 'v:' or 'i:' prefix"))?;
        let element = match kind {
            "f:" => PathElement::Field(rest.to_owned()),
            "v:" => {
                PathElement::Value(serde_json::from_str(rest).map_err(|e| bad(&e.to_string()))?)
            }
            "k:" => {
                let Value::Object(object) =
                    serde_json::from_str(rest).map_err(|e| bad(&e.to_string()))?
                else {
                    return Err(bad("a key element must be a JSON object"));
                };
                let mut fields: Vec<(String, Value)> = object.into_iter().collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                PathElement::Key(fields)
            }
            "i:" => PathElement::Index(rest.parse().map_err(|_| bad("not an index"))?),
            _ => return Ok(None),
        };
        Ok(Some(element))
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PathElement::Field(a), PathElement::Field(b)) => a.cmp(b),
            (PathElement::Key(a), PathElement::Key(b)) => {
                for ((name_a, value_a), (name_b, value_b)) in a.iter().zip(b) {
                    let order = name_a
                        .cmp(name_b)
                        .then_with(|| compare_values(value_a, value_b));
                    if order != Ordering::Equal {
                        return order;
                    }
                }
                a.len().cmp(&b.len())
            }
            (PathElement::Value(a), PathElement::Value(b)) => compare_values(a, b),
            (PathElement::Index(a), PathElement::Index(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for PathElement {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PathElement {}

/// Kubernetes' path notation: `.spec.nics[name="eth0"].ip`, `.spec.tags[="a"]`.
impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(name, value)| format!("{name}={}", value_to_string(value)))
                    .collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(value) => write!(f, "[={}]", value_to_string(value)),
            PathElement::Index(index) => write!(f, "[{index}]"),
        }
    }
}

/// A path from the object root, printed the Kubernetes way (`.spec.cpus`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<PathElement>);

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|element| write!(f, "{element}"))
    }
}

/// Why a `FieldsV1` document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldsV1Error {
    #[error("FieldsV1 node {path:?} must be a JSON object")]
    NotAnObject { path: String },
    #[error("FieldsV1 key {key:?} is not a path element: {reason}")]
    BadPathElement { key: String, reason: String },
}

/// A set of field paths (see the module docs for the tree shape).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// True if (and only if) the set holds no path.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// The number of paths in the set.
    pub fn len(&self) -> usize {
        self.members.len() + self.children.values().map(FieldSet::len).sum::<usize>()
    }

    /// Adds `path`. The empty path (the object itself) is never a member, as in Kubernetes.
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub fn contains(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self
                .children
                .get(first)
                .is_some_and(|child| child.contains(rest)),
        }
    }

    /// True if `element` directly below this node is itself a member.
    pub(crate) fn has_member(&self, element: &PathElement) -> bool {
        self.members.contains(element)
    }

    /// The paths below `element`, relative to it (structured-merge-diff's `WithPrefix`).
    pub(crate) fn child(&self, element: &PathElement) -> Option<&FieldSet> {
        self.children.get(element)
    }

    /// Every path, in Kubernetes' iteration order: a node's members, then its children's paths.
    pub fn paths(&self) -> Vec<FieldPath> {
        let mut out = Vec::with_capacity(self.len());
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<FieldPath>) {
        for member in &self.members {
            prefix.push(member.clone());
            out.push(FieldPath(prefix.clone()));
            prefix.pop();
        }
        for (element, child) in &self.children {
            prefix.push(element.clone());
            child.collect_paths(prefix, out);
            prefix.pop();
        }
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (element, child) in &other.children {
            let merged = match out.children.get(element) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(element.clone(), merged);
        }
        out
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.intersection(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(element, child)| {
                let common = child.intersection(other.children.get(element)?);
                (!common.is_empty()).then(|| (element.clone(), common))
            })
            .collect();
        FieldSet { members, children }
    }

    /// The paths of `self` that are not in `other`. A member of `other` removes only that exact
    /// path, not the paths below it (see [`FieldSet::recursive_difference`]).
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.difference(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(element, child)| {
                let rest = match other.children.get(element) {
                    Some(theirs) => child.difference(theirs),
                    None => child.clone(),
                };
                (!rest.is_empty()).then(|| (element.clone(), rest))
            })
            .collect();
        FieldSet { members, children }
    }

    /// Like [`FieldSet::difference`], but a member of `other` also removes everything below it.
    pub fn recursive_difference(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.difference(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter(|(element, _)| !other.members.contains(*element))
            .filter_map(|(element, child)| {
                let rest = match other.children.get(element) {
                    Some(theirs) => child.recursive_difference(theirs),
                    None => child.clone(),
                };
                (!rest.is_empty()).then(|| (element.clone(), rest))
            })
            .collect();
        FieldSet { members, children }
    }

    /// Adds `element` below this node, as a member and/or with the paths of `child` below it.
    pub(crate) fn put(&mut self, element: PathElement, member: bool, child: FieldSet) {
        if !child.is_empty() {
            let merged = match self.children.remove(&element) {
                Some(mine) => mine.union(&child),
                None => child,
            };
            self.children.insert(element.clone(), merged);
        }
        if member {
            self.members.insert(element);
        }
    }

    /// The direct children of this node that are members or have members below them.
    pub(crate) fn elements(&self) -> impl Iterator<Item = &PathElement> {
        let mut all: BTreeSet<&PathElement> = self.members.iter().collect();
        all.extend(self.children.keys());
        all.into_iter()
    }

    /// The `FieldsV1` encoding, e.g. `{"f:spec":{".":{},"f:cpus":{}}}`.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.fields_v1_contents(false))
    }

    fn fields_v1_contents(&self, include_self: bool) -> Map<String, Value> {
        let mut out = Map::new();
        if include_self {
            out.insert(".".to_owned(), Value::Object(Map::new()));
        }
        for element in self.elements() {
            let contents = match self.children.get(element) {
                Some(child) => child.fields_v1_contents(self.members.contains(element)),
                None => Map::new(),
            };
            out.insert(element.to_fields_v1_key(), Value::Object(contents));
        }
        out
    }

    /// Reads the `FieldsV1` encoding. Unknown element kinds are skipped, as Kubernetes does.
    pub fn from_fields_v1(fields: &Value) -> Result<FieldSet, FieldsV1Error> {
        Self::read_fields_v1(fields, "").map(|(set, _)| set)
    }

    /// Returns the set below `node` and whether `node` itself is a member.
    fn read_fields_v1(node: &Value, path: &str) -> Result<(FieldSet, bool), FieldsV1Error> {
        let Value::Object(object) = node else {
            return Err(FieldsV1Error::NotAnObject {
                path: path.to_owned(),
            });
        };
        let mut set = FieldSet::new();
        let mut is_member = object.is_empty();
        for (key, value) in object {
            if key == "." {
                is_member = true;
                continue;
            }
            let Some(element) = PathElement::from_fields_v1_key(key)? else {
                continue;
            };
            let (child, child_is_member) = Self::read_fields_v1(value, &format!("{path}/{key}"))?;
            set.put(element, child_is_member, child);
        }
        Ok((set, is_member))
    }
}

impl Serialize for FieldSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_fields_v1().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for FieldSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        FieldSet::from_fields_v1(&value).map_err(serde::de::Error::custom)
    }
}

/// A total order on JSON values, the one structured-merge-diff uses: numbers (compared
/// numerically, integers and floats alike) < strings < booleans < lists < objects < null.
pub(crate) fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn rank(value: &Value) -> u8 {
        match value {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                x.partial_cmp(&y).unwrap_or(Ordering::Equal)
            }
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (x, y) in x.iter().zip(y) {
                let order = compare_values(x, y);
                if order != Ordering::Equal {
                    return order;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut x: Vec<_> = x.iter().collect();
            let mut y: Vec<_> = y.iter().collect();
            x.sort_by(|a, b| a.0.cmp(b.0));
            y.sort_by(|a, b| a.0.cmp(b.0));
            for ((key_x, value_x), (key_y, value_y)) in x.iter().zip(&y) {
                let order = key_x
                    .cmp(key_y)
                    .then_with(|| compare_values(value_x, value_y));
                if order != Ordering::Equal {
                    return order;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Deep equality with Kubernetes' number rule (`1` equals `1.0`) and unordered object keys.
pub(crate) fn values_equal(a: &Value, b: &Value) -> bool {
    compare_values(a, b) == Ordering::Equal
}

/// JSON with object keys sorted and `<`, `>`, `&` escaped, as Go's `encoding/json` writes it.
fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(object) => {
                let mut entries: Vec<_> = object.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // These characters can only occur inside JSON strings, so replacing them is safe.
    serde_json::to_string(&sorted(value))
        .unwrap_or_default()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// structured-merge-diff's `value.ToString`, used in path strings: strings quoted, numbers as
/// Go prints them, lists bracketed, objects as `k=v` pairs.
fn value_to_string(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            format!(
                "[{}]",
                items
                    .iter()
                    .map(value_to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        Value::Object(object) => object
            .iter()
            .map(|(k, v)| format!("{k}={}", value_to_string(v)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn field(name: &str) -> PathElement {
        PathElement::Field(name.to_owned())
    }

    fn key(name: &str, value: Value) -> PathElement {
        PathElement::Key(vec![(name.to_owned(), value)])
    }

    #[test]
    fn fields_v1_encodes_kubernetes_examples() {
        let cases: Vec<(Vec<Vec<PathElement>>, Value)> = vec![
            (
                vec![vec![field("spec"), field("cpus")]],
                json!({"f:spec": {"f:cpus": {}}}),
            ),
            (
                vec![
                    vec![field("metadata"), field("labels")],
                    vec![field("metadata"), field("labels"), field("app")],
                ],
                json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}),
            ),
            (
                vec![
                    vec![field("spec"), field("nics"), key("name", json!("eth0"))],
                    vec![
                        field("spec"),
                        field("nics"),
                        key("name", json!("eth0")),
                        field("ip"),
                    ],
                ],
                json!({"f:spec": {"f:nics": {"k:{\"name\":\"eth0\"}": {".": {}, "f:ip": {}}}}}),
            ),
            (
                vec![vec![
                    field("spec"),
                    field("tags"),
                    PathElement::Value(json!("a<b")),
                ]],
                json!({"f:spec": {"f:tags": {"v:\"a\\u003cb\"": {}}}}),
            ),
            (
                vec![vec![
                    field("ports"),
                    PathElement::Key(vec![
                        ("port".to_owned(), json!(80)),
                        ("protocol".to_owned(), json!("TCP")),
                    ]),
                ]],
                json!({"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {}}}),
            ),
        ];
        for (paths, expected) in cases {
            let mut set = FieldSet::new();
            for path in &paths {
                set.insert(path);
            }
            assert_eq!(set.to_fields_v1(), expected);
            assert_eq!(
                FieldSet::from_fields_v1(&expected).unwrap(),
                set,
                "{expected}"
            );
        }
    }

    #[test]
    fn fields_v1_orders_fields_before_keys_before_values() {
        let mut set = FieldSet::new();
        set.insert(&[field("x"), PathElement::Value(json!("b"))]);
        set.insert(&[field("x"), PathElement::Value(json!(2))]);
        set.insert(&[field("x"), key("name", json!("a"))]);
        set.insert(&[field("x"), field("z")]);
        let keys: Vec<String> = set.to_fields_v1()["f:x"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["f:z", "k:{\"name\":\"a\"}", "v:2", "v:\"b\""]);
    }

    #[test]
    fn fields_v1_rejects_malformed_and_skips_unknown_kinds() {
        assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"spec": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"k:[1]": {}})).is_err());
        let set = FieldSet::from_fields_v1(&json!({"x:future": {}, "f:a": {}})).unwrap();
        assert_eq!(set.to_fields_v1(), json!({"f:a": {}}));
    }

    #[test]
    fn path_strings_match_kubernetes() {
        let cases = [
            (vec![field("spec"), field("cpus")], ".spec.cpus"),
            (
                vec![
                    field("spec"),
                    field("nics"),
                    key("name", json!("eth0")),
                    field("ip"),
                ],
                ".spec.nics[name=\"eth0\"].ip",
            ),
            (
                vec![field("spec"), field("tags"), PathElement::Value(json!("a"))],
                ".spec.tags[=\"a\"]",
            ),
            (
                vec![field("metadata"), field("labels"), field("app")],
                ".metadata.labels.app",
            ),
            (vec![field("l"), PathElement::Index(3)], ".l[3]"),
        ];
        for (path, expected) in cases {
            assert_eq!(FieldPath(path).to_string(), expected);
        }
    }

    #[test]
    fn set_algebra() {
        let set = |paths: &[&[&str]]| {
            let mut out = FieldSet::new();
            for path in paths {
                out.insert(&path.iter().map(|name| field(name)).collect::<Vec<_>>());
            }
            out
        };
        let ab = set(&[&["a", "b"], &["a"], &["c"]]);
        let a = set(&[&["a"]]);
        assert_eq!(ab.difference(&a), set(&[&["a", "b"], &["c"]]));
        assert_eq!(ab.recursive_difference(&a), set(&[&["c"]]));
        assert_eq!(
            ab.intersection(&set(&[&["a", "b"], &["d"]])),
            set(&[&["a", "b"]])
        );
        assert_eq!(a.union(&set(&[&["d"]])), set(&[&["a"], &["d"]]));
        assert_eq!(ab.len(), 3);
        let strings: Vec<String> = ab.paths().iter().map(ToString::to_string).collect();
        assert_eq!(strings, [".a", ".c", ".a.b"]);
    }

    fn arb_element() -> impl Strategy<Value = PathElement> {
        prop_oneof![
            "[a-z.:{}\"<]{1,6}".prop_map(PathElement::Field),
            ("[a-z]{1,4}", any::<i32>()).prop_map(|(k, v)| key(&k, json!(v))),
            "[a-z ]{0,4}".prop_map(|s| PathElement::Value(json!(s))),
            any::<bool>().prop_map(|b| PathElement::Value(json!(b))),
            (0usize..5).prop_map(PathElement::Index),
        ]
    }

    proptest! {
        #[test]
        fn fields_v1_round_trips(paths in prop::collection::vec(prop::collection::vec(arb_element(), 1..4), 0..8)) {
            let mut set = FieldSet::new();
            for path in &paths {
                set.insert(path);
            }
            let encoded = set.to_fields_v1();
            let decoded = FieldSet::from_fields_v1(&encoded).unwrap();
            prop_assert_eq!(&decoded, &set);
            prop_assert_eq!(decoded.to_fields_v1(), encoded);
            for path in &paths {
                prop_assert!(decoded.contains(path));
            }
            let via_serde: FieldSet = serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
            prop_assert_eq!(via_serde, set);
        }
    }
}
