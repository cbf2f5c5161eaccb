//! `corralctl drain SLED` and `corralctl migrate INSTANCE`: create a Drain or a Migration and
//! follow it to its final phase (docs/migration.md).
//!
//! - `drain` creates the Drain `SLED-<unix seconds>` (the drain controller cordons, plans and
//!   moves) and, unless `--no-wait`, shows its progress on stderr until a final phase: exit 0 on
//!   `Completed`; on `Refused`, `Failed` or `Cancelled` the drain's message and a non-zero exit.
//! - `drain SLED --cancel` sets `spec.cancel` on the sled's unfinished drains.
//! - `migrate` creates the Migration `INSTANCE-<unix seconds>` (reason `User`, `--to` for the
//!   target, `--restart` for `mode: Restart`) and follows it the same way: exit 0 on
//!   `Succeeded`.
//!
//! # Guarantees
//! - Follows the object on a watch (narrowed by `metadata.name`), never by polling; the
//!   `--timeout` bounds the whole wait. A timed-out or interrupted wait leaves the drain or
//!   migration running: it is server-side.
//! - Progress goes to stderr, results to stdout: on a terminal one line redrawn in place, else
//!   a plain line whenever what it says changes (logs stay readable).

use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use corral_crds::drain::Drain;
use corral_crds::{
    DrainPhase, DrainSpec, DrainStatus, Migration, MigrationMode, MigrationPhase, MigrationReason,
    MigrationSpec, MigrationStatus, Sled,
};

use crate::command::{FIELD_MANAGER, Outcome, Terminal};
use crate::context::Context;
use crate::error::Error;

/// What `corralctl drain` was asked.
#[derive(Clone, Debug)]
pub struct DrainOptions {
    pub sled: String,
    pub max_parallel: Option<u32>,
    pub deadline: Option<String>,
    pub force: bool,
    pub cancel: bool,
    pub no_wait: bool,
    pub timeout: Duration,
    /// Whether stderr is a terminal (progress redrawn in place).
    pub tty: bool,
}

/// What `corralctl migrate` was asked.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    pub instance: String,
    pub to: Option<String>,
    /// `Live`, or `Restart` (`--restart`).
    pub mode: MigrationMode,
    pub no_wait: bool,
    pub timeout: Duration,
    pub tty: bool,
}

fn unix_seconds() -> i64 {
    corral_client::clock::now().as_second()
}

/// The name of a Drain of a sled (or a Migration of an instance) created at `unix` seconds.
pub fn timestamped_name(base: &str, unix: i64) -> String {
    format!("{base}-{unix}")
}

/// A progress bar `width` wide, `done` of `total` filled.
pub fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        (done as usize * width / total as usize).min(width)
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn eta(seconds: Option<u64>) -> String {
    match seconds {
        Some(s) => format!(
            ", ETA {}",
            corral_apimachinery::duration::human_duration(Duration::from_secs(s))
        ),
        None => String::new(),
    }
}

/// One line of a drain's progress.
pub fn drain_line(name: &str, status: &DrainStatus) -> String {
    let phase = status.phase.map(|p| p.as_str()).unwrap_or("Pending");
    let mut line = format!(
        "drain {name}: {phase} {} {} moved, {} moving",
        bar(status.moved, status.total, 20),
        if status.progress.is_empty() {
            "0/0"
        } else {
            status.progress.as_str()
        },
        status.moving
    );
    if status.failed > 0 {
        line.push_str(&format!(", {} failed", status.failed));
    }
    line.push_str(&format!(", {} VMMs left", status.vmms_left));
    line.push_str(&eta(status.eta_seconds));
    line
}

/// One line of a migration's progress.
pub fn migration_line(name: &str, status: &MigrationStatus) -> String {
    let phase = status.phase.map(|p| p.as_str()).unwrap_or("Pending");
    let mut line = format!("migration {name}: {phase}");
    if let (Some(from), Some(to)) = (&status.source_sled, &status.target_sled) {
        line.push_str(&format!(" {from} -> {to}"));
    }
    if let Some(progress) = &status.progress {
        line.push_str(&format!(
            " {} {}%, round {}",
            bar(progress.percent, 100, 20),
            progress.percent,
            progress.round
        ));
        line.push_str(&eta(progress.eta_seconds));
    }
    if !status.message.is_empty() && !status.phase.is_some_and(MigrationPhase::is_final) {
        line.push_str(&format!(" ({})", status.message));
    }
    line
}

/// Shows progress on stderr: redrawn in place on a terminal, else a line per change.
struct Progress {
    tty: bool,
    last: Option<String>,
}

impl Progress {
    fn show(&mut self, term: &mut Terminal<'_>, line: String) -> Result<(), Error> {
        if self.last.as_deref() == Some(line.as_str()) {
            return Ok(());
        }
        if self.tty {
            write!(term.err, "\r\x1b[2K{line}")?;
        } else {
            writeln!(term.err, "{line}")?;
        }
        term.err.flush()?;
        self.last = Some(line);
        Ok(())
    }

    fn end(&mut self, term: &mut Terminal<'_>) -> Result<(), Error> {
        if self.tty && self.last.is_some() {
            writeln!(term.err)?;
        }
        Ok(())
    }
}

fn params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    }
}

/// `corralctl drain`.
pub async fn drain(
    ctx: &Context,
    options: &DrainOptions,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let api: Api<Drain> = Api::all(ctx.client.clone());
    let kind = format!("drain.{}", corral_crds::GROUP);
    if options.cancel {
        return cancel(ctx, options, term).await;
    }
    if let Some(deadline) = &options.deadline {
        crate::wait::parse_timeout(deadline)
            .map_err(|e| Error::Usage(format!("--deadline: {e}")))?;
    }
    let sleds: Api<Sled> = Api::all(ctx.client.clone());
    sleds
        .get(&options.sled)
        .await
        .map_err(Error::api(format!("reading sled {}", options.sled)))?;
    let name = timestamped_name(&options.sled, unix_seconds());
    let drain = Drain::new(
        &name,
        DrainSpec {
            sled: options.sled.clone(),
            deadline: options.deadline.clone(),
            max_parallel: options
                .max_parallel
                .unwrap_or(corral_crds::drain::DEFAULT_MAX_PARALLEL),
            force: options.force,
            cancel: false,
        },
    );
    api.create(&params(), &drain)
        .await
        .map_err(Error::api(format!("creating drain {name}")))?;
    writeln!(term.out, "{kind}/{name} created")?;
    if options.no_wait {
        return Ok(Outcome::Succeeded);
    }
    follow_drain(&api, &name, options, term).await
}

async fn follow_drain(
    api: &Api<Drain>,
    name: &str,
    options: &DrainOptions,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let kind = format!("drain.{}", corral_crds::GROUP);
    let mut progress = Progress {
        tty: options.tty,
        last: None,
    };
    let last = follow(
        api,
        name,
        options.timeout,
        |drain: &Drain| {
            let status = drain.status.clone().unwrap_or_default();
            let line = drain_line(name, &status);
            let phase = status.phase.filter(|p| p.is_final());
            (line, phase.map(|p| (p, status)))
        },
        &mut progress,
        term,
    )
    .await;
    progress.end(term)?;
    let (phase, status) = last?;
    let message = if status.message.is_empty() {
        String::new()
    } else {
        format!(": {}", status.message)
    };
    if phase == DrainPhase::Completed {
        writeln!(term.out, "{kind}/{name} {phase}{message}")?;
        Ok(Outcome::Succeeded)
    } else {
        writeln!(term.err, "error: {kind}/{name} {phase}{message}")?;
        Ok(Outcome::Failed)
    }
}

/// `corralctl drain SLED --cancel`: cancels the sled's unfinished drains.
async fn cancel(
    ctx: &Context,
    options: &DrainOptions,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let api: Api<Drain> = Api::all(ctx.client.clone());
    let kind = format!("drain.{}", corral_crds::GROUP);
    let drains = api
        .list(&ListParams::default())
        .await
        .map_err(Error::api("listing drains"))?;
    let unfinished: Vec<&Drain> = drains
        .items
        .iter()
        .filter(|d| d.spec.sled == options.sled && !d.is_finished())
        .collect();
    if unfinished.is_empty() {
        return Err(Error::Gone(format!(
            "sled {} has no unfinished drain",
            options.sled
        )));
    }
    let patch = json!({"spec": {"cancel": true}});
    let patch_params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let mut outcome = Outcome::Succeeded;
    for drain in unfinished {
        let name = drain.name_any();
        api.patch(&name, &patch_params, &Patch::Merge(&patch))
            .await
            .map_err(Error::api(format!("cancelling drain {name}")))?;
        writeln!(term.out, "{kind}/{name} cancel requested")?;
        if !options.no_wait {
            // A cancelled drain ends Cancelled: that is what was asked.
            let mut progress = Progress {
                tty: options.tty,
                last: None,
            };
            let last = follow(
                &api,
                &name,
                options.timeout,
                |drain: &Drain| {
                    let status = drain.status.clone().unwrap_or_default();
                    let phase = status.phase.filter(|p| p.is_final());
                    (drain_line(&name, &status), phase)
                },
                &mut progress,
                term,
            )
            .await;
            progress.end(term)?;
            let phase = last?;
            writeln!(term.out, "{kind}/{name} {phase}")?;
            if phase != DrainPhase::Cancelled {
                outcome = Outcome::Failed;
            }
        }
    }
    Ok(outcome)
}

/// `corralctl migrate`.
pub async fn migrate(
    ctx: &Context,
    options: &MigrateOptions,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let api: Api<Migration> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let kind = format!("migration.{}", corral_crds::GROUP);
    let name = timestamped_name(&options.instance, unix_seconds());
    let migration = Migration::new(
        &name,
        MigrationSpec {
            instance: options.instance.clone(),
            target_sled: options.to.clone(),
            reason: MigrationReason::User,
            mode: options.mode,
            cancel: false,
        },
    );
    api.create(&params(), &migration)
        .await
        .map_err(Error::api(format!("creating migration {name}")))?;
    writeln!(term.out, "{kind}/{name} created")?;
    if options.no_wait {
        return Ok(Outcome::Succeeded);
    }
    let mut progress = Progress {
        tty: options.tty,
        last: None,
    };
    let last = follow(
        &api,
        &name,
        options.timeout,
        |migration: &Migration| {
            let status = migration.status.clone().unwrap_or_default();
            let phase = status.phase.filter(|p| p.is_final());
            (migration_line(&name, &status), phase.map(|p| (p, status)))
        },
        &mut progress,
        term,
    )
    .await;
    progress.end(term)?;
    let (phase, status) = last?;
    let mut message = String::new();
    if let (Some(from), Some(to)) = (&status.source_sled, &status.target_sled) {
        message.push_str(&format!(" ({from} -> {to})"));
    }
    if let Some(reason) = status.reason {
        message.push_str(&format!(", reason {reason}"));
    }
    if !status.message.is_empty() {
        message.push_str(&format!(": {}", status.message));
    }
    if phase == MigrationPhase::Succeeded {
        writeln!(term.out, "{kind}/{name} {phase}{message}")?;
        Ok(Outcome::Succeeded)
    } else {
        writeln!(term.err, "error: {kind}/{name} {phase}{message}")?;
        Ok(Outcome::Failed)
    }
}

/// Watches the object `name` of `api`, showing `see(object).0` as progress, until
/// `see(object).1` is `Some` (returned), the object is deleted, or `timeout` passes.
async fn follow<K, T>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    mut see: impl FnMut(&K) -> (String, Option<T>),
    progress: &mut Progress,
    term: &mut Terminal<'_>,
) -> Result<T, Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let deadline = Instant::now() + timeout;
    let object_name = format!(
        "{}.{}/{name}",
        K::kind(&()).to_lowercase(),
        corral_crds::GROUP
    );
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut last_seen: Option<String> = None;
    let waiting = async {
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::InitApply(object)) | Ok(Event::Apply(object)) => {
                    let (line, done) = see(&object);
                    progress.show(term, line.clone())?;
                    last_seen = Some(line);
                    if let Some(done) = done {
                        return Ok(done);
                    }
                }
                Ok(Event::Delete(_)) => {
                    return Err(Error::Gone(format!("{object_name} was deleted")));
                }
                Ok(_) => {}
                Err(error) => last_seen = Some(format!("watch failed: {error}")),
            }
        }
        Err(Error::Gone(format!("the watch of {object_name} ended")))
    };
    match tokio::time::timeout_at(deadline, waiting).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            what: format!(
                "{object_name} to finish (it goes on; corralctl get {} {name})",
                K::plural(&())
            ),
            after: timeout,
            last_seen,
        }),
    }
}

#[cfg(test)]
mod tests {
    use corral_crds::TransferProgress;

    use super::*;

    #[test]
    fn progress_lines_say_how_far_and_how_long() {
        assert_eq!(bar(0, 4, 8), "[--------]");
        assert_eq!(bar(2, 4, 8), "[####----]");
        assert_eq!(bar(0, 0, 4), "[####]");
        let status = DrainStatus {
            phase: Some(DrainPhase::Draining),
            progress: "1/4".into(),
            total: 4,
            moved: 1,
            moving: 2,
            vmms_left: 3,
            eta_seconds: Some(90),
            ..Default::default()
        };
        assert_eq!(
            drain_line("s1-1", &status),
            "drain s1-1: Draining [#####---------------] 1/4 moved, 2 moving, 3 VMMs left, ETA 90s"
        );
        let migration = MigrationStatus {
            phase: Some(MigrationPhase::Transferring),
            source_sled: Some("s1".into()),
            target_sled: Some("s2".into()),
            progress: Some(TransferProgress {
                percent: 50,
                round: 2,
                eta_seconds: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            migration_line("web-1", &migration),
            "migration web-1: Transferring s1 -> s2 [##########----------] 50%, round 2, ETA 3s"
        );
        assert_eq!(
            timestamped_name("sled-1", 1_800_000_000),
            "sled-1-1800000000"
        );
    }
}
