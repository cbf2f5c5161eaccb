//! [`apply`] and [`update`]: structured-merge-diff's `merge.Updater` plus the parts of
//! apimachinery's field-manager chain that matter for custom resources (stripping server-set
//! fields, the `before-first-apply` manager, not starting to track on a plain update, entry
//! times and order).

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use super::fieldpath::{FieldSet, PathElement};
use super::typed::{
    Node, compare, ensure_named_fields, find_duplicate, merge, remove_items, to_field_set,
};
use super::{
    Applied, ApplyError, ApplyOptions, Conflict, ManagedFieldsEntry, Operation, UpdateOptions,
};

/// The manager Kubernetes creates for an object's existing fields when the first apply meets
/// an object that has no managedFields.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

const SERVER_SET_METADATA: [&str; 11] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
    "clusterName",
];

/// Fields the server sets, which nobody owns.
static SERVER_SET: LazyLock<FieldSet> = LazyLock::new(|| {
    let mut set = FieldSet::new();
    set.insert(&[field("apiVersion")]);
    set.insert(&[field("kind")]);
    for name in SERVER_SET_METADATA {
        set.insert(&[field("metadata"), field(name)]);
    }
    set
});

/// `metadata` as a node: owned by nobody, though its children are.
static METADATA_NODE: LazyLock<FieldSet> = LazyLock::new(|| {
    let mut set = FieldSet::new();
    set.insert(&[field("metadata")]);
    set
});

fn field(name: &str) -> PathElement {
    PathElement::Field(name.to_owned())
}

fn strip_server_set(set: &FieldSet) -> FieldSet {
    set.recursive_difference(&SERVER_SET)
        .difference(&METADATA_NODE)
}

/// The fields `value` sets, as they would be owned: every leaf, map element and list item,
/// without server-set fields. On a whole object this is what its creator owns less the nodes
/// (`.`) a create adds; on an applied configuration it is exactly what the applier will own.
pub fn fields_of(value: &Value, schema: &Value) -> FieldSet {
    strip_server_set(&to_field_set(value, Node::Root(schema)))
}

/// Which part of the object a request may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Main,
    Status,
}

impl Scope {
    fn of(subresource: Option<&str>) -> Scope {
        match subresource {
            Some("status") => Scope::Status,
            _ => Scope::Main,
        }
    }

    /// The part of an applied configuration that this request applies.
    fn restrict_config(self, config: &Map<String, Value>) -> Value {
        let keep = |key: &str| match self {
            Scope::Main => key != "status",
            Scope::Status => matches!(key, "apiVersion" | "kind" | "status"),
        };
        let kept = config.iter().filter(|(key, _)| keep(key));
        Value::Object(kept.map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// The fields an apply in this scope may own, take or give up.
    fn filter_apply(self, set: &FieldSet) -> FieldSet {
        match self {
            Scope::Main => {
                let mut status = FieldSet::new();
                status.insert(&[field("status")]);
                set.recursive_difference(&status)
            }
            Scope::Status => Self::status_only(set),
        }
    }

    /// The fields an update in this scope may own, take or give up. On the main resource that
    /// is everything: the API server has already reset `status` there if the CRD has a status
    /// subresource, and `status` is an ordinary field if it has not.
    fn filter_update(self, set: &FieldSet) -> FieldSet {
        match self {
            Scope::Main => set.clone(),
            Scope::Status => Self::status_only(set),
        }
    }

    fn status_only(set: &FieldSet) -> FieldSet {
        let status = field("status");
        let mut out = FieldSet::new();
        let below = set.child(&status).cloned().unwrap_or_default();
        out.put(status.clone(), set.has_member(&status), below);
        out
    }
}

/// Merges an applied configuration into the live object (`None` when the apply creates it)
/// and updates the managers, with Kubernetes' server-side apply semantics (see the module
/// docs). Fails without changing anything on an invalid configuration, or on conflicts
/// unless `opts.force`.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    managed: &[ManagedFieldsEntry],
    opts: ApplyOptions,
    schema: &Value,
) -> Result<Applied, ApplyError> {
    let config = applied.as_object().ok_or(ApplyError::NotAnObject)?;
    let type_meta = |key: &str| {
        config
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(api_version), Some(_kind)) = (type_meta("apiVersion"), type_meta("kind")) else {
        return Err(ApplyError::MissingTypeMeta);
    };
    if config
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApplyError::ManagedFieldsNotNil);
    }
    if api_version != opts.api_version {
        return Err(ApplyError::VersionMismatch {
            expected: opts.api_version,
            got: api_version.to_owned(),
        });
    }
    let root = Node::Root(schema);
    let subresource = opts.subresource.as_deref().filter(|s| !s.is_empty());
    let scope = Scope::of(subresource);
    let config = scope.restrict_config(config);
    if let Some((list, element)) = find_duplicate(&config, root) {
        let (list, element) = (list.to_string(), element.to_string());
        return Err(ApplyError::DuplicateListEntry { list, element });
    }

    let empty = json!({});
    let live_object = live.unwrap_or(&empty);
    let mut entries = normalize(managed);
    if live.is_some() && entries.is_empty() {
        let first = Writer {
            manager: BEFORE_FIRST_APPLY,
            scope,
            subresource,
            api_version: &opts.api_version,
            now: &opts.now,
        };
        first.record_update(&mut entries, &empty, live_object, root);
    }

    let merged = merge(Some(live_object), Some(&config), root).unwrap_or_else(|| config.clone());
    let applied_fields = scope.filter_apply(&to_field_set(&config, root));
    let own = |entry: &ManagedFieldsEntry| entry.is(manager, Operation::Apply, subresource);
    let last = entries
        .iter()
        .find(|e| own(e))
        .map(|e| scope.filter_apply(&e.fields_v1));
    let mut owned = applied_fields.union(&SERVER_SET);
    for entry in entries.iter().filter(|e| !own(e)) {
        owned = owned.union(&entry.fields_v1);
    }
    let object = prune(&merged, &owned, &last.unwrap_or_default(), root);

    let comparison = compare(live_object, &object, root);
    let changed = scope.filter_apply(&comparison.modified.union(&comparison.added));
    let removed = scope.filter_apply(&comparison.removed);
    let mut conflicts = Vec::new();
    for entry in entries.iter().filter(|e| !own(e)) {
        for path in entry.fields_v1.intersection(&changed).paths() {
            conflicts.push(Conflict {
                manager: entry.manager.clone(),
                operation: entry.operation,
                subresource: entry.subresource.clone(),
                api_version: entry.api_version.clone(),
                field: path.to_string(),
            });
        }
    }
    if !conflicts.is_empty() && !opts.force {
        // Grouped by manager as Kubernetes prints them; each group keeps its path order.
        conflicts.sort_by(|a, b| {
            (&a.manager, a.operation, &a.api_version, &a.subresource).cmp(&(
                &b.manager,
                b.operation,
                &b.api_version,
                &b.subresource,
            ))
        });
        return Err(ApplyError::Conflicts(conflicts));
    }
    for entry in entries.iter_mut().filter(|e| !own(e)) {
        entry.fields_v1 = entry.fields_v1.difference(&changed).difference(&removed);
    }

    let fields = strip_server_set(&applied_fields);
    let object_changed = live.is_none() || object != *live_object;
    match entries.iter_mut().find(|e| own(e)) {
        Some(entry) => {
            if object_changed || entry.fields_v1 != fields {
                entry.time = Some(opts.now.clone());
            }
            entry.api_version = opts.api_version.clone();
            entry.fields_v1 = fields;
        }
        None => entries.push(ManagedFieldsEntry {
            manager: manager.to_owned(),
            operation: Operation::Apply,
            api_version: opts.api_version.clone(),
            time: Some(opts.now.clone()),
            fields_type: "FieldsV1".to_owned(),
            fields_v1: fields,
            subresource: subresource.map(str::to_owned),
        }),
    }
    Ok(Applied {
        object,
        managed_fields: finish(entries),
    })
}

/// Removes from `merged` what the applier applied last time (`last`) and nobody owns now
/// (`owned`, which includes the applier's new configuration): structured-merge-diff's
/// `prune`, `addBackOwnedItems` and `addBackDanglingItems`.
///
/// A named field counts as owned when anything below it is owned, so removing `.spec.a.b`
/// leaves `.spec.a` in place while someone owns `.spec.a.c`, and removes the whole of
/// `.spec.a` when nobody does.
fn prune(merged: &Value, owned: &FieldSet, last: &FieldSet, root: Node<'_>) -> Value {
    if last.is_empty() {
        return merged.clone();
    }
    let named = |set: &FieldSet| ensure_named_fields(set, root);
    let fields = |value: &Value| named(&to_field_set(value, root));
    let remove = |set: &FieldSet| remove_items(merged, set, root);
    let last = named(last);
    let merged_fields = fields(merged);
    // Take out everything applied last time, then put back whatever is still owned...
    let without_last = remove(&last);
    let unowned = merged_fields.difference(&fields(&without_last).union(&named(owned)));
    let without_unowned = remove(&unowned);
    // ...and of what is still gone, remove only what was applied last time.
    remove(
        &merged_fields
            .difference(&fields(&without_unowned))
            .intersection(&last),
    )
}

/// Records a non-apply write (create when `old` is `None`): `manager`'s `Update` entry gains
/// every changed field, every other manager loses them, and every manager loses the fields
/// that disappeared. Like Kubernetes, an existing object without managedFields stays
/// untracked until its first apply.
pub fn update(
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    managed: &[ManagedFieldsEntry],
    opts: UpdateOptions,
    schema: &Value,
) -> Vec<ManagedFieldsEntry> {
    let mut entries = normalize(managed);
    if old.is_some() && entries.is_empty() {
        return entries;
    }
    let empty = json!({});
    let subresource = opts.subresource.as_deref().filter(|s| !s.is_empty());
    let writer = Writer {
        manager,
        scope: Scope::of(subresource),
        subresource,
        api_version: &opts.api_version,
        now: &opts.now,
    };
    writer.record_update(&mut entries, old.unwrap_or(&empty), new, Node::Root(schema));
    finish(entries)
}

/// Who makes a non-apply write, where, and when.
struct Writer<'a> {
    manager: &'a str,
    scope: Scope,
    subresource: Option<&'a str>,
    api_version: &'a str,
    now: &'a str,
}

impl Writer<'_> {
    fn record_update(
        &self,
        entries: &mut Vec<ManagedFieldsEntry>,
        old: &Value,
        new: &Value,
        root: Node<'_>,
    ) {
        let comparison = compare(old, new, root);
        let changed = self
            .scope
            .filter_update(&comparison.modified.union(&comparison.added));
        let removed = self.scope.filter_update(&comparison.removed);
        for entry in entries.iter_mut() {
            entry.fields_v1 = entry.fields_v1.difference(&changed).difference(&removed);
        }
        let taken = strip_server_set(&changed);
        if taken.is_empty() {
            return;
        }
        let own = |e: &ManagedFieldsEntry| e.is(self.manager, Operation::Update, self.subresource);
        match entries.iter_mut().find(|e| own(e)) {
            Some(entry) => {
                entry.fields_v1 = entry.fields_v1.union(&taken);
                entry.time = Some(self.now.to_owned());
                entry.api_version = self.api_version.to_owned();
            }
            None => entries.push(ManagedFieldsEntry {
                manager: self.manager.to_owned(),
                operation: Operation::Update,
                api_version: self.api_version.to_owned(),
                time: Some(self.now.to_owned()),
                fields_type: "FieldsV1".to_owned(),
                fields_v1: taken,
                subresource: self.subresource.map(str::to_owned),
            }),
        }
    }
}

/// One entry per (manager, operation, subresource), merging any duplicates a client wrote.
fn normalize(managed: &[ManagedFieldsEntry]) -> Vec<ManagedFieldsEntry> {
    let mut out: Vec<ManagedFieldsEntry> = Vec::with_capacity(managed.len());
    for entry in managed {
        let subresource = entry.subresource.as_deref().filter(|s| !s.is_empty());
        match out
            .iter_mut()
            .find(|e| e.is(&entry.manager, entry.operation, subresource))
        {
            Some(existing) => existing.fields_v1 = existing.fields_v1.union(&entry.fields_v1),
            None => {
                let mut entry = entry.clone();
                entry.subresource = subresource.map(str::to_owned);
                out.push(entry);
            }
        }
    }
    out
}

/// Drops empty entries and sorts the rest the way Kubernetes encodes them.
fn finish(mut entries: Vec<ManagedFieldsEntry>) -> Vec<ManagedFieldsEntry> {
    entries.retain(|entry| !entry.fields_v1.is_empty());
    let seconds = |entry: &ManagedFieldsEntry| {
        let parsed = entry
            .time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        parsed.map_or(0, |t| t.as_second())
    };
    entries.sort_by(|a, b| {
        (
            a.operation,
            seconds(a),
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation,
                seconds(b),
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managed::scenarios::{API_VERSION, instance, schema};

    #[test]
    fn invalid_configurations_are_refused() {
        let duplicate = instance(json!({"nics": [{"name": "eth0"}, {"name": "eth0", "ip": "1"}]}));
        let cases: Vec<(&str, Value, ApplyError)> = vec![
            ("not an object", json!([1]), ApplyError::NotAnObject),
            (
                "no kind",
                json!({"apiVersion": API_VERSION, "spec": {}}),
                ApplyError::MissingTypeMeta,
            ),
            (
                "managedFields set",
                json!({"apiVersion": API_VERSION, "kind": "Instance", "metadata": {"managedFields": []}}),
                ApplyError::ManagedFieldsNotNil,
            ),
            (
                "other version",
                json!({"apiVersion": "corral.dev/v2", "kind": "Instance"}),
                ApplyError::VersionMismatch {
                    expected: API_VERSION.to_owned(),
                    got: "corral.dev/v2".to_owned(),
                },
            ),
            (
                "duplicate map-list key",
                duplicate,
                ApplyError::DuplicateListEntry {
                    list: ".spec.nics".to_owned(),
                    element: "[name=\"eth0\"]".to_owned(),
                },
            ),
        ];
        for (name, config, expected) in cases {
            let opts = ApplyOptions {
                api_version: API_VERSION.to_owned(),
                ..Default::default()
            };
            let got = apply(None, &config, "a", &[], opts, &schema());
            assert_eq!(got, Err(expected), "{name}");
        }
        assert_eq!(
            ApplyError::ManagedFieldsNotNil.to_string(),
            "metadata.managedFields must be nil"
        );
    }

    #[test]
    fn metadata_is_object_meta_and_server_set_fields_are_untracked() {
        let config = json!({
            "apiVersion": API_VERSION, "kind": "Instance",
            "metadata": {
                "name": "vm", "namespace": "ns", "uid": "u", "resourceVersion": "7", "generation": 2,
                "creationTimestamp": "2025-01-01T00:00:00Z", "deletionTimestamp": null,
                "generateName": "vm-",
                "labels": {"app": "web"},
                "annotations": {"note": "x"},
                "finalizers": ["corral.dev/cleanup"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Sled", "name": "s1", "uid": "u1"}]
            },
            "spec": {"cpus": 1}
        });
        let expected = json!({
            "f:metadata": {
                "f:annotations": {"f:note": {}},
                "f:finalizers": {"v:\"corral.dev/cleanup\"": {}},
                "f:generateName": {},
                "f:labels": {"f:app": {}},
                "f:ownerReferences": {"k:{\"uid\":\"u1\"}": {}}
            },
            "f:spec": {"f:cpus": {}}
        });
        assert_eq!(fields_of(&config, &schema()).to_fields_v1(), expected);
    }
}
