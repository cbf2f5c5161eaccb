//! A census of simulated machines: what each machine of a rack runs, read from its file
//! (`machine.json`) without driving it, and the instances found live on more than one machine
//! at once — the check "never the same guest twice" asks the machines themselves, even while
//! their agents are down, cut off or hung.
//!
//! # Guarantees
//! - A read sees one state of a machine (the file is replaced whole on every change).
//! - A machine that is off, or has no file yet, runs nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::machine::{MACHINE_FILE, Machine};
use crate::hypervisor::{HypervisorError, VmmRunState};
use crate::power::PowerState;

/// One guest of a machine, as its file shows it ([`guests_in`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    pub namespace: String,
    pub instance: String,
    /// The Vmm's name.
    pub vmm: String,
    /// Its VMM has not ended (it boots, runs, is paused, stops, or receives a migration).
    pub live: bool,
}

/// The guests of the machine kept in `data_dir` (see the module docs).
pub fn guests_in(data_dir: &Path) -> Result<Vec<Guest>, HypervisorError> {
    let path = data_dir.join(MACHINE_FILE);
    let load = |source: Box<dyn std::error::Error + Send + Sync>| HypervisorError::Load {
        path: path.display().to_string(),
        source,
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(load(Box::new(error))),
    };
    let machine: Machine = serde_json::from_slice(&bytes).map_err(|e| load(Box::new(e)))?;
    if machine.power == PowerState::Off {
        return Ok(Vec::new());
    }
    Ok(machine
        .vmms
        .values()
        .map(|vmm| Guest {
            namespace: vmm.launch.namespace.clone(),
            instance: vmm.launch.instance.clone(),
            vmm: vmm.launch.name.clone(),
            live: !matches!(vmm.state, VmmRunState::Exited(_)),
        })
        .collect())
}

/// The instances live on more than one of `machines` (sled name, its guests): for each, the
/// sleds it is live on.
pub fn live_twice(machines: &[(String, Vec<Guest>)]) -> Vec<(String, String, Vec<String>)> {
    let mut on: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (sled, guests) in machines {
        for guest in guests.iter().filter(|guest| guest.live) {
            let sleds = on
                .entry((guest.namespace.clone(), guest.instance.clone()))
                .or_default();
            if !sleds.contains(sled) {
                sleds.push(sled.clone());
            }
        }
    }
    on.into_iter()
        .filter(|(_, sleds)| sleds.len() > 1)
        .map(|((namespace, instance), sleds)| (namespace, instance, sleds))
        .collect()
}

/// Reads every machine of a rack on a period and records every instance found live on two of
/// them at once (a background task, stopped when the census is dropped).
pub struct Census {
    found: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Census {
    /// Starts reading `machines` (sled name, data directory) every `every`.
    pub fn start(machines: Vec<(String, PathBuf)>, every: Duration) -> Census {
        let found = Arc::new(Mutex::new(Vec::new()));
        let record = found.clone();
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let read: Vec<(String, Vec<Guest>)> = machines
                    .iter()
                    .filter_map(|(sled, dir)| Some((sled.clone(), guests_in(dir).ok()?)))
                    .collect();
                for (namespace, instance, sleds) in live_twice(&read) {
                    record.lock().expect("census lock").push(format!(
                        "{namespace}/{instance} live on {sleds:?} at once ({:.1} s)",
                        start.elapsed().as_secs_f64()
                    ));
                }
            }
        });
        Census { found, task }
    }

    /// What was found since the start or the last take, each instance once; forgets it.
    pub fn take(&self) -> Vec<String> {
        let mut found = std::mem::take(&mut *self.found.lock().expect("census lock"));
        found.dedup_by(|a, b| a.split(" at once").next() == b.split(" at once").next());
        found
    }
}

impl Drop for Census {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(instance: &str, live: bool) -> Guest {
        Guest {
            namespace: "default".into(),
            instance: instance.into(),
            vmm: format!("{instance}-v1"),
            live,
        }
    }

    #[test]
    fn an_instance_is_twice_only_when_live_on_two_machines() {
        let machines = vec![
            ("s1".to_string(), vec![guest("a", true), guest("b", true)]),
            ("s2".to_string(), vec![guest("a", true), guest("b", false)]),
            ("s3".to_string(), vec![guest("c", true)]),
        ];
        assert_eq!(
            live_twice(&machines),
            vec![("default".into(), "a".into(), vec!["s1".into(), "s2".into()])]
        );
    }
}
