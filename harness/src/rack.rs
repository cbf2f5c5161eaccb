//! A real rack as separate processes of the `corral` binary: one `corral apiserver`, any
//! number of `corral controllers` (leader-elected), and the sleds — either one `corral
//! node-agent` process per sled, each with its fault API, or one `corral power-sim` hosting
//! them all. Tests, e2e stories and benchmarks start it, break it and restart it piece by
//! piece, and speak to it through kube.
//!
//! # Definitions
//! - The rack is *ready* if (and only if) every one of its sleds (`sled-1` … `sled-N`) is
//!   Ready ([`Sled::is_ready`], the rule the scheduler uses) and one of its controllers
//!   processes holds the leader Lease.
//!
//! # Guarantees
//! - [`Rack::new`] starts nothing; [`Rack::start`] starts every process and returns once the
//!   rack is ready, or fails as soon as a process exits (except an agent whose address
//!   another process took meanwhile: it starts again on new ones). Processes started before a failure
//!   stay in the rack, for [`Rack::print_log_tails`] and [`Rack::stop`].
//! - No process outlives the rack's owner ([`Process`]). If the owner panics, the rack's
//!   directory (logs, store, sleds' machines) is kept, and the fault schedule and the end of
//!   every log are printed.
//! - Every wait is bounded, and says on a timeout what was still wrong.
//! - Every sled has a power controller at its `spec.powerController` (each `corral node-agent`
//!   serves its own, `corral power-sim` all of its sleds'), and the simulated faults work the
//!   same with either host: [`Rack::partition`], [`Rack::hang`],
//!   [`Rack::power_controller_unresponsive`], [`Rack::power_off`] and their ends (docs/rack.md,
//!   "The fault-injection API of a simulated sled"). Each is written to the fault schedule.
//! - Every sled's endpoints are HTTPS with the rack's certificates (`--pki`, docs/security.md
//!   "The sleds' endpoints"); the rack asks them as `admin` unless told another identity
//!   ([`Rack::sled_request`]), and runs its controllers with `--pki` so they reach the power
//!   controllers.
//!
//! # Layout of its directory
//! `kubeconfig`, `apiserver.log`, `controllers-N.log`, `sled-N.log` or `power-sim.log`, the
//! sleds' machines and journals under `sleds/NAME`, and whatever the caller puts there (a
//! SQLite store).
//!
//! # Not responsible for
//! What the rack runs: stories and benchmarks create Instances and check them themselves.

pub mod doors;
pub mod events;
pub mod journal;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_crds::Sled;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::apiserver::{Apiserver, ApiserverError, ApiserverSpec, Store, free_address};
use crate::process::{Process, ProcessError};
use crate::scratch::Scratch;
use crate::wait::{Unmet, WaitError, wait_for};
pub use doors::SledDoor;
use journal::Journal;

const NOT_STARTED: &str = "the rack is not started (Rack::start)";
/// How many times [`Rack::start`] moves an agent whose address another process took.
const PORT_ATTEMPTS: usize = 3;

/// How a rack's sleds run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SledHost {
    /// One `corral node-agent` process per sled, each with its fault API on a loopback port of
    /// its own ([`Agent::fault`]).
    Agents,
    /// One `corral power-sim` process hosting every sled.
    PowerSim,
}

/// What a rack is made of.
#[derive(Clone, Debug)]
pub struct RackSpec {
    /// The `corral` binary.
    pub program: PathBuf,
    pub store: Store,
    /// Further `corral apiserver` flags.
    pub apiserver_args: Vec<String>,
    /// How many `corral controllers` processes run.
    pub controllers: usize,
    /// Further `corral controllers` flags (`--lease-duration`, `--concurrency`).
    pub controllers_args: Vec<String>,
    /// How many sleds (`sled-1` … `sled-N`).
    pub sleds: usize,
    pub sled_host: SledHost,
    /// Further `corral node-agent` or `corral power-sim` flags (capacity, timing).
    pub sled_args: Vec<String>,
    /// `(namespace, name)` of the controllers' leader Lease.
    pub leader_lease: (String, String),
    /// `RUST_LOG` of every process.
    pub log_filter: String,
}

impl RackSpec {
    /// A rack to break: one `corral node-agent` process per sled, each with its fault API and
    /// its own power controller, renewing a 1 s Lease every 500 ms, with simulated VMMs that
    /// boot in 200 ms; two `corral controllers` on a 4 s leader Lease with `--sled-grace
    /// grace`. What the failure tests and `corral chaos` run on.
    pub fn for_failures(
        program: PathBuf,
        store: Store,
        sleds: usize,
        grace: Duration,
        leader_lease: (&str, &str),
    ) -> RackSpec {
        let strings = |args: &[&str]| args.iter().map(|arg| arg.to_string()).collect();
        let grace = format!("{}ms", grace.as_millis());
        RackSpec {
            program,
            store,
            apiserver_args: Vec::new(),
            controllers: 2,
            controllers_args: strings(&["--lease-duration", "4s", "--sled-grace", &grace]),
            sleds,
            sled_host: SledHost::Agents,
            sled_args: strings(&[
                "--cpus",
                "64",
                "--boot-time",
                "200ms",
                "--stop-time",
                "100ms",
                "--heartbeat",
                "500ms",
                "--lease-duration",
                "1s",
            ]),
            leader_lease: (leader_lease.0.into(), leader_lease.1.into()),
            log_filter: "info".into(),
        }
    }
}

/// Why a rack did not start.
#[derive(Debug, thiserror::Error)]
pub enum RackError {
    #[error("creating {}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Apiserver(#[from] ApiserverError),
    #[error("connecting to the API server")]
    Connect(#[source] corral_client::ConnectError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("the rack did not become ready")]
    NotReady(#[source] WaitError),
}

/// The node-agent process of one sled ([`SledHost::Agents`]).
pub struct Agent {
    pub sled: String,
    /// Its journal and simulated machine.
    pub data_dir: PathBuf,
    /// Where its fault API listens, the same across restarts (chosen again only if another
    /// process took it before the first start).
    pub fault: SocketAddr,
    /// Where its power controller listens (`spec.powerController`), the same across restarts.
    pub power: SocketAddr,
    pub process: Process,
}

/// One process of the rack, to break.
#[derive(Clone, Copy, Debug)]
pub enum Victim {
    Apiserver,
    /// The `index`th controllers process (0-based).
    Controllers(usize),
    /// The node-agent of the `index`th sled (0-based).
    Agent(usize),
}

/// A rack of processes. See the module docs.
pub struct Rack {
    spec: RackSpec,
    apiserver: Option<Apiserver>,
    pub controllers: Vec<Process>,
    /// Empty unless the sleds are [`SledHost::Agents`].
    pub agents: Vec<Agent>,
    /// `None` unless the sleds are [`SledHost::PowerSim`].
    pub power_sim: Option<Process>,
    client: Option<kube::Client>,
    journal: Journal,
    // Dropped after every process, which write in it.
    scratch: Scratch,
}

/// The name of the `index`th sled (1-based), as `corral power-sim` names them.
pub fn sled_name(index: usize) -> String {
    format!("sled-{index}")
}

impl Rack {
    /// A rack in `scratch` that runs nothing yet.
    pub fn new(spec: RackSpec, scratch: Scratch) -> Result<Rack, RackError> {
        let dir = scratch.path().to_path_buf();
        let process = |name: String, log: &str| {
            Process::new(name, &spec.program, dir.join(log)).env("RUST_LOG", &spec.log_filter)
        };
        let controllers = (1..=spec.controllers)
            .map(|index| {
                process(
                    format!("controllers-{index}"),
                    &format!("controllers-{index}.log"),
                )
            })
            .collect();
        let mut agents = Vec::new();
        let mut power_sim = None;
        match spec.sled_host {
            SledHost::Agents => {
                for index in 1..=spec.sleds {
                    let sled = sled_name(index);
                    agents.push(Agent {
                        data_dir: dir.join("sleds").join(&sled),
                        fault: free_address()?,
                        power: free_address()?,
                        process: process(format!("node-agent {sled}"), &format!("{sled}.log")),
                        sled,
                    });
                }
            }
            SledHost::PowerSim => power_sim = Some(process("power-sim".into(), "power-sim.log")),
        }
        Ok(Rack {
            spec,
            apiserver: None,
            controllers,
            agents,
            power_sim,
            client: None,
            journal: Journal::new(),
            scratch,
        })
    }

    /// Starts the API server, then every controllers process and every sled (powered on
    /// afresh), and waits at most `bound` until the rack is ready.
    pub async fn start(&mut self, bound: Duration) -> Result<(), RackError> {
        let apiserver_spec = ApiserverSpec {
            program: self.spec.program.clone(),
            store: self.spec.store.clone(),
            args: self.spec.apiserver_args.clone(),
            log_filter: self.spec.log_filter.clone(),
            pki: None,
        };
        let scratch = Scratch::at(self.dir()).map_err(|source| RackError::Directory {
            path: self.dir().to_path_buf(),
            source,
        })?;
        let apiserver = Apiserver::start(apiserver_spec, scratch).await?;
        apiserver.issue(&self.sled_names())?;
        self.apiserver = Some(apiserver);
        self.connect().await?;
        for index in 0..self.controllers.len() {
            self.start_controllers(index, &[])?;
        }
        for index in 0..self.agents.len() {
            self.cold_start_agent(index)?;
        }
        self.start_power_sim()?;
        // An agent's addresses were free when chosen, but another process may have bound one
        // since (other tests start their own processes): such an agent starts again on new ones.
        let mut attempt = 1;
        loop {
            match self.wait_until_ready(bound).await {
                Err(RackError::NotReady(WaitError::Hopeless { .. }))
                    if attempt < PORT_ATTEMPTS && self.move_agents_that_lost_a_port()? =>
                {
                    attempt += 1;
                }
                ready => return ready,
            }
        }
    }

    /// Starts again, on new addresses, every agent that exited because an address it was
    /// given was taken; whether there was one.
    fn move_agents_that_lost_a_port(&mut self) -> Result<bool, RackError> {
        let mut moved = false;
        for index in 0..self.agents.len() {
            let agent = &mut self.agents[index];
            // The whole log of this start: a backtrace (RUST_BACKTRACE) can push the error far
            // from the end.
            if agent.process.exit_status().is_none()
                || !agent
                    .process
                    .log_since_start()
                    .contains("Address already in use")
            {
                continue;
            }
            agent.fault = free_address()?;
            agent.power = free_address()?;
            println!(
                "{}: an address it was given was taken; starting it on new ones",
                agent.sled
            );
            self.cold_start_agent(index)?;
            moved = true;
        }
        Ok(moved)
    }

    /// Waits at most `bound` until every sled is Ready and a controllers process leads; fails
    /// at once if a process exits.
    pub async fn wait_until_ready(&mut self, bound: Duration) -> Result<(), RackError> {
        let what = format!("{} sleds Ready and a leader", self.spec.sleds);
        wait_for(&what, bound, async || {
            self.check_alive()
                .map_err(|exited| Unmet::Never(exited.to_string()))?;
            self.sleds_ready().await?;
            self.leader_index().await?;
            Ok::<_, Unmet>(())
        })
        .await
        .map_err(RackError::NotReady)?;
        Ok(())
    }

    /// A client of the API server (namespace `default`).
    pub fn client(&self) -> &kube::Client {
        self.client.as_ref().expect(NOT_STARTED)
    }

    pub fn apiserver(&self) -> &Apiserver {
        self.apiserver.as_ref().expect(NOT_STARTED)
    }

    /// `admin`'s kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.apiserver().kubeconfig()
    }

    /// The kubeconfig of identity `name` (`controllers`, `node-SLED`, `admin`).
    pub fn identity(&self, name: &str) -> PathBuf {
        self.apiserver().pki().join(format!("{name}.kubeconfig"))
    }

    /// The rack's directory (see the module docs).
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The names of its sleds, `sled-1` … `sled-N`.
    pub fn sled_names(&self) -> Vec<String> {
        (1..=self.spec.sleds).map(sled_name).collect()
    }

    /// The arguments of a `corral controllers` process of this rack.
    fn controllers_args(&self) -> Vec<String> {
        let mut args = vec![
            "controllers".to_string(),
            "--kubeconfig".into(),
            self.identity("controllers").display().to_string(),
            "--pki".into(),
            self.apiserver().pki().display().to_string(),
        ];
        args.extend(self.spec.controllers_args.iter().cloned());
        args
    }

    /// Starts the `index`th controllers process (again), with `extra` flags this time.
    pub fn start_controllers(
        &mut self,
        index: usize,
        extra: &[String],
    ) -> Result<u32, ProcessError> {
        let mut args = self.controllers_args();
        args.extend(extra.iter().cloned());
        self.controllers[index].start(&args)
    }

    /// Starts the `index`th node-agent again on the machine it left running.
    pub fn restart_agent(&mut self, index: usize) -> Result<u32, ProcessError> {
        self.start_agent(index, &[])
    }

    /// Starts the `index`th node-agent with its machine powered on afresh (a new epoch; the
    /// VMMs it ran are gone).
    pub fn cold_start_agent(&mut self, index: usize) -> Result<u32, ProcessError> {
        self.start_agent(index, &["--cold-start".to_string()])
    }

    fn start_agent(&mut self, index: usize, extra: &[String]) -> Result<u32, ProcessError> {
        let agent = &self.agents[index];
        let mut args = vec![
            "node-agent".to_string(),
            "--kubeconfig".into(),
            self.identity(&format!("node-{}", agent.sled))
                .display()
                .to_string(),
            "--sled".into(),
            agent.sled.clone(),
            "--data-dir".into(),
            agent.data_dir.display().to_string(),
            "--fault-listen".into(),
            agent.fault.to_string(),
            "--power-listen".into(),
            agent.power.to_string(),
            // The simulated power controller's address is inventory: admin records it.
            "--inventory-kubeconfig".into(),
            self.kubeconfig().display().to_string(),
            "--pki".into(),
            self.apiserver().pki().display().to_string(),
        ];
        args.extend(self.spec.sled_args.iter().cloned());
        args.extend(extra.iter().cloned());
        self.agents[index].process.start(&args)
    }

    /// Starts the power-sim process, every machine powered on afresh, if the rack has one.
    fn start_power_sim(&mut self) -> Result<(), ProcessError> {
        let mut args = vec![
            "power-sim".to_string(),
            "--kubeconfig".into(),
            self.kubeconfig().display().to_string(),
            "--credentials".into(),
            self.apiserver().pki().display().to_string(),
            "--pki".into(),
            self.apiserver().pki().display().to_string(),
            "--sleds".into(),
            self.spec.sleds.to_string(),
            "--data-dir".into(),
            self.dir().display().to_string(),
            "--cold-start".into(),
        ];
        args.extend(self.spec.sled_args.iter().cloned());
        if let Some(power_sim) = &mut self.power_sim {
            power_sim.start(&args)?;
        }
        Ok(())
    }

    /// Kills one process with SIGKILL; returns what it was, with its pid, for the schedule.
    pub fn kill9(&mut self, victim: Victim) -> String {
        let process = match victim {
            Victim::Apiserver => self.apiserver.as_mut().expect(NOT_STARTED).process_mut(),
            Victim::Controllers(index) => &mut self.controllers[index],
            Victim::Agent(index) => &mut self.agents[index].process,
        };
        let pid = process.pid();
        process.kill9();
        format!("{} (pid {pid:?})", process.name())
    }

    /// Starts the API server again on its address and store, with a fresh client.
    pub async fn restart_apiserver(&mut self) -> Result<(), RackError> {
        self.apiserver
            .as_mut()
            .expect(NOT_STARTED)
            .restart()
            .await?;
        self.connect().await
    }

    async fn connect(&mut self) -> Result<(), RackError> {
        let client = corral_client::connect(Some(&self.kubeconfig()))
            .await
            .map_err(RackError::Connect)?;
        self.client = Some(client);
        Ok(())
    }

    /// Ok when every sled of the rack reports Ready.
    pub async fn sleds_ready(&self) -> Result<(), String> {
        let sleds = Api::<Sled>::all(self.client().clone())
            .list(&ListParams::default())
            .await
            .map_err(|error| format!("listing sleds: {error}"))?;
        let names = self.sled_names();
        let not_ready: Vec<&String> = names
            .iter()
            .filter(|name| {
                !sleds
                    .items
                    .iter()
                    .any(|sled| sled.name_any() == **name && sled.is_ready())
            })
            .collect();
        if not_ready.is_empty() {
            return Ok(());
        }
        let mut shown: Vec<&str> = not_ready.iter().take(5).map(|name| name.as_str()).collect();
        if not_ready.len() > shown.len() {
            shown.push("…");
        }
        Err(format!(
            "{} of {} sleds Ready; not {}",
            names.len() - not_ready.len(),
            names.len(),
            shown.join(", ")
        ))
    }

    /// Which controllers process (0-based) holds the leader Lease. Its holder identity is
    /// `controllers-{pid}-{suffix}` (`corral_client::lease::identity`).
    pub async fn leader_index(&self) -> Result<usize, String> {
        let (namespace, name) = &self.spec.leader_lease;
        let lease = Api::<Lease>::namespaced(self.client().clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|error| format!("reading the leader Lease: {error}"))?
            .ok_or("no leader Lease yet")?;
        let holder = lease
            .spec
            .and_then(|spec| spec.holder_identity)
            .filter(|holder| !holder.is_empty())
            .ok_or("the leader Lease has no holder")?;
        let pid: Option<u32> = holder
            .strip_prefix("controllers-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse().ok());
        self.controllers
            .iter()
            .position(|process| process.pid().is_some() && process.pid() == pid)
            .ok_or_else(|| format!("the Lease is held by {holder}, not a live controllers process"))
    }

    /// Fails, naming the process, if one that was started has exited on its own (one killed
    /// by [`Rack::kill9`] is not counted).
    pub fn check_alive(&mut self) -> Result<(), ProcessError> {
        if let Some(apiserver) = &mut self.apiserver {
            apiserver.process_mut().check_alive()?;
        }
        for process in self.processes_mut() {
            process.check_alive()?;
        }
        Ok(())
    }

    /// Every process but the API server, in the order of their start.
    fn processes_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        self.controllers
            .iter_mut()
            .chain(self.agents.iter_mut().map(|agent| &mut agent.process))
            .chain(self.power_sim.iter_mut())
    }

    /// Stops every process in the reverse order of their start (sleds, controllers, then the
    /// API server they talk to): SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let mut processes: Vec<&mut Process> = self.processes_mut().collect();
        processes.reverse();
        for process in processes {
            process.stop(grace).await;
        }
        if let Some(apiserver) = &mut self.apiserver {
            apiserver.process_mut().stop(grace).await;
        }
    }

    /// Prints the last `lines` lines of every process's log to standard error.
    pub fn print_log_tails(&self, lines: usize) {
        let processes = self
            .apiserver
            .iter()
            .map(Apiserver::process)
            .chain(self.controllers.iter())
            .chain(self.agents.iter().map(|agent| &agent.process))
            .chain(self.power_sim.iter());
        for process in processes {
            eprintln!(
                "--- {} log ({}), the last lines:\n{}",
                process.name(),
                process.log_path().display(),
                process.log_tail(lines)
            );
        }
    }

    /// Keeps the rack's directory (logs, machines, store) after the rack is dropped.
    pub fn keep(&mut self) {
        self.scratch.keep();
    }

    /// Prints and remembers a fault (or operator action) in the fault schedule.
    pub fn fault(&mut self, what: impl Into<String>) {
        self.journal.fault(what);
    }

    /// Prints and remembers a measured duration.
    pub fn record(&mut self, what: &str, took: Duration) {
        self.journal.record(what, took);
    }

    /// Prints the Warning Events by reason, the fault schedule and the timings.
    pub async fn print_summary(&self) {
        match events::list(self.client()).await {
            Ok(events) => println!(
                "--- Warning events by reason: {:?}",
                events::warnings_by_reason(&events)
            ),
            Err(error) => println!("--- Warning events: {error}"),
        }
        self.journal.print();
    }

    /// For stories: polls `probe` until it answers `Ok`, for at most `bound`; returns the
    /// answer and how long it took.
    ///
    /// # Panics
    /// On a timeout, with the probe's last complaint and the recent Warning Events.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        bound: Duration,
        probe: impl AsyncFnMut() -> Result<T, String>,
    ) -> (T, Duration) {
        match wait_for(what, bound, probe).await {
            Ok(answer) => answer,
            Err(error) => {
                let warnings = events::recent_warnings(self.client(), 25).await;
                panic!("{error}\n--- recent Warning events\n{warnings}");
            }
        }
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.scratch.keep();
        eprintln!(
            "--- the run failed; logs, the sleds' machines and the store are kept in {}",
            self.dir().display()
        );
        eprintln!("--- fault schedule so far:");
        for line in self.journal.schedule() {
            eprintln!("{line}");
        }
        self.print_log_tails(40);
    }
}
