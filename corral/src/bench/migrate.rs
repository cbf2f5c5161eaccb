//! `corral bench migrate`: live migrations of guests of several sizes and dirty rates, each
//! beside what the pre-copy model predicted for it at admission.
//!
//! The benchmark starts a two-sled rack as real processes (`Session::start_rack`; with
//! `--hypervisor qemu` every guest is a QEMU process running corral-guest), then, for every
//! size, dirty rate and repetition: runs one Instance dirtying memory at that rate (the
//! `corral.dev/dirty-rate` annotation), waits until its Vmm reports the rate, and migrates it
//! to the other sled. Per case it prints what `Migration.status` says: `predicted` (the model,
//! at admission) and `measured` (the move's ends: first byte to the whole guest on the target,
//! and the guest paused on the source to running on the target), or the refusal. The last line
//! is exactly `migrate: downtime p99 X ms, prediction within 25% for A of B, refused C of D`.
//!
//! What it checks and reports, not asserts: the measured downtime's percentiles over the moves
//! that succeeded; for those, how far the measured transfer time is from the predicted one; and
//! that every move the model predicts will not converge is refused before any byte moves
//! (`WillNotConverge`, no `transferStartedAt`).
//!
//! # Guarantees
//! - No child process outlives the benchmark (the QEMU processes die with `corral power-sim`);
//!   every wait is bounded by `--timeout`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use corral_crds::migration::{MIB, predict_within};
use corral_crds::{
    DIRTY_RATE_ANNOTATION, Instance, InstanceSpec, Migration, MigrationPhase, MigrationSpec,
    MigrationStatus, Reason, Sled, TransferTimes, Vmm,
};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};

use super::measure::percentile;
use super::session::{RackOptions, Session};
use crate::command::parse_duration;
use crate::rack::HypervisorKind;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// What runs the guests: `qemu` (real QEMU processes) or `sim` (the simulator).
    #[arg(long, value_enum, default_value_t = HypervisorKind::Qemu)]
    hypervisor: HypervisorKind,
    /// Guest sizes, MiB.
    #[arg(long, value_delimiter = ',', default_values_t = [256u64, 1024])]
    sizes: Vec<u64>,
    /// Dirty rates, MiB/s (from idle to past the link).
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 32, 96, 160, 320])]
    dirty: Vec<u64>,
    /// The sleds' migration link, MiB/s (QEMU's `max-bandwidth`).
    #[arg(long, default_value_t = 256)]
    bandwidth: u64,
    /// The sleds' downtime budget (default: the hypervisor's, docs/qemu.md "Downtime").
    #[arg(long, value_parser = parse_duration)]
    downtime_budget: Option<Duration>,
    /// Moves per size and dirty rate.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Give up when the run takes longer than this.
    #[arg(long, default_value = "1200s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the scratch directory (store, sleds, logs of every process) and print its path.
    #[arg(long)]
    keep: bool,
}

/// The two sleds of the benchmark's rack.
const SLEDS: usize = 2;

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let mut session = Session::start("migrate", None, args.timeout, args.keep).await?;
    let last_line = session.run(async |session| run(&args, session).await).await;
    session.end();
    println!("{}", last_line?);
    Ok(())
}

/// How one move ended.
enum Outcome {
    Moved {
        predicted: Option<TransferTimes>,
        measured: TransferTimes,
        /// Of the downtime: the guest paused on the source to the whole guest on the target
        /// (the machines' copy); the rest is the switch (the control plane's decision).
        copy_ms: Option<u64>,
    },
    Refused(String),
    Failed(String),
}

async fn run(args: &MigrateArgs, session: &mut Session) -> anyhow::Result<String> {
    let largest = args.sizes.iter().copied().max().unwrap_or(256);
    let mut power_sim_args = vec![
        "--hypervisor".to_string(),
        match args.hypervisor {
            HypervisorKind::Qemu => "qemu",
            HypervisorKind::Sim => "sim",
        }
        .to_string(),
        "--cpus".into(),
        "4".into(),
        "--memory-mib".into(),
        (largest * 2 + 512).to_string(),
        "--migration-bandwidth".into(),
        (args.bandwidth * MIB).to_string(),
    ];
    if let Some(budget) = args.downtime_budget {
        power_sim_args.push("--downtime-budget".into());
        power_sim_args.push(format!("{}ms", budget.as_millis()));
    }
    let options = RackOptions {
        power_sim_args,
        ..RackOptions::default()
    };
    let client = session.start_rack(SLEDS, options).await?;
    let sled = Api::<Sled>::all(client.clone()).get("sled-1").await?;
    let status = sled.status.unwrap_or_default();
    let budget = corral_crds::migration::budget_or_default(status.migration_downtime_budget_ms);
    println!(
        "corral bench migrate: {} sleds ({}), link {} MiB/s, downtime budget {} ms, sizes {:?} MiB, dirty {:?} MiB/s, {} moves each",
        SLEDS,
        status.hypervisor,
        args.bandwidth,
        budget.as_millis(),
        args.sizes,
        args.dirty,
        args.repeat
    );
    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    let vmms: Api<Vmm> = Api::namespaced(client.clone(), "default");
    let migrations: Api<Migration> = Api::namespaced(client.clone(), "default");
    let mut downtimes = Vec::new();
    let (mut copies, mut switches) = (Vec::new(), Vec::new());
    let mut errors = Vec::new();
    let (mut refused, mut not_converging) = (0usize, 0usize);
    let mut unexpected = Vec::new();
    println!(
        "{:>6} {:>7} {:>3}  {:>21}  {:>21}  {:>7}",
        "MiB", "dirty", "#", "predicted total/down", "measured total/down", "error"
    );
    for &size in &args.sizes {
        for &dirty in &args.dirty {
            let converges =
                predict_within(size * MIB, dirty * MIB, args.bandwidth * MIB, budget).is_ok();
            for round in 0..args.repeat {
                let name = format!("m-{size}-{dirty}-{round}");
                let outcome =
                    move_one(session, &instances, &vmms, &migrations, &name, size, dirty).await?;
                let case = format!("{size:>6} {dirty:>7} {round:>3}");
                match outcome {
                    Outcome::Moved {
                        predicted,
                        measured,
                        copy_ms,
                    } => {
                        if let Some(copy) = copy_ms {
                            copies.push(copy as f64);
                            switches.push(measured.downtime_ms.saturating_sub(copy) as f64);
                        }
                        downtimes.push(measured.downtime_ms as f64);
                        let predicted_text = predicted.map_or("-".to_string(), |p| {
                            format!("{} ms / {} ms", p.transfer_ms, p.downtime_ms)
                        });
                        let error = predicted.map(|p| {
                            (measured.transfer_ms as f64 - p.transfer_ms as f64)
                                / (measured.transfer_ms.max(1) as f64)
                        });
                        if let Some(error) = error {
                            errors.push(error);
                        }
                        println!(
                            "{case}  {predicted_text:>21}  {:>21}  {:>7}",
                            format!("{} ms / {} ms", measured.transfer_ms, measured.downtime_ms),
                            error.map_or("-".into(), |e| format!("{:+.0}%", e * 100.0))
                        );
                        if !converges {
                            unexpected.push(format!("{name}: moved, predicted not to converge"));
                        }
                    }
                    Outcome::Refused(why) => {
                        println!("{case}  {why}");
                        if converges {
                            unexpected.push(format!("{name}: refused, predicted to converge"));
                        } else {
                            refused += 1;
                        }
                    }
                    Outcome::Failed(why) => {
                        println!("{case}  failed: {why}");
                        unexpected.push(format!("{name}: failed: {why}"));
                    }
                }
                if !converges {
                    not_converging += 1;
                }
                session.check_alive()?;
            }
        }
    }
    downtimes.sort_by(f64::total_cmp);
    let within = errors.iter().filter(|e| e.abs() <= 0.25).count();
    let mut absolute: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
    absolute.sort_by(f64::total_cmp);
    println!(
        "{} moves: downtime p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; transfer time vs the prediction: median error {:.0}%, worst {:.0}%",
        downtimes.len(),
        percentile(&downtimes, 0.5),
        percentile(&downtimes, 0.99),
        downtimes.last().copied().unwrap_or(f64::NAN),
        percentile(&absolute, 0.5) * 100.0,
        absolute.last().copied().unwrap_or(f64::NAN) * 100.0,
    );
    copies.sort_by(f64::total_cmp);
    switches.sort_by(f64::total_cmp);
    println!(
        "of the downtime: the last round's copy p50 {:.0} ms, p99 {:.0} ms; the switch p50 {:.0} ms, p99 {:.0} ms",
        percentile(&copies, 0.5),
        percentile(&copies, 0.99),
        percentile(&switches, 0.5),
        percentile(&switches, 0.99),
    );
    for line in &unexpected {
        println!("unexpected: {line}");
    }
    Ok(format!(
        "migrate: downtime p99 {:.0} ms, prediction within 25% for {within} of {}, refused {refused} of {not_converging}",
        percentile(&downtimes, 0.99),
        errors.len()
    ))
}

/// Runs Instance `name` (`size` MiB dirtying `dirty` MiB/s), moves it to the other sled, and
/// deletes it again.
async fn move_one(
    session: &mut Session,
    instances: &Api<Instance>,
    vmms: &Api<Vmm>,
    migrations: &Api<Migration>,
    name: &str,
    size: u64,
    dirty: u64,
) -> anyhow::Result<Outcome> {
    let instance = Instance {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(BTreeMap::from([(
                DIRTY_RATE_ANNOTATION.to_string(),
                (dirty * MIB).to_string(),
            )])),
            ..Default::default()
        },
        spec: InstanceSpec {
            cpus: 1,
            memory_mib: size,
            image: "corral-guest".into(),
            ..Default::default()
        },
        status: None,
    };
    instances
        .create(&PostParams::default(), &instance)
        .await
        .with_context(|| format!("creating {name}"))?;
    // Running, and its Vmm reports the rate the model is to be given.
    let source = session
        .wait_for(
            &format!("{name} Running, reporting its dirty rate"),
            Duration::from_millis(100),
            async || {
                let instance = instances.get(name).await.map_err(|e| e.to_string())?;
                let status = instance.status.unwrap_or_default();
                let (Some(sled), Some(vmm)) = (status.sled, status.active_vmm) else {
                    return Err("not placed yet".to_string());
                };
                let vmm = vmms.get(&vmm).await.map_err(|e| e.to_string())?;
                let reported = vmm.status.map_or(0, |s| s.dirty_bytes_per_second);
                if status.state == Some(corral_crds::InstanceState::Running)
                    && reported == dirty * MIB
                {
                    Ok(sled)
                } else {
                    Err(format!("{:?}, {reported} bytes/s reported", status.state))
                }
            },
        )
        .await?;
    let target = if source == "sled-1" {
        "sled-2"
    } else {
        "sled-1"
    };
    let migration = Migration {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: MigrationSpec {
            instance: name.to_string(),
            target_sled: Some(target.to_string()),
            ..Default::default()
        },
        status: None,
    };
    migrations
        .create(&PostParams::default(), &migration)
        .await
        .with_context(|| format!("creating migration {name}"))?;
    let finished: MigrationStatus = session
        .wait_for(
            &format!("migration {name} finished"),
            Duration::from_millis(50),
            async || {
                let status = migrations
                    .get(name)
                    .await
                    .map_err(|e| e.to_string())?
                    .status
                    .unwrap_or_default();
                match status.phase {
                    Some(MigrationPhase::Succeeded) if status.measured.is_none() => {
                        Err("succeeded, not yet measured".to_string())
                    }
                    Some(phase) if phase.is_final() => Ok(status),
                    phase => Err(format!("{phase:?}")),
                }
            },
        )
        .await?;
    let outcome = match finished.phase {
        Some(MigrationPhase::Succeeded) => Outcome::Moved {
            predicted: finished.predicted,
            measured: finished.measured.unwrap_or_default(),
            copy_ms: copy_time(vmms, &finished).await,
        },
        _ if finished.reason == Some(Reason::WillNotConverge)
            && finished.transfer_started_at.is_none() =>
        {
            Outcome::Refused(finished.message.clone())
        }
        _ => Outcome::Failed(format!("{:?}: {}", finished.reason, finished.message)),
    };
    instances.delete(name, &DeleteParams::default()).await?;
    session
        .wait_for(
            &format!("{name} and its Vmms gone"),
            Duration::from_millis(100),
            async || {
                let left = vmms
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .filter(|v| v.spec.instance == name)
                    .count();
                let instance = instances.get_opt(name).await.map_err(|e| e.to_string())?;
                if left == 0 && instance.is_none() {
                    Ok(())
                } else {
                    Err(format!("{left} Vmms left"))
                }
            },
        )
        .await?;
    let _ = migrations.delete(name, &DeleteParams::default()).await;
    Ok(outcome)
}

/// How long the target's timings say the last round's copy took (paused to received).
async fn copy_time(vmms: &Api<Vmm>, finished: &MigrationStatus) -> Option<u64> {
    let target = vmms.get(finished.target_vmm.as_ref()?).await.ok()?;
    target.status?.migration?.timings.copy_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cases_span_idle_to_past_the_link() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: MigrateArgs,
        }
        let cli = Cli::parse_from(["bench"]);
        let link = cli.args.bandwidth;
        assert_eq!(cli.args.dirty.first(), Some(&0));
        assert!(cli.args.dirty.iter().any(|d| *d > link));
        assert_eq!(cli.args.sizes, vec![256, 1024]);
    }
}
