//! The connectivity checker: while a test runs, it keeps asking every sled's V2P table where
//! each instance is and compares the answer with where the instance's guest really runs.
//!
//! # Definitions
//! - An instance *really runs* on a sled if (and only if) that sled's machine (the agent's
//!   `GET /vmms`) has a VMM of the instance whose guest is `Running` (a paused, receiving or
//!   booting VMM does not count).
//! - A sled's mapping of an instance IP is *right* if (and only if) the instance really runs
//!   on exactly one sled and the table maps the IP to that sled, or to a sled whose table
//!   forwards the IP to that sled (one hop: a live migration's source forwards to its target,
//!   docs/migration.md "Make before break"). It is *wrong* if the instance really runs on
//!   exactly one sled and the mapping is not right (a forward to a sled where the guest does
//!   not run is wrong too); it is *missing* if the table has no entry for the IP. An instance that runs nowhere (stopped, or paused for a switch)
//!   has no expectation.
//! - An *episode* is one stretch of consecutive rounds in which one sled's mapping of one IP
//!   was wrong (or missing). Its duration is measured from the first round that saw it to the
//!   first round that no longer did, so it is an upper bound, precise to one round.
//! - A *double run* is a round that sees one instance's guest running on two sleds.
//! - A *pause* is one stretch of rounds in which an instance that was seen running runs
//!   nowhere (paused for a switch, or stopped), measured like an episode and closed when it
//!   runs again; [`Report::longest_pause`] is the longest closed one.
//!
//! # What it reads
//! Sleds and Instances through the API (kube), and each sled's agent at
//! `Sled.status.agentAddress`: `GET /vmms` and `GET /v2p` (docs/rack.md, the fault API). It
//! writes nothing. A sled whose agent does not answer is skipped for that round and counted.
//!
//! # Not responsible for
//! Deciding what is acceptable: tests compare the [`Report`] with their own bounds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use corral_crds::{Instance, Sled};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::http::Http;

/// How often the checker looks, unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);

/// One VMM as a sled's agent lists it (`GET /vmms`); only what the checker needs.
#[derive(Clone, Debug, Deserialize)]
struct MachineVmm {
    launch: Launch,
    state: String,
}

#[derive(Clone, Debug, Deserialize)]
struct Launch {
    namespace: String,
    instance: String,
}

/// One entry of a sled's V2P table (`GET /v2p`): a mapping (`sled`, empty for none) and the
/// sled it forwards the IP to, if any.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TableEntry {
    vpc: String,
    ip: String,
    sled: String,
    #[serde(default)]
    forward_to: Option<String>,
}

/// What is wrong with one mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The table maps the IP to `points_to`; the guest runs on `runs_on`.
    Wrong { points_to: String, runs_on: String },
    /// The table has no entry; the guest runs on `runs_on`.
    Missing { runs_on: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Wrong { points_to, runs_on } => {
                write!(f, "maps to {points_to}, runs on {runs_on}")
            }
            Problem::Missing { runs_on } => write!(f, "no mapping, runs on {runs_on}"),
        }
    }
}

/// One stretch of time one sled's mapping of one IP was wrong or missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    /// The sled whose table was wrong.
    pub sled: String,
    pub vpc: String,
    pub ip: String,
    /// `namespace/name` of the instance with that IP.
    pub instance: String,
    /// What the first round of the episode saw.
    pub problem: Problem,
    pub lasted: Duration,
    /// Still wrong when the checker stopped.
    pub ongoing: bool,
}

/// One round that saw a guest running on more than one sled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoubleRun {
    pub instance: String,
    pub sleds: Vec<String>,
}

/// What the checker saw, from start to stop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub rounds: u64,
    /// Mappings checked, over every round.
    pub checks: u64,
    /// Sled rounds skipped because the agent did not answer.
    pub unreachable: u64,
    pub episodes: Vec<Episode>,
    pub double_runs: Vec<DoubleRun>,
    /// The longest stretch an instance seen running ran nowhere before running again.
    pub longest_pause: Duration,
}

impl Report {
    /// The longest episode, if any.
    pub fn longest(&self) -> Option<&Episode> {
        self.episodes.iter().max_by_key(|e| e.lasted)
    }

    /// Episodes that lasted longer than `bound` (or were still going on at the end).
    pub fn longer_than(&self, bound: Duration) -> Vec<&Episode> {
        self.episodes
            .iter()
            .filter(|e| e.ongoing || e.lasted > bound)
            .collect()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "connectivity: {} rounds, {} mappings checked, {} unreachable sled rounds, {} episodes, {} double runs, longest pause {} ms",
            self.rounds,
            self.checks,
            self.unreachable,
            self.episodes.len(),
            self.double_runs.len(),
            self.longest_pause.as_millis()
        )?;
        // One line per IP: on how many sleds its mapping was wrong, and for how long at most.
        let mut by_ip: BTreeMap<(&str, &str, &str), Vec<&Episode>> = BTreeMap::new();
        for episode in &self.episodes {
            by_ip
                .entry((&episode.instance, &episode.vpc, &episode.ip))
                .or_default()
                .push(episode);
        }
        let mut lines: Vec<(Duration, String)> = by_ip
            .into_iter()
            .map(|((instance, vpc, ip), episodes)| {
                let longest = episodes.iter().map(|e| e.lasted).max().unwrap_or_default();
                let sleds: BTreeSet<&str> = episodes.iter().map(|e| e.sled.as_str()).collect();
                let ongoing = episodes.iter().any(|e| e.ongoing);
                let line = format!(
                    "  {instance} {vpc} {ip}: {} on {} sleds ({}), {} episodes, longest {} ms{}",
                    episodes[0].problem,
                    sleds.len(),
                    sleds.into_iter().collect::<Vec<_>>().join(", "),
                    episodes.len(),
                    longest.as_millis(),
                    if ongoing {
                        ", still wrong at the end"
                    } else {
                        ""
                    }
                );
                (longest, line)
            })
            .collect();
        lines.sort_by_key(|line| std::cmp::Reverse(line.0));
        for (_, line) in lines {
            writeln!(f, "{line}")?;
        }
        for double in &self.double_runs {
            writeln!(f, "  DOUBLE RUN {} on {:?}", double.instance, double.sleds)?;
        }
        Ok(())
    }
}

/// A checker running in the background; [`Running::stop`] ends it and returns the report.
pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Report>,
}

impl Running {
    pub async fn stop(self) -> Report {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// Starts checking every `interval` until stopped, asking the sleds with `http`.
pub fn start(client: kube::Client, http: Http, interval: Duration) -> Running {
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(client, http, interval, stop.clone()));
    Running { stop, task }
}

/// Checks every `interval` until `stop`, asking the sleds' fault APIs with `http` (which must
/// present an identity in `system:masters` to a rack served over TLS); returns the report.
pub async fn run(
    client: kube::Client,
    http: Http,
    interval: Duration,
    stop: CancellationToken,
) -> Report {
    let mut tracker = Tracker::default();
    loop {
        let started = Instant::now();
        match observe(&client, &http).await {
            Ok(round) => tracker.record(&round, started),
            Err(error) => tracing::debug!(%error, "connectivity round failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(started + interval) => {}
        }
    }
    tracker.finish(Instant::now())
}

/// What one round saw.
#[derive(Debug, Default)]
struct Round {
    /// `namespace/instance` → sleds where its guest runs.
    runs_on: BTreeMap<String, BTreeSet<String>>,
    /// (vpc, ip) → `namespace/instance`.
    ips: HashMap<(String, String), String>,
    /// Sled → its table, (vpc, ip) → sled; only sleds whose agent answered.
    tables: BTreeMap<String, HashMap<(String, String), String>>,
    /// Sled → its forwarding entries, (vpc, ip) → the sled it forwards to.
    forwards: BTreeMap<String, HashMap<(String, String), String>>,
    unreachable: u64,
}

impl Round {
    /// Whether a packet for `key` sent to `points_to` reaches `runs_on`: it is there, or
    /// `points_to` forwards it there (one hop).
    fn reaches(&self, points_to: &str, key: &(String, String), runs_on: &str) -> bool {
        points_to == runs_on
            || self
                .forwards
                .get(points_to)
                .and_then(|forwards| forwards.get(key))
                .is_some_and(|to| to == runs_on)
    }
}

async fn observe(client: &kube::Client, http: &Http) -> Result<Round, kube::Error> {
    let sleds = Api::<Sled>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let instances = Api::<Instance>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let mut round = Round::default();
    for instance in &instances.items {
        let key = format!(
            "{}/{}",
            instance.namespace().unwrap_or_default(),
            instance.name_any()
        );
        for nic in &instance.spec.nics {
            round
                .ips
                .insert((nic.vpc.clone(), nic.ip.clone()), key.clone());
        }
    }
    let asks = sleds.items.iter().filter_map(|sled| {
        let address = sled.status.as_ref()?.agent_address.clone()?;
        Some((sled.name_any(), address))
    });
    let answers = futures::future::join_all(asks.map(|(name, address)| async move {
        let vmms = http.get_json::<Vec<MachineVmm>>(&address, "/vmms").await;
        let table = http.get_json::<Vec<TableEntry>>(&address, "/v2p").await;
        (name, vmms, table)
    }))
    .await;
    for (sled, vmms, table) in answers {
        let (Ok(vmms), Ok(table)) = (vmms, table) else {
            round.unreachable += 1;
            continue;
        };
        for vmm in vmms.iter().filter(|v| v.state == "Running") {
            let key = format!("{}/{}", vmm.launch.namespace, vmm.launch.instance);
            round.runs_on.entry(key).or_default().insert(sled.clone());
        }
        let mut mappings = HashMap::new();
        let mut forwards = HashMap::new();
        for entry in table {
            let key = (entry.vpc, entry.ip);
            if let Some(to) = entry.forward_to {
                forwards.insert(key.clone(), to);
            }
            if !entry.sled.is_empty() {
                mappings.insert(key, entry.sled);
            }
        }
        round.tables.insert(sled.clone(), mappings);
        round.forwards.insert(sled, forwards);
    }
    Ok(round)
}

/// Turns rounds into episodes.
#[derive(Debug, Default)]
struct Tracker {
    report: Report,
    /// (table sled, vpc, ip) → the open episode and when it was first seen.
    open: HashMap<(String, String, String), (Episode, Instant)>,
    /// `namespace/instance` → when it was last seen running, or since when it runs nowhere.
    running: HashMap<String, Presence>,
}

/// Whether an instance ran in the last round, or since when it has not.
#[derive(Debug)]
enum Presence {
    Yes,
    NowhereSince(Instant),
}

impl Tracker {
    fn record(&mut self, round: &Round, at: Instant) {
        self.report.rounds += 1;
        self.report.unreachable += round.unreachable;
        for (instance, sleds) in &round.runs_on {
            if sleds.len() > 1 {
                self.report.double_runs.push(DoubleRun {
                    instance: instance.clone(),
                    sleds: sleds.iter().cloned().collect(),
                });
            }
        }
        self.pauses(round, at);
        let mut bad = HashMap::new();
        for ((vpc, ip), instance) in &round.ips {
            let Some(sleds) = round.runs_on.get(instance) else {
                continue;
            };
            let [runs_on] = sleds.iter().collect::<Vec<_>>()[..] else {
                continue;
            };
            let key = (vpc.clone(), ip.clone());
            for (sled, table) in &round.tables {
                self.report.checks += 1;
                let problem = match table.get(&key) {
                    None => Problem::Missing {
                        runs_on: runs_on.clone(),
                    },
                    Some(points_to) if !round.reaches(points_to, &key, runs_on) => Problem::Wrong {
                        points_to: points_to.clone(),
                        runs_on: runs_on.clone(),
                    },
                    Some(_) => continue,
                };
                bad.insert(
                    (sled.clone(), vpc.clone(), ip.clone()),
                    (instance.clone(), problem),
                );
            }
        }
        // Close what is no longer wrong (or no longer checkable), open what is new.
        let closed: Vec<_> = self
            .open
            .keys()
            .filter(|key| !bad.contains_key(*key))
            .cloned()
            .collect();
        for key in closed {
            if let Some((mut episode, since)) = self.open.remove(&key) {
                episode.lasted = at.saturating_duration_since(since);
                self.report.episodes.push(episode);
            }
        }
        for (key, (instance, problem)) in bad {
            self.open.entry(key.clone()).or_insert_with(|| {
                let (sled, vpc, ip) = key;
                (
                    Episode {
                        sled,
                        vpc,
                        ip,
                        instance,
                        problem,
                        lasted: Duration::ZERO,
                        ongoing: false,
                    },
                    at,
                )
            });
        }
    }

    /// Opens a pause for every instance seen running before that runs nowhere now, and closes
    /// the pause of every instance that runs again.
    fn pauses(&mut self, round: &Round, at: Instant) {
        for instance in round.ips.values() {
            let runs = round.runs_on.contains_key(instance);
            match (self.running.get(instance), runs) {
                (Some(Presence::NowhereSince(since)), true) => {
                    let paused = at.saturating_duration_since(*since);
                    self.report.longest_pause = self.report.longest_pause.max(paused);
                    self.running.insert(instance.clone(), Presence::Yes);
                }
                (_, true) => {
                    self.running.insert(instance.clone(), Presence::Yes);
                }
                (Some(Presence::Yes), false) => {
                    self.running
                        .insert(instance.clone(), Presence::NowhereSince(at));
                }
                (_, false) => {}
            }
        }
    }

    fn finish(mut self, at: Instant) -> Report {
        for (_, (mut episode, since)) in self.open.drain() {
            episode.lasted = at.saturating_duration_since(since);
            episode.ongoing = true;
            self.report.episodes.push(episode);
        }
        self.report
            .episodes
            .sort_by(|a, b| b.lasted.cmp(&a.lasted).then(a.ip.cmp(&b.ip)));
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(runs: &[(&str, &[&str])], tables: &[(&str, &[(&str, &str)])]) -> Round {
        let mut round = Round::default();
        round
            .ips
            .insert(("web".into(), "10.0.0.1".into()), "default/a".into());
        round
            .ips
            .insert(("web".into(), "10.0.0.2".into()), "default/b".into());
        for (instance, sleds) in runs {
            round.runs_on.insert(
                instance.to_string(),
                sleds.iter().map(|s| s.to_string()).collect(),
            );
        }
        for (sled, entries) in tables {
            round.tables.insert(
                sled.to_string(),
                entries
                    .iter()
                    .map(|(ip, to)| (("web".to_string(), ip.to_string()), to.to_string()))
                    .collect(),
            );
        }
        round
    }

    #[tokio::test(start_paused = true)]
    async fn an_episode_lasts_from_the_first_round_that_sees_it_to_the_first_that_does_not() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let right = round(
            &[("default/a", &["s1"])],
            &[("s1", &[("10.0.0.1", "s1")]), ("s2", &[("10.0.0.1", "s1")])],
        );
        // The guest moved to s2; s1's table follows late, s2's has nothing yet.
        let moved = round(
            &[("default/a", &["s2"])],
            &[("s1", &[("10.0.0.1", "s1")]), ("s2", &[])],
        );
        let half = round(
            &[("default/a", &["s2"])],
            &[("s1", &[("10.0.0.1", "s2")]), ("s2", &[])],
        );
        let fixed = round(
            &[("default/a", &["s2"])],
            &[("s1", &[("10.0.0.1", "s2")]), ("s2", &[("10.0.0.1", "s2")])],
        );
        tracker.record(&right, t0);
        tracker.record(&moved, t0 + Duration::from_millis(50));
        tracker.record(&half, t0 + Duration::from_millis(100));
        tracker.record(&fixed, t0 + Duration::from_millis(250));
        let report = tracker.finish(t0 + Duration::from_millis(300));
        assert_eq!(report.rounds, 4);
        assert_eq!(report.episodes.len(), 2, "{report}");
        let s2 = &report.episodes[0];
        assert_eq!(
            (s2.sled.as_str(), s2.lasted),
            ("s2", Duration::from_millis(200))
        );
        assert_eq!(
            s2.problem,
            Problem::Missing {
                runs_on: "s2".into()
            }
        );
        let s1 = &report.episodes[1];
        assert_eq!(
            (s1.sled.as_str(), s1.lasted),
            ("s1", Duration::from_millis(50))
        );
        assert!(matches!(s1.problem, Problem::Wrong { .. }));
        assert!(report.longer_than(Duration::from_millis(100)).len() == 1);
        assert!(report.double_runs.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_guest_has_no_expectation_and_two_running_guests_are_reported() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        // Paused for the switch: runs nowhere, the stale mapping is not an episode.
        tracker.record(&round(&[], &[("s1", &[("10.0.0.1", "s1")])]), t0);
        tracker.record(
            &round(
                &[("default/a", &["s1", "s2"])],
                &[("s1", &[("10.0.0.1", "s1")])],
            ),
            t0 + Duration::from_millis(50),
        );
        tracker.record(
            &round(&[], &[("s1", &[("10.0.0.1", "s1")])]),
            t0 + Duration::from_millis(100),
        );
        tracker.record(
            &round(&[("default/a", &["s2"])], &[("s1", &[("10.0.0.1", "s2")])]),
            t0 + Duration::from_millis(250),
        );
        let report = tracker.finish(t0 + Duration::from_millis(300));
        assert!(report.episodes.is_empty(), "{report}");
        // Seen running at 50 ms, nowhere from 100 ms, running again at 250 ms.
        assert_eq!(report.longest_pause, Duration::from_millis(150));
        assert_eq!(
            report.double_runs,
            vec![DoubleRun {
                instance: "default/a".into(),
                sleds: vec!["s1".into(), "s2".into()]
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_mapping_to_a_sled_that_forwards_to_where_the_guest_runs_is_right() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        // The guest moved from s1 to s2; s3 still maps to s1, which forwards to s2.
        let mut forwarded = round(
            &[("default/a", &["s2"])],
            &[
                ("s1", &[("10.0.0.1", "s1")]),
                ("s2", &[("10.0.0.1", "s2")]),
                ("s3", &[("10.0.0.1", "s1")]),
            ],
        );
        let key = ("web".to_string(), "10.0.0.1".to_string());
        forwarded.forwards.insert(
            "s1".into(),
            HashMap::from([(key.clone(), "s2".to_string())]),
        );
        tracker.record(&forwarded, t0);
        // A forward to a sled where the guest does not run is wrong.
        let mut astray = round(
            &[("default/a", &["s2"])],
            &[("s2", &[("10.0.0.1", "s2")]), ("s3", &[("10.0.0.1", "s1")])],
        );
        astray
            .forwards
            .insert("s1".into(), HashMap::from([(key, "s4".to_string())]));
        tracker.record(&astray, t0 + Duration::from_millis(50));
        let report = tracker.finish(t0 + Duration::from_millis(100));
        assert_eq!(report.episodes.len(), 1, "{report}");
        assert_eq!(report.episodes[0].sled, "s3");
        assert_eq!(report.episodes[0].lasted, Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn an_episode_still_open_at_the_end_is_ongoing() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        tracker.record(
            &round(&[("default/b", &["s1"])], &[("s1", &[("10.0.0.2", "s9")])]),
            t0,
        );
        let report = tracker.finish(t0 + Duration::from_secs(2));
        assert_eq!(report.episodes.len(), 1);
        assert!(report.episodes[0].ongoing);
        assert_eq!(report.longer_than(Duration::from_secs(10)).len(), 1);
    }
}
