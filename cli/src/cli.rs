//! The command line: flags (clap derive) and the dispatch to each command's module.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::apply::{self, ApplyOptions};
use crate::audit::{self, AuditOptions};
use crate::command::{Outcome, Terminal};
use crate::context::Context;
use crate::delete::{self, DeleteOptions};
use crate::describe;
use crate::diff;
use crate::drain::{self, DrainOptions, MigrateOptions};
use crate::error::Error;
use crate::events::{self, EventsOptions};
use crate::get::{self, GetOptions};
use crate::lifecycle::{self, InstanceVerb, SledVerb};
use crate::output::OutputFormat;
use crate::wait::{self, WaitFor};
use corral_crds::MigrationMode;

#[derive(Debug, Parser)]
#[command(
    name = "corralctl",
    version,
    about = "Apply, inspect and operate a Corral rack (through its Kubernetes API)",
    long_about = "Apply, inspect and operate a Corral rack through its Kubernetes API. \
                  Reads the same kubeconfig as kubectl: --kubeconfig, else $KUBECONFIG, else ~/.kube/config."
)]
pub struct Cli {
    /// The kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace (default: the kubeconfig context's namespace, then `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from manifests by server-side apply; --prune deletes what a
    /// set no longer holds.
    ///
    /// Every document is validated before any is applied: here (it parses, names its
    /// apiVersion, kind and name, and the server serves its kind), then by the server in a dry
    /// run with strict field validation. If any document fails, nothing is applied, and each
    /// failure is listed with its file, document number, kind/name and field.
    Apply(ApplyArgs),
    /// List objects, or show named ones (the kind's printer columns, YAML, JSON or names).
    Get(GetArgs),
    /// Show one object: metadata, spec, status, conditions and its recent Events.
    Describe(DescribeArgs),
    /// Delete objects by name, by label selector, or as described by manifests.
    Delete(DeleteArgs),
    /// Wait until objects meet a condition or are deleted.
    Wait(WaitArgs),
    /// Start Instances: restore the run strategy `stop` replaced and request a start.
    Start(InstanceArgs),
    /// Stop Instances: runStrategy Halted (the previous strategy is remembered for `start`).
    Stop(InstanceArgs),
    /// Reboot Instances in place.
    Reboot(InstanceArgs),
    /// Mark Sleds unschedulable: no new VMMs are placed there; running ones stay.
    Cordon(SledArgs),
    /// Mark Sleds schedulable again.
    Uncordon(SledArgs),
    /// Confirm that an Unreachable Sled runs nothing any more (it is off, or cut off for
    /// good): the sled-health controller fences it and its instances restart elsewhere.
    ///
    /// For a sled whose power controller does not answer either; a sled the power controller
    /// can switch off is fenced without an operator. The confirmation names the sled's current
    /// epoch, so it never fences a later life of the sled. If the sled's VMMs were in fact
    /// still running, they would run twice: confirm only what you have made sure of.
    Fence(FenceArgs),
    /// Empty a Sled for maintenance: cordon it, live-migrate its instances elsewhere, and
    /// follow the drain until the sled runs no VMM (docs/migration.md, "Drains").
    ///
    /// The drain runs in the control plane: interrupting corralctl (or --no-wait) leaves it
    /// running. It is refused, before anything moves, when the other sleds cannot take every
    /// instance or an instance's evictionStrategy is None (unless --force). Exits 0 once the
    /// drain completed, non-zero with the drain's message when it is refused, fails or is
    /// cancelled. The sled stays cordoned; `corralctl uncordon` after the maintenance.
    Drain(DrainArgs),
    /// Live-migrate an Instance to another sled (the scheduler picks one unless --to), or
    /// restart it there with --restart, and follow the migration to its end.
    Migrate(MigrateArgs),
    /// List Events (what happened and why), oldest first.
    Events(EventsArgs),
    /// Report where the rack differs from what was asked (instances not running, diverged
    /// objects, abandoned or stale VMMs, sleds not ready).
    Diff(DiffArgs),
    /// Who changed what, and when: the API server's audit trail, oldest first (every request
    /// that changed state or tried to: its user, verb, object, answer and program).
    Audit(AuditArgs),
}

impl Command {
    /// The command's word, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Apply(_) => "apply",
            Command::Get(_) => "get",
            Command::Describe(_) => "describe",
            Command::Delete(_) => "delete",
            Command::Wait(_) => "wait",
            Command::Start(_) => "start",
            Command::Stop(_) => "stop",
            Command::Reboot(_) => "reboot",
            Command::Cordon(_) => "cordon",
            Command::Uncordon(_) => "uncordon",
            Command::Fence(_) => "fence",
            Command::Drain(_) => "drain",
            Command::Migrate(_) => "migrate",
            Command::Events(_) => "events",
            Command::Diff(_) => "diff",
            Command::Audit(_) => "audit",
        }
    }
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only requests about this kind (`sleds`, `sled`, `instances`, ...).
    #[arg(long)]
    pub resource: Option<String>,
    /// Only requests about objects of this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only requests made by (or impersonating) this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only requests with this verb (`create`, `patch`, `update`, `delete`, ...).
    #[arg(long)]
    pub verb: Option<String>,
    /// At most this many, the most recent.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory of them (*.yaml, *.yml, *.json), or - for standard input.
    /// Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<String>,
    /// Take over fields that other managers own instead of failing on the conflict.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Have the server validate and compute the result without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete objects corralctl applied earlier that match -l but are not in this set.
    #[arg(long, requires = "selector")]
    pub prune: bool,
    /// Label selector: apply only matching documents (and, with --prune, prune among matching
    /// objects).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// KIND [NAME...], KIND[,KIND...] or KIND/NAME...
    #[arg(required = true, value_name = "KIND [NAME]...")]
    pub targets: Vec<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector (`app=web`, `tier in (a,b)`, `!canary`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector (`metadata.name=x`, `spec.sled=s1`, `status.state!=Running`).
    #[arg(long)]
    pub field_selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// After listing, keep printing objects as they change.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// With --watch, print the event type (ADDED, MODIFIED, DELETED) of each change.
    #[arg(long)]
    pub output_watch_events: bool,
    /// With -o yaml|json, include metadata.managedFields.
    #[arg(long)]
    pub show_managed_fields: bool,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// KIND [NAME...] or KIND/NAME...
    #[arg(required = true, value_name = "KIND [NAME]...")]
    pub targets: Vec<String>,
    /// Label selector, when no name is given.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// KIND NAME..., KIND/NAME..., or KIND with -l or --all.
    #[arg(value_name = "KIND [NAME]...")]
    pub targets: Vec<String>,
    /// Delete the objects these manifests describe (file, directory or -). Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub files: Vec<String>,
    /// Delete the objects of KIND that match this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Delete every object of KIND in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Wait until the objects are gone (finalizers done).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (60s, 5m, 1m30s).
    #[arg(long, default_value = "60s", value_parser = wait::parse_timeout)]
    pub timeout: Duration,
    /// A missing object is not an error.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Have the server check the deletion without doing it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// KIND NAME... or KIND/NAME...
    #[arg(required = true, value_name = "KIND [NAME]...")]
    pub targets: Vec<String>,
    /// `condition=TYPE[=STATUS]` (STATUS defaults to True) or `delete`.
    #[arg(long = "for", value_name = "CONDITION", value_parser = clap::value_parser!(WaitFor))]
    pub for_: WaitFor,
    /// How long to wait, for all objects together (60s, 5m, 1m30s).
    #[arg(long, default_value = "30s", value_parser = wait::parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct InstanceArgs {
    /// Instance names (in the namespace).
    #[arg(required = true, value_name = "INSTANCE")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SledArgs {
    /// Sled names.
    #[arg(required = true, value_name = "SLED")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct FenceArgs {
    /// The sled.
    #[arg(value_name = "SLED")]
    pub name: String,
    /// You have made sure the sled runs nothing any more.
    #[arg(long)]
    pub confirm: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The sled to empty.
    #[arg(value_name = "SLED")]
    pub sled: String,
    /// Moves under way at once (default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_parallel: Option<u32>,
    /// Fail the drain (cancelling its moves) if it has not completed after this long (30m, 2h).
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<String>,
    /// Start even if not everything fits or an instance may not move; what does not fit waits
    /// for room.
    #[arg(long, conflicts_with = "cancel")]
    pub force: bool,
    /// Cancel the sled's unfinished drain: no new moves, unfinished ones are cancelled.
    #[arg(long)]
    pub cancel: bool,
    /// Create the drain (or request the cancel) and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow the drain (it goes on afterwards).
    #[arg(long, default_value = "2h", value_parser = wait::parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The instance to move (in the namespace).
    #[arg(value_name = "INSTANCE")]
    pub instance: String,
    /// The target sled (default: the scheduler chooses).
    #[arg(long, value_name = "SLED")]
    pub to: Option<String>,
    /// Stop the instance and start it on the target once its VMM is gone (a restart
    /// migration: the guest reboots, no memory is copied) instead of moving it live.
    #[arg(long)]
    pub restart: bool,
    /// Create the migration and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow the migration (it goes on afterwards).
    #[arg(long, default_value = "30m", value_parser = wait::parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// After listing, keep printing new Events.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Events of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only the Events about this object (KIND/NAME).
    #[arg(long = "for", value_name = "KIND/NAME")]
    pub for_object: Option<String>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Exit with status 1 when there are differences.
    #[arg(long)]
    pub exit_code: bool,
}

/// Runs the command `cli` names. Must be called inside a Tokio runtime.
pub async fn run(
    cli: Cli,
    stdin: &mut dyn Read,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let ctx = Context::connect(
        cli.kubeconfig.as_ref(),
        cli.namespace.as_deref(),
        cli.command.name(),
    )
    .await?;
    match cli.command {
        Command::Apply(args) => {
            let options = ApplyOptions {
                files: args.files,
                force_conflicts: args.force_conflicts,
                dry_run: args.dry_run,
                prune: args.prune,
                selector: args.selector,
            };
            apply::apply(&ctx, &options, stdin, term).await
        }
        Command::Get(args) => {
            let options = GetOptions {
                targets: args.targets,
                all_namespaces: args.all_namespaces,
                selector: args.selector,
                field_selector: args.field_selector,
                output: args.output.unwrap_or(OutputFormat::Table),
                watch: args.watch,
                output_watch_events: args.output_watch_events,
                show_managed_fields: args.show_managed_fields,
            };
            get::get(&ctx, &options, term).await
        }
        Command::Describe(args) => {
            describe::describe(&ctx, &args.targets, args.selector.as_deref(), term).await
        }
        Command::Delete(args) => {
            let options = DeleteOptions {
                targets: args.targets,
                files: args.files,
                selector: args.selector,
                all: args.all,
                wait: args.wait,
                timeout: args.timeout,
                ignore_not_found: args.ignore_not_found,
                dry_run: args.dry_run,
            };
            delete::delete(&ctx, &options, stdin, term).await
        }
        Command::Wait(args) => {
            wait::wait(&ctx, &args.targets, &args.for_, args.timeout, term).await
        }
        Command::Start(args) => {
            lifecycle::instances(&ctx, InstanceVerb::Start, &args.names, term).await
        }
        Command::Stop(args) => {
            lifecycle::instances(&ctx, InstanceVerb::Stop, &args.names, term).await
        }
        Command::Reboot(args) => {
            lifecycle::instances(&ctx, InstanceVerb::Reboot, &args.names, term).await
        }
        Command::Cordon(args) => lifecycle::sleds(&ctx, SledVerb::Cordon, &args.names, term).await,
        Command::Uncordon(args) => {
            lifecycle::sleds(&ctx, SledVerb::Uncordon, &args.names, term).await
        }
        Command::Fence(args) => crate::fence::fence(&ctx, &args.name, args.confirm, term).await,
        Command::Drain(args) => {
            let options = DrainOptions {
                sled: args.sled,
                max_parallel: args.max_parallel,
                deadline: args.deadline,
                force: args.force,
                cancel: args.cancel,
                no_wait: args.no_wait,
                timeout: args.timeout,
                tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            drain::drain(&ctx, &options, term).await
        }
        Command::Migrate(args) => {
            let options = MigrateOptions {
                instance: args.instance,
                to: args.to,
                mode: if args.restart {
                    MigrationMode::Restart
                } else {
                    MigrationMode::Live
                },
                no_wait: args.no_wait,
                timeout: args.timeout,
                tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            drain::migrate(&ctx, &options, term).await
        }
        Command::Events(args) => {
            let options = EventsOptions {
                all_namespaces: args.all_namespaces,
                watch: args.watch,
                for_object: args.for_object,
            };
            events::events(&ctx, &options, term).await
        }
        Command::Diff(args) => diff::diff(&ctx, args.exit_code, term).await,
        Command::Audit(args) => {
            let options = AuditOptions {
                resource: args.resource,
                name: args.name,
                // Only when asked: the trail of every namespace is what an operator reads.
                namespace: cli.namespace.clone(),
                user: args.user,
                verb: args.verb,
                limit: args.limit as usize,
                output: args.output,
            };
            audit::audit(&ctx, &options, term).await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere_and_outputs_parse() {
        let cli = Cli::try_parse_from([
            "corralctl",
            "get",
            "inst",
            "-n",
            "prod",
            "-o",
            "wide",
            "--kubeconfig",
            "/k",
        ])
        .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("prod"));
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        assert_eq!(args.output, Some(OutputFormat::Wide));
        assert!(Cli::try_parse_from(["corralctl", "get", "inst", "-o", "table"]).is_err());
        assert!(Cli::try_parse_from(["corralctl", "apply", "-f", "x", "--prune"]).is_err());
        let wait = Cli::try_parse_from([
            "corralctl",
            "wait",
            "--for=condition=Running",
            "instance/web",
            "--timeout",
            "5s",
        ])
        .unwrap();
        let Command::Wait(args) = wait.command else {
            panic!("not wait")
        };
        assert_eq!(args.timeout, Duration::from_secs(5));
    }

    #[test]
    fn migrate_is_live_unless_asked_to_restart() {
        for (args, restart) in [
            (&["corralctl", "migrate", "web"][..], false),
            (
                &["corralctl", "migrate", "web", "--restart", "--to", "s2"][..],
                true,
            ),
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Migrate(migrate) = cli.command else {
                panic!("{args:?} is a migrate");
            };
            assert_eq!(migrate.restart, restart, "{args:?}");
        }
    }
}
