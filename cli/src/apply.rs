//! `corralctl apply -f ...`: makes the server hold the objects of a set of manifests, by
//! server-side apply (field manager `corralctl`), and with `--prune` deletes what corralctl
//! applied earlier under the same label selector but the set no longer holds (RFD 48's
//! "commit a deployment config").
//!
//! # Guarantees
//! - **A document that fails applies nothing.** Each document is one apply request, which the
//!   server performs whole or not at all.
//! - **Validation is all-or-nothing for the set.** Every document is checked before any is
//!   applied: first here (it parses; it has `apiVersion`, `kind` and `metadata.name`; the
//!   server serves its kind; no two documents name the same object), then by the server
//!   itself with a dry-run apply under `fieldValidation=Strict` (unknown fields, invalid
//!   values, conflicts with other managers). If any document fails, none is applied and every
//!   failure is listed, each naming its file, document number, kind/name and field. A broken
//!   file therefore never leaves half a deployment behind, and never lets `--prune` delete the
//!   objects it failed to describe.
//! - What can still fail after validation (a concurrent writer, the server going away) fails
//!   only its own document; the others are applied, the command exits non-zero, and pruning
//!   is skipped.
//! - `--prune` deletes only objects that carry [`crate::command::APPLIED_BY_ANNOTATION`] (which every
//!   applied object gets), match the selector, and are of a kind in the set or of Corral's
//!   group, in the namespaces the set touches (cluster-scoped kinds everywhere).
//!
//! # Caveats
//! - The dry run of an object in a namespace the same set creates cannot succeed before the
//!   namespace exists; such documents are validated when applied (Namespaces are applied first).
//! - With `-l`, documents whose labels do not match the selector are skipped, as kubectl does.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;

use corral_apimachinery::labels::Selector;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, ValidationDirective};
use serde_json::Value;

use crate::command::{APPLIED_BY_ANNOTATION, FIELD_MANAGER, Outcome, Terminal};
use crate::context::Context;
use crate::discovery::{Catalog, ResourceType};
use crate::error::{ApiFailure, Error};
use crate::manifest::{self, DocumentError, FieldCause, Identity, Origin};

pub struct ApplyOptions {
    /// Files, directories or `-`.
    pub files: Vec<String>,
    /// Take over fields other managers own.
    pub force_conflicts: bool,
    /// Ask the server what would happen; change nothing.
    pub dry_run: bool,
    /// Delete objects corralctl applied earlier that match `selector` but are not in the set.
    pub prune: bool,
    /// Apply only documents whose labels match; with `prune`, what is pruned.
    pub selector: Option<String>,
}

/// One document ready to apply.
#[derive(Clone, Debug)]
struct Planned {
    /// The document's place in the set, for reporting in order.
    position: usize,
    origin: Origin,
    identity: Identity,
    resource: ResourceType,
    /// The namespace of a namespaced object.
    namespace: Option<String>,
    body: Value,
}

impl Planned {
    fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.resource.group().to_string(),
            kind: self.resource.kind().to_string(),
            namespace: self.namespace.clone(),
            name: self.identity.name.clone(),
        }
    }

    fn is_namespace(&self) -> bool {
        self.resource.group().is_empty() && self.resource.kind() == "Namespace"
    }
}

/// Which object: what prune compares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ObjectKey {
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

/// A document that failed, with what is known of it.
struct Failure {
    position: usize,
    origin: Origin,
    identity: Option<Identity>,
    error: DocumentError,
    hint: Option<&'static str>,
}

impl Failure {
    fn print(&self, term: &mut Terminal) -> Result<(), Error> {
        match &self.identity {
            Some(identity) => writeln!(
                term.err,
                "error: {} ({identity}): {}",
                self.origin, self.error
            )?,
            None => writeln!(term.err, "error: {}: {}", self.origin, self.error)?,
        }
        if let Some(hint) = self.hint {
            writeln!(term.err, "  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Runs `apply`.
pub async fn apply(
    ctx: &Context,
    options: &ApplyOptions,
    stdin: &mut dyn Read,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let selector = match &options.selector {
        Some(text) => Some(
            Selector::parse(text)
                .map_err(|e| Error::Usage(format!("invalid label selector {text:?}: {e}")))?,
        ),
        None => None,
    };
    if options.prune && selector.is_none() {
        return Err(Error::Usage(
            "--prune needs a label selector (-l): it deletes what matches it and is not in the set"
                .into(),
        ));
    }
    let documents = manifest::read(&options.files, stdin)?;
    let catalog = ctx.catalog().await?;

    // Phase 1: what can be checked here.
    let mut planned = Vec::new();
    let mut failures = Vec::new();
    let mut seen: HashMap<ObjectKey, Origin> = HashMap::new();
    let total = documents.len();
    for (position, document) in documents.into_iter().enumerate() {
        match plan(
            ctx,
            catalog,
            position,
            document.origin.clone(),
            document.content,
        ) {
            Ok(p) => {
                let labels = p.body.pointer("/metadata/labels");
                if selector.as_ref().is_some_and(|s| !s.matches_json(labels)) {
                    continue;
                }
                if let Some(first) = seen.get(&p.key()) {
                    failures.push(Failure {
                        position,
                        origin: p.origin.clone(),
                        identity: Some(p.identity.clone()),
                        error: DocumentError::Rejected {
                            message: String::new(),
                            causes: vec![FieldCause {
                                field: "metadata.name".into(),
                                message: format!("the same object as {first}"),
                            }],
                        },
                        hint: None,
                    });
                    continue;
                }
                seen.insert(p.key(), p.origin.clone());
                planned.push(p);
            }
            Err(failure) => failures.push(*failure),
        }
    }
    // Namespaces first, so that what the set puts in them can be created.
    planned.sort_by_key(|p| !p.is_namespace());

    // Phase 2: the server's own validation, without writing (also when phase 1 found
    // failures, so that one run lists every problem of the set).
    let created_namespaces: BTreeSet<String> = planned
        .iter()
        .filter(|p| p.is_namespace())
        .map(|p| p.identity.name.clone())
        .collect();
    let mut deferred = BTreeSet::new();
    let check = PatchParams {
        dry_run: true,
        ..apply_params(options)
    };
    for (i, p) in planned.iter().enumerate() {
        match server_apply(ctx, p, &check).await {
            Ok(_) => {}
            Err(failure)
                if p.namespace.as_ref().is_some_and(|ns| {
                    created_namespaces.contains(ns) && is_missing_namespace(&failure, ns)
                }) =>
            {
                deferred.insert(i);
            }
            Err(failure) => failures.push(rejection(p, &failure)),
        }
    }
    if !failures.is_empty() {
        failures.sort_by_key(|f| f.position);
        return refuse(&failures, total, term);
    }

    // Phase 3: apply.
    let suffix = if options.dry_run {
        " (server dry run)"
    } else {
        ""
    };
    let mut outcome = Outcome::Succeeded;
    for (i, p) in planned.iter().enumerate() {
        if options.dry_run && deferred.contains(&i) {
            // Its namespace is only created by this set, which a dry run does not do.
            writeln!(
                term.out,
                "{} not checked{suffix}: its namespace {} is created by this set",
                p.resource.object_name(&p.identity.name),
                p.namespace.as_deref().unwrap_or_default()
            )?;
            continue;
        }
        let api = ctx.api(&p.resource, p.namespace.as_deref());
        let before = match api.get_opt(&p.identity.name).await {
            Ok(before) => before,
            Err(e) => {
                outcome = Outcome::Failed;
                Failure {
                    position: p.position,
                    origin: p.origin.clone(),
                    identity: Some(p.identity.clone()),
                    error: DocumentError::Rejected {
                        message: format!("reading the current object: {}", ApiFailure(e)),
                        causes: Vec::new(),
                    },
                    hint: None,
                }
                .print(term)?;
                continue;
            }
        };
        match server_apply(ctx, p, &apply_params(options)).await {
            Ok(after) => {
                let verb = match &before {
                    None => "created",
                    Some(before) if same_content(before, &after) => "unchanged",
                    Some(_) => "configured",
                };
                writeln!(
                    term.out,
                    "{} {verb}{suffix}",
                    p.resource.object_name(&p.identity.name)
                )?;
            }
            Err(failure) => {
                outcome = Outcome::Failed;
                rejection(p, &failure).print(term)?;
            }
        }
    }
    if !options.prune {
        return Ok(outcome);
    }
    if outcome == Outcome::Failed {
        writeln!(
            term.err,
            "not pruning: some documents failed to apply, so the set is not what the server holds"
        )?;
        return Ok(outcome);
    }
    let selector = options.selector.as_deref().unwrap_or_default();
    prune(ctx, catalog, &planned, selector, options.dry_run, term).await
}

/// Whether an apply left the object as it was. Compared by content rather than
/// resourceVersion, because a dry run returns the would-be object under the old version.
fn same_content(before: &DynamicObject, after: &DynamicObject) -> bool {
    let strip = |object: &DynamicObject| {
        let mut value = serde_json::to_value(object).unwrap_or_default();
        if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            for server_owned in ["managedFields", "resourceVersion", "generation"] {
                metadata.remove(server_owned);
            }
        }
        value
    };
    strip(before) == strip(after)
}

/// Prints the failures of a set that is not applied at all.
fn refuse(failures: &[Failure], total: usize, term: &mut Terminal) -> Result<Outcome, Error> {
    for failure in failures {
        failure.print(term)?;
    }
    writeln!(
        term.err,
        "nothing applied: {} of {total} documents failed validation",
        failures.len()
    )?;
    Ok(Outcome::Failed)
}

/// Checks one document here and resolves its kind.
fn plan(
    ctx: &Context,
    catalog: &Catalog,
    position: usize,
    origin: Origin,
    content: Result<Value, DocumentError>,
) -> Result<Planned, Box<Failure>> {
    let fail = |identity: Option<Identity>, error| {
        Box::new(Failure {
            position,
            origin: origin.clone(),
            identity,
            error,
            hint: None,
        })
    };
    let mut body = content.map_err(|e| fail(None, e))?;
    let identity = manifest::identify(&body).map_err(|e| fail(None, e))?;
    let Some(resource) = catalog.by_kind(&identity.api_version, &identity.kind) else {
        let served = catalog
            .versions_of_kind(&identity.kind)
            .into_iter()
            .map(str::to_string)
            .collect();
        return Err(fail(
            Some(identity.clone()),
            DocumentError::UnknownKind {
                api_version: identity.api_version.clone(),
                kind: identity.kind.clone(),
                served,
            },
        ));
    };
    let namespace = if resource.namespaced {
        match &identity.namespace {
            Some(ns) if ctx.namespace_explicit && *ns != ctx.namespace => {
                return Err(fail(
                    Some(identity.clone()),
                    DocumentError::NamespaceMismatch {
                        document: ns.clone(),
                        flag: ctx.namespace.clone(),
                    },
                ));
            }
            Some(ns) => Some(ns.clone()),
            None => Some(ctx.namespace.clone()),
        }
    } else {
        None
    };
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        // The server refuses managedFields in an apply body; a document saved with
        // `get -o yaml --show-managed-fields` should still apply.
        metadata.remove("managedFields");
        metadata.remove("resourceVersion");
        metadata.remove("uid");
        metadata.remove("creationTimestamp");
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        match annotations {
            Value::Object(map) => {
                map.insert(
                    APPLIED_BY_ANNOTATION.to_string(),
                    Value::String(FIELD_MANAGER.into()),
                );
            }
            Value::Null => {
                *annotations = serde_json::json!({APPLIED_BY_ANNOTATION: FIELD_MANAGER});
            }
            _ => {
                return Err(fail(
                    Some(identity.clone()),
                    DocumentError::NotAMapping {
                        field: "metadata.annotations",
                    },
                ));
            }
        }
    }
    Ok(Planned {
        position,
        origin,
        identity,
        resource: resource.clone(),
        namespace,
        body,
    })
}

/// The apply request's parameters: field manager `corralctl`, strict field validation.
fn apply_params(options: &ApplyOptions) -> PatchParams {
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = options.force_conflicts;
    params.dry_run = options.dry_run;
    params.field_validation = Some(ValidationDirective::Strict);
    params
}

async fn server_apply(
    ctx: &Context,
    p: &Planned,
    params: &PatchParams,
) -> Result<DynamicObject, kube::Error> {
    let api = ctx.api(&p.resource, p.namespace.as_deref());
    api.patch(&p.identity.name, params, &Patch::Apply(&p.body))
        .await
}

/// Whether the server refused because namespace `ns` does not exist.
fn is_missing_namespace(error: &kube::Error, ns: &str) -> bool {
    let kube::Error::Api(status) = error else {
        return false;
    };
    status.is_not_found()
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.kind == "namespaces" && d.name == ns)
}

/// The server's refusal of a document, naming its fields.
fn rejection(p: &Planned, error: &kube::Error) -> Failure {
    let (error, hint) = document_error(error);
    Failure {
        position: p.position,
        origin: p.origin.clone(),
        identity: Some(p.identity.clone()),
        error,
        hint,
    }
}

/// Turns a server error into a [`DocumentError`] naming each field: the `Status`
/// `details.causes[].field`, or, for strict decoding errors (which carry no causes), the
/// `unknown field "..."` names of the message.
pub fn document_error(error: &kube::Error) -> (DocumentError, Option<&'static str>) {
    let kube::Error::Api(status) = error else {
        return (
            DocumentError::Rejected {
                message: crate::error::describe(error),
                causes: Vec::new(),
            },
            None,
        );
    };
    let mut causes: Vec<FieldCause> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .filter(|c| !c.field.is_empty())
        .map(|c| FieldCause {
            field: c.field.trim_start_matches('.').to_string(),
            message: if c.message.is_empty() {
                c.reason.clone()
            } else {
                c.message.clone()
            },
        })
        .collect();
    if causes.is_empty() {
        causes = unknown_fields(&status.message)
            .into_iter()
            .map(|field| FieldCause {
                field,
                message: "unknown field (the kind's schema has no such field)".into(),
            })
            .collect();
    }
    let hint = (status.is_conflict() && !causes.is_empty())
        .then_some("another manager owns these fields; --force-conflicts takes them over");
    (
        DocumentError::Rejected {
            message: status.message.clone(),
            causes,
        },
        hint,
    )
}

/// The fields of `strict decoding error: unknown field "spec.x", unknown field "y"`.
fn unknown_fields(message: &str) -> Vec<String> {
    const MARKER: &str = "unknown field \"";
    let mut fields = Vec::new();
    let mut rest = message;
    while let Some(start) = rest.find(MARKER) {
        rest = &rest[start + MARKER.len()..];
        match rest.find('"') {
            Some(end) => {
                fields.push(rest[..end].to_string());
                rest = &rest[end..];
            }
            None => break,
        }
    }
    fields
}

/// Deletes what corralctl applied under `selector` that `applied` no longer holds.
async fn prune(
    ctx: &Context,
    catalog: &Catalog,
    applied: &[Planned],
    selector: &str,
    dry_run: bool,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let keep: BTreeSet<ObjectKey> = applied.iter().map(Planned::key).collect();
    // Kinds: those of the set and every Corral kind, once each.
    let mut kinds: Vec<ResourceType> = Vec::new();
    for resource in applied
        .iter()
        .map(|p| &p.resource)
        .chain(catalog.in_group(corral_crds::GROUP))
    {
        if !kinds
            .iter()
            .any(|k| k.group() == resource.group() && k.kind() == resource.kind())
        {
            kinds.push(resource.clone());
        }
    }
    let mut namespaces: BTreeSet<String> =
        applied.iter().filter_map(|p| p.namespace.clone()).collect();
    namespaces.insert(ctx.namespace.clone());

    let mut outcome = Outcome::Succeeded;
    let params = ListParams::default().labels(selector);
    for resource in &kinds {
        let apis = if resource.namespaced {
            namespaces
                .iter()
                .map(|ns| (Some(ns.clone()), ctx.api(resource, Some(ns))))
                .collect::<Vec<_>>()
        } else {
            vec![(None, ctx.api(resource, None))]
        };
        for (namespace, api) in apis {
            let list = api.list(&params).await.map_err(Error::api(format!(
                "listing {} to prune",
                resource.plural_and_group()
            )))?;
            for object in list.items {
                let name = object.metadata.name.clone().unwrap_or_default();
                let ours = object
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(APPLIED_BY_ANNOTATION))
                    .is_some_and(|v| v == FIELD_MANAGER);
                let key = ObjectKey {
                    group: resource.group().to_string(),
                    kind: resource.kind().to_string(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                };
                if !ours || keep.contains(&key) || object.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let params = DeleteParams {
                    dry_run,
                    ..DeleteParams::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => writeln!(
                        term.out,
                        "{} pruned{}",
                        resource.object_name(&name),
                        if dry_run { " (server dry run)" } else { "" }
                    )?,
                    Err(kube::Error::Api(status)) if status.is_not_found() => {}
                    Err(e) => {
                        outcome = Outcome::Failed;
                        writeln!(
                            term.err,
                            "error: pruning {}: {}",
                            resource.object_name(&name),
                            ApiFailure(e)
                        )?;
                    }
                }
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use kube::core::response::{StatusCause, StatusDetails};

    use super::*;

    #[test]
    fn unknown_fields_are_read_from_a_strict_decoding_error() {
        assert_eq!(
            unknown_fields(
                r#"strict decoding error: unknown field "spec.x", unknown field "spec.nics[0].y""#
            ),
            ["spec.x", "spec.nics[0].y"]
        );
        assert!(unknown_fields("something else").is_empty());
    }

    #[test]
    fn invalid_values_name_each_field_of_the_status_causes() {
        let status = Status::failure("Instance.corral.dev \"a\" is invalid: ...", "Invalid")
            .with_code(422)
            .with_details(StatusDetails {
                name: "a".into(),
                group: "corral.dev".into(),
                kind: "instances".into(),
                uid: String::new(),
                causes: vec![StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: -1: must be at least 1".into(),
                    field: "spec.cpus".into(),
                }],
                retry_after_seconds: 0,
            });
        let (error, hint) = document_error(&kube::Error::Api(Box::new(status)));
        assert_eq!(
            error.to_string(),
            "field spec.cpus: Invalid value: -1: must be at least 1"
        );
        assert_eq!(hint, None);
    }

    #[test]
    fn conflicts_name_the_field_and_suggest_forcing() {
        let status = Status::failure("Apply failed with 1 conflict", "Conflict")
            .with_code(409)
            .with_details(StatusDetails {
                name: "a".into(),
                group: "corral.dev".into(),
                kind: "instances".into(),
                uid: String::new(),
                causes: vec![StatusCause {
                    reason: "FieldManagerConflict".into(),
                    message: "conflict with \"kubectl\"".into(),
                    field: ".spec.cpus".into(),
                }],
                retry_after_seconds: 0,
            });
        let (error, hint) = document_error(&kube::Error::Api(Box::new(status)));
        assert_eq!(
            error.to_string(),
            "field spec.cpus: conflict with \"kubectl\""
        );
        assert!(hint.is_some());
    }
}
