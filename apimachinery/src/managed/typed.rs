//! Walks JSON values along a CRD's `openAPIV3Schema`: which field sets a value implies, how two
//! values differ, how an applied configuration merges into a live object, and how owned fields
//! are removed. These are structured-merge-diff's `typed` operations (`ToFieldSet`, `Compare`,
//! `Merge`, `RemoveItems`), reimplemented over `serde_json::Value`.
//!
//! Definitions — a node's *shape* is, given its schema and its value:
//! - a **leaf** if (and only if) the value is a scalar or null, an atomic list (the default for
//!   lists, and every list without a schema), an atomic map (`x-kubernetes-map-type: atomic`),
//!   or the value's JSON type disagrees with the schema's `type`;
//! - a **granular map** if the value is an object and none of the above holds (objects without
//!   a schema under `x-kubernetes-preserve-unknown-fields` are granular maps);
//! - a **granular list** if the value is an array with `x-kubernetes-list-type` `set` (items are
//!   `v:` values) or `map` with `x-kubernetes-list-map-keys` (items are `k:` keys).
//!
//! A field of a granular map is *named* if the schema lists it in `properties` (Go struct
//! fields); other keys (`additionalProperties`, unknown fields) are map *elements*, which are
//! owned as nodes of their own, like labels.
//!
//! `metadata` is ObjectMeta whatever the CRD says: `labels` and `annotations` are granular maps,
//! `finalizers` a set, `ownerReferences` a map-list keyed by `uid` with atomic items, everything
//! else atomic.
//!
//! **Not responsible for:** validating values against the schema (`crate::schema`); a value
//! that disagrees with its schema is treated as a leaf rather than rejected.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use super::fieldpath::{FieldPath, FieldSet, PathElement, values_equal};

/// Where a value sits in the schema.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Node<'s> {
    /// The object itself: like `Typed`, but `metadata` is ObjectMeta.
    Root(&'s Value),
    /// A node described by a schema from the CRD.
    Typed(&'s Value),
    /// ObjectMeta.
    Metadata,
    /// A value without a schema: objects are granular maps, lists atomic.
    Untyped,
    /// A leaf whatever its value.
    Atomic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape<'s> {
    Leaf,
    Map,
    Set,
    /// A map-list; the slice holds the key field names.
    MapList(&'s [Value]),
}

static STRING_MAP: LazyLock<Value> =
    LazyLock::new(|| json!({"type": "object", "additionalProperties": {"type": "string"}}));
static STRING_SET: LazyLock<Value> = LazyLock::new(
    || json!({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}),
);
static OWNER_REFERENCES: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["uid"],
        // OwnerReference is `+structType=atomic`: an item is owned, and replaced, whole.
        "items": {"type": "object", "x-kubernetes-map-type": "atomic"}
    })
});

impl<'s> Node<'s> {
    fn shape(self, value: &Value) -> Shape<'s> {
        match (self, value) {
            (Node::Atomic, _)
            | (_, Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)) => {
                Shape::Leaf
            }
            (Node::Root(_) | Node::Metadata | Node::Untyped, Value::Object(_)) => Shape::Map,
            (Node::Root(_) | Node::Metadata | Node::Untyped, Value::Array(_)) => Shape::Leaf,
            (Node::Typed(schema), Value::Object(_)) => {
                let declared_other = schema["type"].as_str().is_some_and(|t| t != "object");
                if declared_other || schema["x-kubernetes-map-type"] == "atomic" {
                    Shape::Leaf
                } else {
                    Shape::Map
                }
            }
            (Node::Typed(schema), Value::Array(_)) => {
                if schema["type"].as_str().is_some_and(|t| t != "array") {
                    return Shape::Leaf;
                }
                match schema["x-kubernetes-list-type"].as_str() {
                    Some("set") => Shape::Set,
                    Some("map") => match schema["x-kubernetes-list-map-keys"].as_array() {
                        Some(keys) if !keys.is_empty() => Shape::MapList(keys),
                        _ => Shape::Leaf,
                    },
                    _ => Shape::Leaf,
                }
            }
        }
    }

    /// The node of field `key` of a map, and whether it is a named field.
    fn field(self, key: &str) -> (Node<'s>, bool) {
        match self {
            Node::Root(schema) => match key {
                "metadata" => (Node::Metadata, true),
                "apiVersion" | "kind" => (Node::Typed(schema).field(key).0, true),
                _ => Node::Typed(schema).field(key),
            },
            Node::Typed(schema) => {
                if let Some(property) = schema.get("properties").and_then(|p| p.get(key)) {
                    return (Node::Typed(property), true);
                }
                match schema.get("additionalProperties") {
                    Some(element @ Value::Object(_)) => (Node::Typed(element), false),
                    _ => (Node::Untyped, false),
                }
            }
            Node::Metadata => match key {
                "labels" | "annotations" => (Node::Typed(&STRING_MAP), true),
                "finalizers" => (Node::Typed(&STRING_SET), true),
                "ownerReferences" => (Node::Typed(&OWNER_REFERENCES), true),
                _ => (Node::Atomic, true),
            },
            Node::Untyped => (Node::Untyped, false),
            Node::Atomic => (Node::Atomic, false),
        }
    }

    fn item(self) -> Node<'s> {
        match self {
            Node::Typed(schema) => match schema.get("items") {
                Some(items @ Value::Object(_)) => Node::Typed(items),
                _ => Node::Untyped,
            },
            _ => Node::Untyped,
        }
    }

    fn child(self, element: &PathElement) -> Node<'s> {
        match element {
            PathElement::Field(name) => self.field(name).0,
            _ => self.item(),
        }
    }
}

fn item_element(shape: Shape<'_>, item: &Value) -> PathElement {
    match (shape, item) {
        (Shape::MapList(keys), Value::Object(object)) => {
            let mut fields: Vec<(String, Value)> = keys
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|k| object.get(k).map(|v| (k.to_owned(), v.clone())))
                .collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            PathElement::Key(fields)
        }
        _ => PathElement::Value(item.clone()),
    }
}

/// A list's items grouped by path element, in first-seen order.
struct Items<'v> {
    order: Vec<PathElement>,
    by_element: BTreeMap<PathElement, Vec<&'v Value>>,
}

impl<'v> Items<'v> {
    fn new(shape: Shape<'_>, list: Option<&'v Value>) -> Self {
        let mut items = Items {
            order: Vec::new(),
            by_element: BTreeMap::new(),
        };
        for item in list.and_then(Value::as_array).into_iter().flatten() {
            let element = item_element(shape, item);
            let group = items.by_element.entry(element.clone()).or_default();
            if group.is_empty() {
                items.order.push(element);
            }
            group.push(item);
        }
        items
    }

    fn get(&self, element: &PathElement) -> &[&'v Value] {
        self.by_element.get(element).map_or(&[], Vec::as_slice)
    }
}

fn is_empty_container(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::Object(object)) => object.is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    }
}

/// The paths `value` sets (structured-merge-diff's `ToFieldSet`): every leaf, every map element
/// and list item, and every named field whose value is null or `{}`. Duplicate list items are
/// owned as one node and not descended into.
pub(crate) fn to_field_set(value: &Value, node: Node<'_>) -> FieldSet {
    let mut set = FieldSet::new();
    walk_fields(&mut set, &mut Vec::new(), value, node);
    set
}

fn walk_fields(set: &mut FieldSet, path: &mut Vec<PathElement>, value: &Value, node: Node<'_>) {
    match node.shape(value) {
        Shape::Leaf => set.insert(path),
        Shape::Map => {
            for (key, child) in value.as_object().into_iter().flatten() {
                let (child_node, named) = node.field(key);
                path.push(PathElement::Field(key.clone()));
                walk_fields(set, path, child, child_node);
                let empty_map = child.as_object().is_some_and(Map::is_empty);
                if !named || child.is_null() || empty_map {
                    set.insert(path);
                }
                path.pop();
            }
        }
        shape @ (Shape::Set | Shape::MapList(_)) => {
            let items = Items::new(shape, Some(value));
            for element in &items.order {
                path.push(element.clone());
                if let [item] = items.get(element) {
                    walk_fields(set, path, item, node.item());
                }
                set.insert(path);
                path.pop();
            }
        }
    }
}

/// What changed from one value to another (structured-merge-diff's `Comparison`).
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    pub added: FieldSet,
    pub removed: FieldSet,
    pub modified: FieldSet,
}

/// Compares `old` with `new`. A granular map or list that appears or disappears is itself
/// added or removed, along with everything below it.
pub(crate) fn compare(old: &Value, new: &Value, node: Node<'_>) -> Comparison {
    let mut comparison = Comparison::default();
    compare_at(&mut comparison, &mut Vec::new(), Some(old), Some(new), node);
    comparison
}

fn compare_at(
    out: &mut Comparison,
    path: &mut Vec<PathElement>,
    old: Option<&Value>,
    new: Option<&Value>,
    node: Node<'_>,
) {
    let shape = match (old, new) {
        (Some(old), Some(new)) if node.shape(old) != node.shape(new) => Shape::Leaf,
        (_, Some(value)) | (Some(value), None) => node.shape(value),
        (None, None) => return,
    };
    let both_empty = is_empty_container(old) && is_empty_container(new);
    match shape {
        Shape::Map if !both_empty => {
            let empty = Map::new();
            let old_map = old.and_then(Value::as_object).unwrap_or(&empty);
            let new_map = new.and_then(Value::as_object).unwrap_or(&empty);
            let new_only = new_map.keys().filter(|k| !old_map.contains_key(*k));
            for key in old_map.keys().chain(new_only) {
                path.push(PathElement::Field(key.clone()));
                compare_at(
                    out,
                    path,
                    old_map.get(key),
                    new_map.get(key),
                    node.field(key).0,
                );
                path.pop();
            }
        }
        Shape::Set | Shape::MapList(_) if !both_empty => {
            compare_items(out, path, shape, old, new, node.item());
        }
        _ => {
            match (old, new) {
                (None, _) => out.added.insert(path),
                (_, None) => out.removed.insert(path),
                (Some(old), Some(new)) if !values_equal(old, new) => out.modified.insert(path),
                _ => {}
            }
            return;
        }
    }
    match (old, new) {
        (None, _) => out.added.insert(path),
        (_, None) => out.removed.insert(path),
        _ => {}
    }
}

fn compare_items(
    out: &mut Comparison,
    path: &mut Vec<PathElement>,
    shape: Shape<'_>,
    old: Option<&Value>,
    new: Option<&Value>,
    item_node: Node<'_>,
) {
    let (old_items, new_items) = (Items::new(shape, old), Items::new(shape, new));
    let new_only = new_items
        .order
        .iter()
        .filter(|e| old_items.get(e).is_empty());
    for element in old_items.order.iter().chain(new_only) {
        let (before, after) = (old_items.get(element), new_items.get(element));
        path.push(element.clone());
        match (before, after) {
            ([] | [_], [] | [_]) => {
                compare_at(
                    out,
                    path,
                    before.first().copied(),
                    after.first().copied(),
                    item_node,
                );
            }
            // Duplicated items are compared as one atomic group.
            ([_, _, ..], [_, _, ..]) => {
                let same = before.len() == after.len()
                    && before.iter().zip(after).all(|(a, b)| values_equal(a, b));
                if !same {
                    out.modified.insert(path);
                }
            }
            ([_, _, ..], _) => {
                compare_at(out, path, None, after.first().copied(), item_node);
                out.removed.insert(path);
            }
            (_, _) => {
                compare_at(out, path, before.first().copied(), None, item_node);
                out.added.insert(path);
            }
        }
        path.pop();
    }
}

/// Merges `config` into `live` (structured-merge-diff's `Merge`): granular maps key by key,
/// map-lists and sets item by item, everything else replaced by `config`'s value.
pub(crate) fn merge(live: Option<&Value>, config: Option<&Value>, node: Node<'_>) -> Option<Value> {
    let shape = match (live, config) {
        (Some(live), Some(config)) if node.shape(live) != node.shape(config) => Shape::Leaf,
        // Merging with nothing gives the other side back unchanged.
        (Some(value), None) | (None, Some(value)) => return Some(value.clone()),
        (Some(_), Some(config)) => node.shape(config),
        (None, None) => return None,
    };
    let both_empty = is_empty_container(live) && is_empty_container(config);
    match shape {
        Shape::Map if !both_empty => {
            let empty = Map::new();
            let live_map = live.and_then(Value::as_object).unwrap_or(&empty);
            let config_map = config.and_then(Value::as_object).unwrap_or(&empty);
            let config_only = config_map.keys().filter(|k| !live_map.contains_key(*k));
            let mut out = Map::new();
            for key in live_map.keys().chain(config_only) {
                let child = node.field(key).0;
                if let Some(merged) = merge(live_map.get(key), config_map.get(key), child) {
                    out.insert(key.clone(), merged);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Shape::Set | Shape::MapList(_) if !both_empty => {
            let out = merge_items(shape, live, config, node.item());
            (!out.is_empty()).then_some(Value::Array(out))
        }
        _ => config.or(live).cloned(),
    }
}

/// Orders the merged list as structured-merge-diff does: items of `config` in its order, with
/// live-only items kept next to the live items they followed.
fn merge_items(
    shape: Shape<'_>,
    live: Option<&Value>,
    config: Option<&Value>,
    item_node: Node<'_>,
) -> Vec<Value> {
    let live_list: &[Value] = live.and_then(Value::as_array).map_or(&[], Vec::as_slice);
    let live_elements: Vec<PathElement> =
        live_list.iter().map(|i| item_element(shape, i)).collect();
    let live_items = Items::new(shape, live);
    let config_items = Items::new(shape, config);
    let config_elements = &config_items.order;
    // A duplicated live item is not merged with the config; the config's item replaces it.
    let live_item = |element: &PathElement| match live_items.get(element) {
        [item] => Some(*item),
        _ => None,
    };
    let config_item = |element: &PathElement| config_items.get(element).first().copied();

    let mut shared: VecDeque<&PathElement> = config_elements
        .iter()
        .filter(|e| !live_items.get(e).is_empty())
        .collect();
    let mut next_shared = shared.pop_front();
    let mut merged_config = BTreeSet::new();
    let mut out = Vec::new();
    let (mut l, mut c) = (0, 0);
    while l < live_elements.len() || c < config_elements.len() {
        if l < live_elements.len() && c < config_elements.len() {
            let element = &live_elements[l];
            if *element == config_elements[c] {
                merged_config.insert(element.clone());
                out.extend(merge(live_item(element), config_item(element), item_node));
                l += 1;
                c += 1;
                next_shared = shared.pop_front();
                continue;
            }
            let in_config = !config_items.get(element).is_empty();
            if in_config && next_shared.is_some_and(|next| next != element) {
                l += 1;
                continue;
            }
        }
        if l < live_elements.len() {
            let element = &live_elements[l];
            if config_items.get(element).is_empty() {
                out.extend(merge(Some(&live_list[l]), None, item_node));
                l += 1;
                continue;
            } else if merged_config.contains(element) {
                l += 1;
            }
        }
        if c < config_elements.len() {
            let element = &config_elements[c];
            merged_config.insert(element.clone());
            out.extend(merge(live_item(element), config_item(element), item_node));
            c += 1;
            if next_shared.is_some_and(|next| next == element) {
                next_shared = shared.pop_front();
            }
        }
    }
    out
}

/// The first granular list in `config` with two items under one key or value, as
/// `(list path, item element)`. An applied configuration may not have any.
pub(crate) fn find_duplicate(config: &Value, node: Node<'_>) -> Option<(FieldPath, PathElement)> {
    find_duplicate_at(&mut Vec::new(), config, node)
}

fn find_duplicate_at(
    path: &mut Vec<PathElement>,
    value: &Value,
    node: Node<'_>,
) -> Option<(FieldPath, PathElement)> {
    match node.shape(value) {
        Shape::Leaf => None,
        Shape::Map => value
            .as_object()
            .into_iter()
            .flatten()
            .find_map(|(key, child)| {
                path.push(PathElement::Field(key.clone()));
                let found = find_duplicate_at(path, child, node.field(key).0);
                path.pop();
                found
            }),
        shape @ (Shape::Set | Shape::MapList(_)) => {
            let items = Items::new(shape, Some(value));
            items
                .order
                .iter()
                .find_map(|element| match items.get(element) {
                    [item] => {
                        path.push(element.clone());
                        let found = find_duplicate_at(path, item, node.item());
                        path.pop();
                        found
                    }
                    _ => Some((FieldPath(path.clone()), element.clone())),
                })
        }
    }
}

/// `value` without the members of `remove` (structured-merge-diff's `RemoveItems`). A removed
/// member takes everything below it. A map or list whose contents are all removed stays,
/// empty: only a node someone still owns is emptied rather than removed, and for a `{}` its
/// owner applied that is the value asked for (Kubernetes leaves a null there instead).
pub(crate) fn remove_items(value: &Value, remove: &FieldSet, node: Node<'_>) -> Value {
    match (node.shape(value), value) {
        (Shape::Map, Value::Object(object)) => {
            let mut out = Map::new();
            for (key, child) in object {
                let element = PathElement::Field(key.clone());
                if remove.has_member(&element) {
                    continue;
                }
                let kept = match remove.child(&element) {
                    Some(below) => remove_items(child, below, node.field(key).0),
                    None => child.clone(),
                };
                out.insert(key.clone(), kept);
            }
            Value::Object(out)
        }
        (shape @ (Shape::Set | Shape::MapList(_)), Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                let element = item_element(shape, item);
                if remove.has_member(&element) {
                    continue;
                }
                out.push(match remove.child(&element) {
                    Some(below) => remove_items(item, below, node.item()),
                    None => item.clone(),
                });
            }
            Value::Array(out)
        }
        _ => value.clone(),
    }
}

/// `set` plus every named field that has a path below it (structured-merge-diff's
/// `EnsureNamedFieldsAreMembers`): owning `.spec.a.b` then also means owning `.spec` and
/// `.spec.a` as nodes, but not a map element such as a label key.
pub(crate) fn ensure_named_fields(set: &FieldSet, node: Node<'_>) -> FieldSet {
    let mut out = FieldSet::new();
    for element in set.elements() {
        let child_node = node.child(element);
        let below = set
            .child(element)
            .map(|below| ensure_named_fields(below, child_node));
        let named = match (element, below.is_some()) {
            (PathElement::Field(name), true) => node.field(name).1,
            _ => false,
        };
        out.put(
            element.clone(),
            set.has_member(element) || named,
            below.unwrap_or_default(),
        );
    }
    out
}
