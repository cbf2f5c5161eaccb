//! `corralctl delete KIND NAME... | KIND/NAME... | KIND -l SELECTOR | KIND --all | -f FILE`:
//! asks the server to delete objects; `--wait` then waits (on a watch, bounded by
//! `--timeout`) until they are really gone — for a Vmm, until its node-agent has torn the VMM
//! down and removed its finalizer.
//!
//! Deleting one object is independent of the others: a missing name is reported (unless
//! `--ignore-not-found`) and the rest are still deleted.

use std::io::Read;
use std::time::Duration;

use kube::api::{DeleteParams, ListParams};
use tokio::time::Instant;

use crate::command::{Outcome, Terminal};
use crate::context::Context;
use crate::discovery::ResourceType;
use crate::error::Error;
use crate::manifest;
use crate::target::Targets;
use crate::wait::{self, WaitFor};

pub struct DeleteOptions {
    pub targets: Vec<String>,
    /// Delete the objects these manifests describe.
    pub files: Vec<String>,
    pub selector: Option<String>,
    /// Every object of the kind (in the namespace).
    pub all: bool,
    pub wait: bool,
    pub timeout: Duration,
    pub ignore_not_found: bool,
    pub dry_run: bool,
}

/// One object to delete.
struct Doomed {
    resource: ResourceType,
    namespace: Option<String>,
    name: String,
}

pub async fn delete(
    ctx: &Context,
    options: &DeleteOptions,
    stdin: &mut dyn Read,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let mut outcome = Outcome::Succeeded;
    let doomed = if options.files.is_empty() {
        from_arguments(ctx, options).await?
    } else {
        if !options.targets.is_empty() {
            return Err(Error::Usage(
                "give either -f FILE or KIND NAME, not both".into(),
            ));
        }
        let (doomed, status) = from_manifests(ctx, options, stdin, term).await?;
        outcome = status;
        doomed
    };
    let mut deleted = Vec::new();
    let params = DeleteParams {
        dry_run: options.dry_run,
        ..DeleteParams::default()
    };
    let suffix = if options.dry_run {
        " (server dry run)"
    } else {
        ""
    };
    for d in doomed {
        let api = ctx.api(&d.resource, d.namespace.as_deref());
        match api.delete(&d.name, &params).await {
            Ok(_) => {
                writeln!(
                    term.out,
                    "{} {:?} deleted{suffix}",
                    d.resource.plural_and_group(),
                    d.name
                )?;
                deleted.push(d);
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                if !options.ignore_not_found {
                    outcome = Outcome::Failed;
                    writeln!(
                        term.err,
                        "Error from server (NotFound): {} {:?} not found{}",
                        d.resource.plural_and_group(),
                        d.name,
                        d.namespace
                            .as_ref()
                            .map(|ns| format!(" in namespace {ns}"))
                            .unwrap_or_default()
                    )?;
                }
            }
            Err(e) => {
                outcome = Outcome::Failed;
                writeln!(
                    term.err,
                    "error: deleting {}: {}",
                    d.resource.object_name(&d.name),
                    crate::error::describe(&e)
                )?;
            }
        }
    }
    if options.wait && !options.dry_run {
        let deadline = Instant::now() + options.timeout;
        for d in &deleted {
            wait::wait_one(
                ctx,
                &d.resource,
                d.namespace.as_deref(),
                &d.name,
                &WaitFor::Delete,
                deadline,
                options.timeout,
            )
            .await?;
        }
    }
    Ok(outcome)
}

async fn from_arguments(ctx: &Context, options: &DeleteOptions) -> Result<Vec<Doomed>, Error> {
    let here = |resource: &ResourceType| resource.namespaced.then(|| ctx.namespace.clone());
    let mut doomed = Vec::new();
    match Targets::parse(&options.targets)? {
        Targets::Named(pairs) => {
            if options.selector.is_some() || options.all {
                return Err(Error::Usage(
                    "name objects, or select them with -l or --all, not both".into(),
                ));
            }
            for (kind, name) in pairs {
                let resource = ctx.resolve(&kind).await?;
                doomed.push(Doomed {
                    namespace: here(&resource),
                    resource,
                    name,
                });
            }
        }
        Targets::Kinds(kinds) => {
            if options.selector.is_none() && !options.all {
                return Err(Error::Usage(
                    "name the objects to delete, or select them with -l SELECTOR or --all".into(),
                ));
            }
            for kind in kinds {
                let resource = ctx.resolve(&kind).await?;
                let api = ctx.api_here(&resource);
                let mut params = ListParams::default();
                if let Some(s) = &options.selector {
                    params = params.labels(s);
                }
                let list = api.list(&params).await.map_err(Error::api(format!(
                    "listing {}",
                    resource.plural_and_group()
                )))?;
                for object in list.items {
                    doomed.push(Doomed {
                        namespace: here(&resource),
                        resource: resource.clone(),
                        name: object.metadata.name.unwrap_or_default(),
                    });
                }
            }
        }
    }
    Ok(doomed)
}

/// The objects manifests describe; a document that names none is reported.
async fn from_manifests(
    ctx: &Context,
    options: &DeleteOptions,
    stdin: &mut dyn Read,
    term: &mut Terminal<'_>,
) -> Result<(Vec<Doomed>, Outcome), Error> {
    let catalog = ctx.catalog().await?;
    let mut outcome = Outcome::Succeeded;
    let mut doomed = Vec::new();
    for document in manifest::read(&options.files, stdin)? {
        let identity = document
            .content
            .as_ref()
            .map_err(Clone::clone)
            .and_then(manifest::identify);
        let identity = match identity {
            Ok(identity) => identity,
            Err(error) => {
                outcome = Outcome::Failed;
                writeln!(term.err, "error: {}: {error}", document.origin)?;
                continue;
            }
        };
        let Some(resource) = catalog.by_kind(&identity.api_version, &identity.kind) else {
            outcome = Outcome::Failed;
            writeln!(
                term.err,
                "error: {} ({identity}): field kind: the server does not serve kind {:?} in apiVersion {:?}",
                document.origin, identity.kind, identity.api_version
            )?;
            continue;
        };
        let namespace = resource.namespaced.then(|| {
            identity
                .namespace
                .clone()
                .unwrap_or_else(|| ctx.namespace.clone())
        });
        doomed.push(Doomed {
            resource: resource.clone(),
            namespace,
            name: identity.name,
        });
    }
    Ok((doomed, outcome))
}
