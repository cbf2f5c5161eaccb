//! What `corral bench rack` observes: each Instance's timeline and the latencies between its
//! steps, and the store writes by resource.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use corral_crds::InstanceState;
use corral_store::StoreConfig;
use futures::StreamExt;
use tokio::time::Instant;

use crate::bench::measure::percentile;

/// Store writes in `(after, upto]`, by resource (`instances`, `vmms`, ...), from the store's
/// history.
pub(crate) async fn writes_by_resource(
    config: &StoreConfig,
    (after, upto): (u64, u64),
) -> anyhow::Result<BTreeMap<String, u64>> {
    let store = corral_store::open(config)
        .await
        .with_context(|| format!("opening {config} to count the writes"))?;
    let options = corral_store::WatchOptions {
        after: i64::try_from(after)?,
        progress_interval: Duration::from_millis(100),
    };
    let mut history = store.watch("/registry/", options).await?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_event = Instant::now();
    while let Some(response) = history.next().await {
        let response = response?;
        let mut reached = false;
        for event in &response.events {
            let revision = u64::try_from(event.revision()).unwrap_or(0);
            if revision <= upto {
                let resource = event.kv.key.split('/').nth(3).unwrap_or("other");
                *counts.entry(resource.to_string()).or_default() += 1;
            }
            reached |= revision >= upto;
            last_event = Instant::now();
        }
        // The last write is normally ours and ends the count. Progress alone is believed only
        // once the history has gone quiet: an etcd older than 3.4.24 reports progress ahead of
        // a watch still catching up from the past (see `corral_store::etcd::watch`).
        let progressed = u64::try_from(response.progress).is_ok_and(|progress| progress >= upto);
        if reached || progressed && last_event.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    Ok(counts)
}

/// `writes: N store revisions (X per instance): instances A (a), vmms B (b), ...`, with per
/// instance figures in parentheses.
pub(crate) fn describe_writes(
    (after, upto): (u64, u64),
    instances: usize,
    by_resource: anyhow::Result<BTreeMap<String, u64>>,
) -> String {
    let n = instances as f64;
    let total = upto.saturating_sub(after);
    let mut text = format!(
        "writes:            {total} store revisions ({:.1} per instance)",
        total as f64 / n
    );
    match by_resource {
        Ok(counts) => {
            let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
            counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
            let parts: Vec<String> = counts
                .iter()
                .map(|(resource, count)| format!("{resource} {count} ({:.1})", *count as f64 / n))
                .collect();
            let _ = write!(text, ": {}", parts.join(", "));
        }
        Err(error) => {
            let _ = write!(text, " (not counted by resource: {error:#})");
        }
    }
    text
}

/// When one Instance reached each step, as the benchmark saw it.
#[derive(Default)]
pub(crate) struct Timeline {
    /// Its create request was sent.
    pub(crate) sent: Option<Instant>,
    /// The controller wrote a placement (any state with the Vmm named).
    pub(crate) placed: Option<Instant>,
    /// `Starting`: its VMM boots.
    pub(crate) starting: Option<Instant>,
    /// `Running`, the first time.
    pub(crate) running: Option<Instant>,
    /// The state of the last write seen.
    pub(crate) last_state: Option<InstanceState>,
}

impl Timeline {
    /// Records the first time each step was seen; a later state implies the earlier steps.
    pub(crate) fn observe(&mut self, state: Option<InstanceState>, at: Instant) {
        self.last_state = state;
        let step = match state {
            Some(InstanceState::Creating) => 1,
            Some(InstanceState::Starting) => 2,
            Some(InstanceState::Running) => 3,
            _ => 0,
        };
        for (reached, slot) in [
            (1, &mut self.placed),
            (2, &mut self.starting),
            (3, &mut self.running),
        ] {
            if step >= reached && slot.is_none() {
                *slot = Some(at);
            }
        }
    }
}

/// p50, p99 and max of the time between two steps, over the instances that reached both.
pub(crate) struct Latencies {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Latencies {
    pub(crate) fn of(
        timelines: &[Timeline],
        span: impl Fn(&Timeline) -> Option<(Instant, Instant)>,
    ) -> Self {
        let mut seconds: Vec<f64> = timelines
            .iter()
            .filter_map(&span)
            .map(|(from, to)| to.saturating_duration_since(from).as_secs_f64())
            .collect();
        seconds.sort_by(|a, b| a.total_cmp(b));
        Latencies {
            p50: percentile(&seconds, 0.5),
            p99: percentile(&seconds, 0.99),
            max: seconds.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} s, p99 {:.2} s, max {:.2} s",
            self.p50, self.p99, self.max
        )
    }
}
