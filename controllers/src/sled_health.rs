//! The sled-health controller: judges every sled from its heartbeat Lease and its power
//! controller, fences a sled that cannot be reached (power off, confirmed; or an operator's
//! confirmation), and releases the Vmms of a fenced sled so that their instances restart
//! elsewhere. docs/rack.md, "When a sled fails", is the operator's view; the decisions are
//! [`plan::plan`]'s; this file wires the watches, measures the Lease's age, asks the power
//! controllers, and carries the actions out.
//!
//! Reads Sleds (primary), Leases in `kube-node-lease` and Vmms (caches), and the sleds' power
//! controllers. Writes `Sled.status.health`, the `Fenced` condition, `Ready=False`
//! (`HeartbeatExpired`) and, to fence, `Sled.status.epoch`; removes the node-agent's finalizer
//! from the Vmms of a fenced sled's ended life; powers unreachable sleds off; records Events.
//!
//! # Guarantees
//! - A Lease's age is measured on this process's clock from when it last saw `renewTime` (or
//!   the sled's epoch) change ([`Heartbeats`]), so clock skew between machines cannot expire a
//!   Lease, a controller that starts (or takes over as leader) gives every sled a full grace,
//!   and so does a sled that boots a new life.
//! - Every fence raises the epoch with a status write conditional on the resourceVersion the
//!   verdict was made from: a sled whose agent wrote meanwhile is judged again, never fenced
//!   on a stale view.
//! - Releases run at most [`Config::evacuation_rate`] per second across the rack (one bucket in
//!   the leader), so a lost sled does not restart all its instances in one burst.
//! - Everything an evacuation needs is in the API (the fenced epoch, the Vmms still holding
//!   the finalizer): a restarted controller resumes it where it was.
//! # Assumptions
//! - Only the leader runs this (see `lib.rs`). The power controller's `Off` is the truth
//!   about a machine: a sled it reads `Off` runs nothing.
//! # Not responsible for
//! - Restarting the instances (the instance controller ends every Vmm whose sled's epoch rose
//!   past its own once it is released, and places a new one); what the agent of a fenced sled
//!   does when it comes back (node-agent: it destroys what it ran and takes a new epoch).

pub mod plan;
mod power;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_crds::{SLED_LEASE_NAMESPACE, Sled, SledStatus, VMM_FINALIZER, Vmm};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::kit::{Apply, Board, Cache, Caches, Controller, Effects, Error, Reconciled, Reconciler};
use plan::{Action, Heartbeat, Observed, Power, Storm, StormGuard};
use power::PowerClient;

/// How the sled-health controller judges and acts.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How long a Lease may go unrenewed before the sled is unreachable
    /// (`corral controllers --sled-grace`).
    pub grace: Duration,
    /// When many sleds are unreachable at once, nothing is fenced automatically.
    pub storm: StormGuard,
    /// Vmms of fenced sleds released per second, rack-wide (and as many at once).
    pub evacuation_rate: u32,
    /// How long a power controller has to answer.
    pub power_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace: Duration::from_secs(20),
            storm: StormGuard::default(),
            evacuation_rate: 50,
            power_timeout: Duration::from_secs(2),
        }
    }
}

/// The sled-health controller's state beside its caches.
pub struct SledHealthController {
    effects: Effects,
    config: Config,
    sleds: Cache<Sled>,
    leases: Cache<Lease>,
    vmms: Cache<Vmm>,
    heartbeats: Heartbeats,
    power: PowerClient,
    /// What each sled's power controller last answered (for the storm count).
    last_power: Mutex<HashMap<String, Power>>,
    /// When the storm count was last seen above the limit.
    last_storm: Mutex<Option<Instant>>,
    releases: Mutex<Bucket>,
}

/// Runs the controller until `stop` fires; returns when every reconcile has finished.
pub async fn controller(
    client: kube::Client,
    (config, power_tls): (Config, Option<Arc<rustls::ClientConfig>>),
    board: Board,
    stop: CancellationToken,
) {
    let mut caches = Caches::new(client.clone());
    let sleds = caches.primary::<Sled>(watcher::Config::default());
    let leases = caches.watch::<Lease>(watcher::Config::default());
    let vmms = caches.watch::<Vmm>(watcher::Config::default());
    let reconciler = SledHealthController {
        effects: Effects::new(client, "sled-health-controller"),
        config,
        sleds: sleds.cache(),
        leases: leases.cache(),
        vmms: vmms.cache(),
        heartbeats: Heartbeats::default(),
        power: PowerClient::new(config.power_timeout, power_tls),
        last_power: Mutex::default(),
        last_storm: Mutex::default(),
        releases: Mutex::new(Bucket::new(config.evacuation_rate)),
    };
    let readiness = caches.readiness();
    Controller::<SledHealthController>::new(sleds, &board)
        .watches(leases, |lease: Lease| {
            (lease.namespace().as_deref() == Some(SLED_LEASE_NAMESPACE))
                .then(|| ObjectRef::new(&lease.name_any()))
        })
        .watches(vmms, |vmm: Vmm| Some(ObjectRef::new(&vmm.spec.sled)))
        .run(reconciler, readiness, 0, stop)
        .await;
}

impl SledHealthController {
    /// The Lease of `sled` (at `epoch`) as this controller saw it.
    fn heartbeat(&self, sled: &str, epoch: u64) -> Heartbeat {
        let lease = self.leases.get_in(SLED_LEASE_NAMESPACE, sled);
        let spec = lease.as_ref().and_then(|lease| lease.spec.as_ref());
        let renewed = spec
            .and_then(|spec| spec.renew_time.as_ref())
            .map(|t| Time(t.0));
        Heartbeat {
            age: self.heartbeats.age(sled, renewed.as_ref(), epoch),
            lease_duration: spec
                .and_then(|spec| spec.lease_duration_seconds)
                .map(|seconds| Duration::from_secs(seconds.max(0) as u64)),
            renewed,
        }
    }

    /// How many sleds are in doubt at once: Lease late, not fenced, not read `Off`.
    fn storm(&self) -> Storm {
        let sleds = self.sleds.filter(|sled| sled.epoch() > 0);
        let last_power = self.last_power.lock().expect("power lock");
        let unreachable = sleds
            .iter()
            .filter(|sled| !sled.is_fenced())
            .filter(|sled| {
                let name = sled.name_any();
                self.heartbeat(&name, sled.epoch()).late(self.config.grace)
                    && last_power.get(&name) != Some(&Power::Off)
            })
            .count();
        let limit = self.config.storm.limit(sleds.len());
        let now = Instant::now();
        let mut last_storm = self.last_storm.lock().expect("storm lock");
        if unreachable > limit {
            *last_storm = Some(now);
        }
        Storm {
            unreachable,
            sleds: sleds.len(),
            limit,
            since_storm: last_storm.map(|at| now.duration_since(at)),
        }
    }
}

impl Reconciler for SledHealthController {
    async fn reconcile(&self, sled: Arc<Sled>) -> Result<Reconciled<SledStatus, Action>, Error> {
        let name = sled.name_any();
        let heartbeat = self.heartbeat(&name, sled.epoch());
        let power = if heartbeat.expired(self.config.grace) && !sled.is_fenced() {
            let power = self.power.read(sled.spec.power_controller.as_deref()).await;
            self.last_power
                .lock()
                .expect("power lock")
                .insert(name.clone(), power.clone());
            Some(power)
        } else {
            // What the power controller said of an earlier silence no longer holds.
            self.last_power.lock().expect("power lock").remove(&name);
            None
        };
        // The sled's Vmms matter only to a fence (the Lease expired) or an evacuation under
        // way; every other reconcile (most of them, woken by Vmm events) skips the scan.
        let health = sled
            .status
            .as_ref()
            .and_then(|status| status.health.as_ref());
        let evacuating = health.is_some_and(|health| {
            health.fenced_epoch.is_some()
                && health
                    .evacuation
                    .as_ref()
                    .is_none_or(|evacuation| evacuation.completed.is_none())
        });
        let held = if evacuating || heartbeat.expired(self.config.grace) {
            self.vmms.filter(|vmm| {
                vmm.spec.sled == name && vmm.finalizers().iter().any(|f| f == VMM_FINALIZER)
            })
        } else {
            Vec::new()
        };
        let outlived = health
            .and_then(|health| health.fenced_epoch)
            .map_or(0, |fenced| {
                held.iter()
                    .filter(|vmm| vmm.spec.sled_epoch < fenced)
                    .count()
            });
        let release_budget = if outlived > 0 {
            self.releases.lock().expect("bucket lock").take(outlived)
        } else {
            0
        };
        let observed = Observed {
            sled: &sled,
            heartbeat,
            power,
            storm: self.storm(),
            held: &held,
            release_budget,
            grace: self.config.grace,
            now: corral_client::clock::now(),
        };
        Ok(Reconciled::Plan(plan::plan(&observed)))
    }
}

impl Apply for SledHealthController {
    type Object = Sled;
    type Status = SledStatus;
    type Action = Action;

    const NAME: &'static str = "sled-health";

    fn effects(&self) -> &Effects {
        &self.effects
    }

    fn with_status(object: &Sled, status: &SledStatus) -> Sled {
        Sled {
            status: Some(status.clone()),
            ..object.clone()
        }
    }

    fn status_of(object: &Sled) -> Option<&SledStatus> {
        object.status.as_ref()
    }

    fn phase(status: &SledStatus) -> Option<String> {
        status
            .health
            .as_ref()
            .map(|health| health.verdict.to_string())
    }

    async fn apply(&self, action: &Action, sled: &Sled) -> Result<Option<Sled>, Error> {
        match action {
            Action::PowerOff => {
                let name = sled.name_any();
                let outside = |message: String| Error::Outside {
                    operation: "powering off",
                    object: format!("sled {name}"),
                    message,
                };
                let url = sled
                    .spec
                    .power_controller
                    .as_deref()
                    .ok_or_else(|| outside("it has no power controller".into()))?;
                self.power.power_off(url).await.map_err(outside)?;
                self.last_power
                    .lock()
                    .expect("power lock")
                    .insert(name, Power::Off);
                Ok(None)
            }
            Action::Release { namespace, name } => {
                if let Some(vmm) = self.vmms.get_in(namespace, name) {
                    self.effects
                        .set_finalizer(vmm.as_ref(), VMM_FINALIZER, false)
                        .await?;
                }
                Ok(None)
            }
        }
    }
}

/// A sled as last seen: its Lease's renew time, its epoch, and when that pair was first seen
/// (this process's clock).
type LeaseSeen = (Option<Time>, u64, Instant);

/// When each sled's Lease was last seen renewed, on this process's clock.
#[derive(Default)]
pub struct Heartbeats {
    seen: Mutex<HashMap<String, LeaseSeen>>,
}

impl Heartbeats {
    /// How long since `renewed` was first seen for `sled` at `epoch`: a new renewal, or a new
    /// life of the sled (its agent booted, or it was fenced), restarts the count — a sled that
    /// just booted has a full grace to renew, even if the watch shows its new epoch before its
    /// first renewal.
    pub fn age(&self, sled: &str, renewed: Option<&Time>, epoch: u64) -> Duration {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("heartbeats lock");
        let entry = seen
            .entry(sled.to_string())
            .or_insert_with(|| (renewed.cloned(), epoch, now));
        if entry.0.as_ref() != renewed || entry.1 != epoch {
            *entry = (renewed.cloned(), epoch, now);
        }
        now.duration_since(entry.2)
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` saved up.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate.max(1)),
            tokens: f64::from(rate.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes up to `wanted` whole tokens; how many it got.
    fn take(&mut self, wanted: usize) -> usize {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        let granted = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_ages_on_this_clock_and_a_renewal_restarts_the_count() {
        let heartbeats = Heartbeats::default();
        let t1 = Time(jiff::Timestamp::from_second(100).unwrap());
        let t2 = Time(jiff::Timestamp::from_second(105).unwrap());
        assert_eq!(heartbeats.age("s1", Some(&t1), 1), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(heartbeats.age("s1", Some(&t1), 1), Duration::from_secs(7));
        assert_eq!(heartbeats.age("s1", Some(&t2), 1), Duration::ZERO);
        // A sled without a Lease ages from when it was first seen.
        assert_eq!(heartbeats.age("s2", None, 1), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(heartbeats.age("s2", None, 1), Duration::from_secs(3));
        // A new life of the sled (seen before its first renewal) has a full grace.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(heartbeats.age("s1", Some(&t2), 1), Duration::from_secs(33));
        assert_eq!(heartbeats.age("s1", Some(&t2), 2), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_release_bucket_grants_its_rate_per_second() {
        let mut bucket = Bucket::new(10);
        assert_eq!(bucket.take(25), 10);
        assert_eq!(bucket.take(25), 0);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(bucket.take(25), 5);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(bucket.take(3), 3);
        assert_eq!(bucket.take(25), 7);
    }
}
