//! Leases (`coordination.k8s.io/v1`): node-agent heartbeats and leader election.
//!
//! # Leader election
//! [`acquire`] returns once this process holds the Lease; the returned [`Leadership`]'s `lost`
//! token is cancelled as soon as the holder can no longer be sure it still leads.
//!
//! # Guarantees
//! - Two holders never act at once, provided each stops acting when `lost` fires: a holder
//!   that has not renewed within `renew_deadline` gives up (fires `lost`), and a candidate takes
//!   the Lease only after seeing it unchanged for a full `duration`, which is longer than
//!   `renew_deadline`. Every take-over and renewal is conditional on the Lease's
//!   resourceVersion, so two candidates cannot both win one round.
//! - Expiry is judged by the candidate's own clock from when it *observed* the Lease last
//!   change, never by comparing another process's `renewTime` with its own clock (clock skew
//!   between machines cannot hand the Lease over early).
//! - A holder that shuts down cleanly clears `holderIdentity` ([`Leadership::release`]), so a
//!   successor takes over at its next retry instead of waiting out the Lease.
//! # Assumptions
//! - `duration > renew_deadline > retry_period`, and process pauses are shorter than
//!   `duration - renew_deadline`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock;

/// Timing of one Lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who holds it: unique per process (host name, pid, random suffix).
    pub identity: String,
    /// How long a Lease that is not renewed stays valid.
    pub duration: Duration,
    /// A holder that could not renew for this long gives up.
    pub renew_deadline: Duration,
    /// How often holders renew and candidates retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Kubernetes' defaults for controller managers: 15 s / 10 s / 2 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A unique identity for this process: `{prefix}-{pid}-{random}`.
pub fn identity(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// This process holds the Lease until `lost` is cancelled.
pub struct Leadership {
    /// Cancelled when leadership is lost (or released). Stop acting at once.
    pub lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Leadership {
    /// Stops renewing and clears `holderIdentity`, so that a successor need not wait.
    pub async fn release(self) {
        self.lost.cancel();
        let _ = self.renewer.await;
        if let Ok(mut lease) = self.api.get(&self.config.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(&self.config.identity) {
                spec.holder_identity = None;
                let _ = self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

/// What a candidate last saw of the Lease, and when (by its own clock).
struct Observation {
    resource_version: Option<String>,
    holder: Option<String>,
    since: Instant,
}

/// Waits until this process holds the Lease (or `shutdown` fires: `None`).
pub async fn acquire(
    client: &kube::Client,
    config: &LeaseConfig,
    shutdown: &CancellationToken,
) -> Option<Leadership> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let mut observed: Option<Observation> = None;
    loop {
        match try_acquire(&api, config, &mut observed).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, lease = %config.name, "acquiring the lease"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(config.retry_period) => {}
        }
    }
    tracing::info!(lease = %config.name, identity = %config.identity, "acquired the lease");
    let lost = shutdown.child_token();
    let renewer = tokio::spawn(renew_until_lost(api.clone(), config.clone(), lost.clone()));
    Some(Leadership {
        lost,
        renewer,
        api,
        config: config.clone(),
    })
}

/// One round of the candidate: take the Lease if it is free, ours, or expired by observation.
async fn try_acquire(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observation>,
) -> Result<bool, kube::Error> {
    let now = clock::now();
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(held_spec(config, None, now, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let version = lease.metadata.resource_version.clone();
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.resource_version != version || o.holder != holder);
    if changed {
        *observed = Some(Observation {
            resource_version: version,
            holder: holder.clone(),
            since: Instant::now(),
        });
    }
    let lease_duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(config.duration);
    let expired = observed
        .as_ref()
        .is_some_and(|o| o.since.elapsed() >= lease_duration);
    let ours = holder.as_deref() == Some(&config.identity);
    if holder.is_some() && !ours && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquired = if ours {
        spec.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(held_spec(config, acquired, now, transitions));
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

fn held_spec(
    config: &LeaseConfig,
    acquired: Option<MicroTime>,
    now: jiff::Timestamp,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs().max(1) as i32),
        acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Renews every `retry_period`; cancels `lost` when a renewal shows someone else holds the
/// Lease, or when no renewal succeeded for `renew_deadline`.
async fn renew_until_lost(api: Api<Lease>, config: LeaseConfig, lost: CancellationToken) {
    let mut last_renewal = Instant::now();
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(config.retry_period) => {}
        }
        let attempt = tokio::time::timeout(
            config.renew_deadline.saturating_sub(last_renewal.elapsed()),
            renew(&api, &config),
        )
        .await;
        match attempt {
            Ok(Ok(true)) => last_renewal = Instant::now(),
            Ok(Ok(false)) => {
                tracing::warn!(lease = %config.name, "the lease is held by someone else");
                lost.cancel();
                return;
            }
            Ok(Err(error)) => tracing::warn!(%error, lease = %config.name, "renewing the lease"),
            Err(_) => {}
        }
        if last_renewal.elapsed() >= config.renew_deadline {
            tracing::warn!(lease = %config.name, "could not renew the lease in time");
            lost.cancel();
            return;
        }
    }
}

/// One renewal by the holder: `Ok(false)` if the Lease is no longer ours.
async fn renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let mut lease = api.get(&config.name).await?;
    let spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(&config.identity) {
        return Ok(false);
    }
    lease.spec = Some(held_spec(
        config,
        spec.acquire_time,
        clock::now(),
        spec.lease_transitions.unwrap_or(0),
    ));
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// A heartbeat: the holder renews its own Lease (created if missing) and nobody else takes it.
/// Node-agents use it; the sled-health controller reads `renewTime`.
pub async fn heartbeat(client: &kube::Client, config: &LeaseConfig) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let now = clock::now();
    match api.get_opt(&config.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(held_spec(config, None, now, 0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(error) => Err(error),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let transitions = spec.lease_transitions.unwrap_or(0)
                + i32::from(spec.holder_identity.as_deref() != Some(&config.identity));
            lease.spec = Some(held_spec(config, spec.acquire_time, now, transitions));
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    }
}
