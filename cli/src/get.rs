//! `corralctl get`: objects as the server's Table (the kind's printer columns, rendered as
//! kubectl does), as YAML or JSON, or as names; `-w` keeps printing as they change.
//!
//! The Table comes from the server (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`),
//! so every kind the server serves prints its own columns and `date` cells arrive as ages.
//!
//! A watch starts at the resourceVersion of the list it follows, so no change between the two
//! is lost. When the server ends a watch (its timeout) it is resumed from the last version
//! seen; when that version is too old (410 Expired) the list is read again, silently, and the
//! watch resumes from it.

use futures::{StreamExt, TryStreamExt};
use kube::api::{DynamicObject, ListParams, WatchEvent, WatchParams};
use kube::core::Request;
use serde_json::Value;

use crate::command::{Outcome, Terminal};
use crate::context::Context;
use crate::discovery::ResourceType;
use crate::error::Error;
use crate::output::{self, OutputFormat};
use crate::table::{Columns, Table, TableRow, TableView};
use crate::target::Targets;

/// The Accept header that asks for a Table (with plain JSON as the fallback).
pub const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// How long one watch request lasts before it is resumed.
const WATCH_TIMEOUT_SECONDS: u32 = 290;

pub struct GetOptions {
    pub targets: Vec<String>,
    pub all_namespaces: bool,
    pub selector: Option<String>,
    pub field_selector: Option<String>,
    pub output: OutputFormat,
    pub watch: bool,
    /// Print the watch event type (ADDED, MODIFIED, DELETED) before each watched row.
    pub output_watch_events: bool,
    pub show_managed_fields: bool,
}

/// One resource type and, when named, which of its objects.
pub struct Selection {
    pub resource: ResourceType,
    pub names: Option<Vec<String>>,
}

/// Resolves command-line targets, keeping their order and grouping names by type.
pub async fn select(ctx: &Context, args: &[String]) -> Result<Vec<Selection>, Error> {
    let mut selections: Vec<Selection> = Vec::new();
    match Targets::parse(args)? {
        Targets::Kinds(kinds) => {
            for kind in kinds {
                selections.push(Selection {
                    resource: ctx.resolve(&kind).await?,
                    names: None,
                });
            }
        }
        Targets::Named(pairs) => {
            for (kind, name) in pairs {
                let resource = ctx.resolve(&kind).await?;
                match selections
                    .iter_mut()
                    .find(|s| s.resource.api_resource == resource.api_resource)
                {
                    Some(s) => s.names.get_or_insert_with(Vec::new).push(name),
                    None => selections.push(Selection {
                        resource,
                        names: Some(vec![name]),
                    }),
                }
            }
        }
    }
    Ok(selections)
}

impl GetOptions {
    fn list_params(&self) -> ListParams {
        let mut params = ListParams::default().limit(500);
        if let Some(s) = &self.selector {
            params = params.labels(s);
        }
        if let Some(f) = &self.field_selector {
            params = params.fields(f);
        }
        params
    }

    fn namespace<'a>(&self, ctx: &'a Context) -> Option<&'a str> {
        (!self.all_namespaces).then_some(ctx.namespace.as_str())
    }
}

pub async fn get(
    ctx: &Context,
    options: &GetOptions,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let selections = select(ctx, &options.targets).await?;
    if options.all_namespaces && selections.iter().any(|s| s.names.is_some()) {
        return Err(Error::Usage(
            "an object cannot be retrieved by name across all namespaces (drop -A)".into(),
        ));
    }
    if options.watch {
        let [selection] = selections.as_slice() else {
            return Err(Error::Usage(
                "watch is only supported on one resource type".into(),
            ));
        };
        if selection.names.as_ref().is_some_and(|n| n.len() > 1) {
            return Err(Error::Usage(
                "watch is only supported on one named object".into(),
            ));
        }
        return watch(ctx, options, selection, term).await;
    }
    let several = selections.len() > 1;
    let mut outcome = Outcome::Succeeded;
    let mut objects: Vec<Value> = Vec::new();
    let mut single_object = false;
    for (i, selection) in selections.iter().enumerate() {
        match options.output {
            OutputFormat::Table | OutputFormat::Wide => {
                let (mut table, found) = fetch_table(ctx, options, selection, term).await?;
                outcome = outcome.and(found);
                if is_sleds(&selection.resource) {
                    crate::heartbeat::add_column(ctx, &mut table).await?;
                }
                if table.rows.is_empty() {
                    if selection.names.is_none() {
                        writeln!(
                            term.err,
                            "{}",
                            no_resources(ctx, options, &selection.resource)
                        )?;
                    }
                    continue;
                }
                if i > 0 && several {
                    writeln!(term.out)?;
                }
                let prefix = several.then(|| format!("{}/", selection.resource.kind_and_group()));
                let view = TableView::new(
                    &table.column_definitions,
                    options.output == OutputFormat::Wide,
                    options.all_namespaces && selection.resource.namespaced,
                    prefix,
                );
                write!(term.out, "{}", view.render(&table.rows).1)?;
            }
            OutputFormat::Yaml | OutputFormat::Json | OutputFormat::Name => {
                let (found, status) = fetch_objects(ctx, options, selection, term).await?;
                outcome = outcome.and(status);
                if options.output == OutputFormat::Name {
                    for object in &found {
                        let name = object.metadata.name.as_deref().unwrap_or_default();
                        writeln!(term.out, "{}", selection.resource.object_name(name))?;
                    }
                    continue;
                }
                single_object = !several && selection.names.as_ref().is_some_and(|n| n.len() == 1);
                for object in found {
                    objects.push(present(object, options.show_managed_fields)?);
                }
            }
        }
    }
    match options.output {
        OutputFormat::Yaml | OutputFormat::Json => {
            let value = if single_object && objects.len() == 1 {
                objects.remove(0)
            } else if single_object {
                // The one named object was not found; its error is printed already.
                return Ok(outcome);
            } else {
                output::list(objects)
            };
            let text = if options.output == OutputFormat::Yaml {
                output::to_yaml(&value)?
            } else {
                output::to_json(&value)?
            };
            write!(term.out, "{text}")?;
        }
        _ => {}
    }
    Ok(outcome)
}

/// Whether `resource` is Corral's Sleds (their table gets the Lease's age).
fn is_sleds(resource: &ResourceType) -> bool {
    resource.group() == corral_crds::GROUP && resource.api_resource.plural == "sleds"
}

fn no_resources(ctx: &Context, options: &GetOptions, resource: &ResourceType) -> String {
    if resource.namespaced && !options.all_namespaces {
        format!("No resources found in {} namespace.", ctx.namespace)
    } else {
        "No resources found".to_string()
    }
}

/// An object as `-o yaml|json` prints it.
fn present(object: DynamicObject, show_managed_fields: bool) -> Result<Value, Error> {
    let mut value = serde_json::to_value(object).map_err(Error::Encode)?;
    if !show_managed_fields {
        output::strip_managed_fields(&mut value);
    }
    Ok(value)
}

/// The Table of a selection: the named objects' rows (a missing one is reported and makes the
/// outcome Failed) or the whole list, all pages.
pub async fn fetch_table(
    ctx: &Context,
    options: &GetOptions,
    selection: &Selection,
    term: &mut Terminal<'_>,
) -> Result<(Table, Outcome), Error> {
    let api = ctx.api(&selection.resource, options.namespace(ctx));
    let url = api.resource_url().to_string();
    let mut outcome = Outcome::Succeeded;
    let mut table = Table::default();
    match &selection.names {
        Some(names) => {
            for name in names {
                let request = Request::new(&url)
                    .get(name, &Default::default())
                    .map_err(kube::Error::BuildRequest)
                    .map_err(Error::api(format!("getting {name}")))?;
                match request_table(ctx, request, format!("getting {name}")).await {
                    Ok(one) => merge(&mut table, one),
                    Err(e) if e.is_not_found() => {
                        outcome = Outcome::Failed;
                        writeln!(term.err, "{}", ctx.not_found(&selection.resource, name))?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        None => {
            let mut params = options.list_params();
            loop {
                let request = Request::new(&url)
                    .list(&params)
                    .map_err(kube::Error::BuildRequest)
                    .map_err(Error::api("listing"))?;
                let action = format!("listing {}", selection.resource.plural_and_group());
                let page = request_table(ctx, request, action).await?;
                let next = page
                    .metadata
                    .continue_token
                    .clone()
                    .filter(|c| !c.is_empty());
                merge(&mut table, page);
                match next {
                    Some(token) => params.continue_token = Some(token),
                    None => break,
                }
            }
        }
    }
    Ok((table, outcome))
}

fn merge(into: &mut Table, page: Table) {
    if into.column_definitions.is_empty() {
        into.column_definitions = page.column_definitions;
    }
    into.rows.extend(page.rows);
    if page.metadata.resource_version.is_some() {
        into.metadata.resource_version = page.metadata.resource_version;
    }
}

/// Sends `request` asking for a Table; `action` names it in an error.
async fn request_table(
    ctx: &Context,
    mut request: http::Request<Vec<u8>>,
    action: String,
) -> Result<Table, Error> {
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(TABLE_ACCEPT),
    );
    ctx.client
        .request::<Table>(request)
        .await
        .map_err(Error::api(action))
}

/// The objects of a selection; a missing named one is reported and makes the outcome Failed.
async fn fetch_objects(
    ctx: &Context,
    options: &GetOptions,
    selection: &Selection,
    term: &mut Terminal<'_>,
) -> Result<(Vec<DynamicObject>, Outcome), Error> {
    let api = ctx.api(&selection.resource, options.namespace(ctx));
    let mut outcome = Outcome::Succeeded;
    let mut found = Vec::new();
    match &selection.names {
        Some(names) => {
            for name in names {
                match api.get_opt(name).await {
                    Ok(Some(object)) => found.push(with_types(object, &selection.resource)),
                    Ok(None) => {
                        outcome = Outcome::Failed;
                        writeln!(term.err, "{}", ctx.not_found(&selection.resource, name))?;
                    }
                    Err(e) => return Err(Error::api(format!("getting {name}"))(e)),
                }
            }
        }
        None => {
            let mut params = options.list_params();
            loop {
                let list = api.list(&params).await.map_err(Error::api(format!(
                    "listing {}",
                    selection.resource.plural_and_group()
                )))?;
                let next = list.metadata.continue_.clone().filter(|c| !c.is_empty());
                found.extend(
                    list.items
                        .into_iter()
                        .map(|o| with_types(o, &selection.resource)),
                );
                match next {
                    Some(token) => params.continue_token = Some(token),
                    None => break,
                }
            }
        }
    }
    Ok((found, outcome))
}

/// List items may come without `apiVersion`/`kind`; printed objects always carry them.
pub fn with_types(mut object: DynamicObject, resource: &ResourceType) -> DynamicObject {
    if object.types.is_none() {
        object.types = Some(kube::api::TypeMeta {
            api_version: resource.api_resource.api_version.clone(),
            kind: resource.api_resource.kind.clone(),
        });
    }
    object
}

fn watch_params(options: &GetOptions, selection: &Selection) -> WatchParams {
    let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECONDS);
    if let Some(s) = &options.selector {
        params = params.labels(s);
    }
    let mut fields: Vec<String> = options.field_selector.iter().cloned().collect();
    if let Some(name) = selection.names.as_ref().and_then(|n| n.first()) {
        fields.push(format!("metadata.name={name}"));
    }
    if !fields.is_empty() {
        params = params.fields(&fields.join(","));
    }
    params
}

fn event_label(event: &WatchEvent<impl Clone>) -> &'static str {
    match event {
        WatchEvent::Added(_) => "ADDED",
        WatchEvent::Modified(_) => "MODIFIED",
        WatchEvent::Deleted(_) => "DELETED",
        WatchEvent::Bookmark(_) => "BOOKMARK",
        WatchEvent::Error(_) => "ERROR",
    }
}

/// `get -w`: the current objects, then every change, until interrupted.
async fn watch(
    ctx: &Context,
    options: &GetOptions,
    selection: &Selection,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    match options.output {
        OutputFormat::Table | OutputFormat::Wide => {
            watch_table(ctx, options, selection, term).await
        }
        _ => watch_objects(ctx, options, selection, term).await,
    }
}

async fn watch_table(
    ctx: &Context,
    options: &GetOptions,
    selection: &Selection,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    // The named object may not exist yet: list by field selector instead of getting it.
    let list_selection = Selection {
        resource: selection.resource.clone(),
        names: None,
    };
    let mut list_options = GetOptions {
        targets: Vec::new(),
        all_namespaces: options.all_namespaces,
        selector: options.selector.clone(),
        field_selector: options.field_selector.clone(),
        output: options.output,
        watch: false,
        output_watch_events: false,
        show_managed_fields: false,
    };
    if let Some(name) = selection.names.as_ref().and_then(|n| n.first()) {
        let name_field = format!("metadata.name={name}");
        list_options.field_selector = Some(match &options.field_selector {
            Some(f) => format!("{f},{name_field}"),
            None => name_field,
        });
    }
    let (table, _) = fetch_table(ctx, &list_options, &list_selection, term).await?;
    let events_column = options.output_watch_events;
    let view = TableView::new(
        &table.column_definitions,
        options.output == OutputFormat::Wide,
        options.all_namespaces && selection.resource.namespaced,
        None,
    );
    let headers = with_event_column(events_column, "EVENT", view.headers());
    let mut rows: Vec<Vec<String>> = vec![headers.clone()];
    rows.extend(
        table
            .rows
            .iter()
            .map(|r| with_event_column(events_column, "ADDED", view.cells(r))),
    );
    let mut columns = Columns::fit(&rows);
    let mut header_printed = false;
    if !table.rows.is_empty() {
        for row in &rows {
            writeln!(term.out, "{}", columns.line(row))?;
        }
        header_printed = true;
    }
    term.out.flush()?;
    let mut version = table.metadata.resource_version.unwrap_or_default();
    let api = ctx.api(&selection.resource, options.namespace(ctx));
    let url = api.resource_url().to_string();
    loop {
        let mut request = Request::new(&url)
            .watch(&watch_params(options, selection), &version)
            .map_err(kube::Error::BuildRequest)
            .map_err(Error::api("watching"))?;
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(TABLE_ACCEPT),
        );
        let stream = ctx
            .client
            .request_events::<Table>(request)
            .await
            .map_err(Error::api(format!(
                "watching {}",
                selection.resource.plural_and_group()
            )))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let event = event.map_err(Error::api("watching"))?;
            let label = event_label(&event);
            match event {
                WatchEvent::Added(t) | WatchEvent::Modified(t) | WatchEvent::Deleted(t) => {
                    for row in &t.rows {
                        if !header_printed {
                            // The first row fixes the widths, as kubectl's does.
                            let cells = with_event_column(events_column, label, view.cells(row));
                            columns = Columns::fit(&[headers.clone(), cells]);
                            writeln!(term.out, "{}", columns.line(&headers))?;
                            header_printed = true;
                        }
                        let cells = with_event_column(events_column, label, view.cells(row));
                        writeln!(term.out, "{}", columns.line(&cells))?;
                        if let Some(rv) = row_version(&t, row) {
                            version = rv;
                        }
                    }
                    term.out.flush()?;
                }
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => {
                    let (fresh, _) = fetch_table(ctx, &list_options, &list_selection, term).await?;
                    version = fresh.metadata.resource_version.unwrap_or_default();
                    break;
                }
                WatchEvent::Error(status) => {
                    return Err(Error::api("watching")(kube::Error::Api(status)));
                }
            }
        }
    }
}

fn with_event_column(enabled: bool, label: &str, mut cells: Vec<String>) -> Vec<String> {
    if enabled {
        cells.insert(0, label.to_string());
    }
    cells
}

fn row_version(table: &Table, row: &TableRow) -> Option<String> {
    row.resource_version()
        .map(str::to_string)
        .or_else(|| table.metadata.resource_version.clone())
}

async fn watch_objects(
    ctx: &Context,
    options: &GetOptions,
    selection: &Selection,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let api = ctx.api(&selection.resource, options.namespace(ctx));
    let mut list_params = ListParams::default();
    let watch = watch_params(options, selection);
    list_params.label_selector = watch.label_selector.clone();
    list_params.field_selector = watch.field_selector.clone();
    let list = api.list(&list_params).await.map_err(Error::api(format!(
        "listing {}",
        selection.resource.plural_and_group()
    )))?;
    let mut version = list.metadata.resource_version.clone().unwrap_or_default();
    for object in list.items {
        print_watched(options, selection, "ADDED", object, term)?;
    }
    loop {
        let stream = api
            .watch(&watch, &version)
            .await
            .map_err(Error::api(format!(
                "watching {}",
                selection.resource.plural_and_group()
            )))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.try_next().await.map_err(Error::api("watching"))? {
            let label = event_label(&event);
            match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                    if let Some(rv) = &o.metadata.resource_version {
                        version = rv.clone();
                    }
                    print_watched(options, selection, label, o, term)?;
                }
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => {
                    let fresh = api
                        .list(&list_params)
                        .await
                        .map_err(Error::api("listing"))?;
                    version = fresh.metadata.resource_version.unwrap_or_default();
                    break;
                }
                WatchEvent::Error(status) => {
                    return Err(Error::api("watching")(kube::Error::Api(status)));
                }
            }
        }
    }
}

fn print_watched(
    options: &GetOptions,
    selection: &Selection,
    label: &str,
    object: DynamicObject,
    term: &mut Terminal<'_>,
) -> Result<(), Error> {
    let prefix = if options.output_watch_events {
        format!("{label} ")
    } else {
        String::new()
    };
    match options.output {
        OutputFormat::Name => {
            let name = object.metadata.name.clone().unwrap_or_default();
            writeln!(
                term.out,
                "{prefix}{}",
                selection.resource.object_name(&name)
            )?;
        }
        OutputFormat::Json => {
            let value = present(
                with_types(object, &selection.resource),
                options.show_managed_fields,
            )?;
            if options.output_watch_events {
                let event = serde_json::json!({"type": label, "object": value});
                write!(term.out, "{}", output::to_json(&event)?)?;
            } else {
                write!(term.out, "{}", output::to_json(&value)?)?;
            }
        }
        _ => {
            let value = present(
                with_types(object, &selection.resource),
                options.show_managed_fields,
            )?;
            let value = if options.output_watch_events {
                serde_json::json!({"type": label, "object": value})
            } else {
                value
            };
            write!(term.out, "---\n{}", output::to_yaml(&value)?)?;
        }
    }
    term.out.flush()?;
    Ok(())
}
