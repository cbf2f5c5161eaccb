//! The rack-side commands: `corral up` (everything in one process), `corral node-agent` (one
//! simulated sled) and `corral power-sim` (many simulated sleds and their power controllers in
//! one process).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use corral_client::tls::{KeyPairFiles, client_config, server_config};
use corral_crds::Resources;
use corral_node_agent::http::{Endpoints, Rule, authorize};
use corral_node_agent::qemu::{Accel, QemuConfig};
use corral_node_agent::sim::{SimSled, SimSledConfig, SimTiming, SledHandle, StartMode};
use corral_node_agent::{AgentConfig, PowerControllers, power_controller_url};
use tokio_util::sync::CancellationToken;

use crate::apiserver::{ApiserverArgs, AuditArgs, LimitArgs, SecurityArgs, start_apiserver};
use crate::certs::{self, CertsArgs};
use crate::command::{parse_duration, shutdown_signal};
use crate::controllers::controllers_config;

/// What a simulated sled is like.
#[derive(clap::Args, Clone, Debug)]
pub struct SledArgs {
    /// CPUs each sled offers to VMMs.
    #[arg(long, default_value_t = 128)]
    pub cpus: u32,
    /// Memory each sled offers to VMMs, in MiB.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub memory_mib: u64,
    /// How long a simulated VMM takes to boot.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub boot_time: Duration,
    /// How long a simulated VMM takes to stop.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub stop_time: Duration,
    /// How often each agent renews its heartbeat Lease.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// The heartbeat Lease's `leaseDurationSeconds` (whole seconds, at least 1): the agent's
    /// promise to renew within it. The sled-health controller never judges a sled before it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// The sled's migration link, bytes per second (live migrations out of the sled: the
    /// simulator models them over it, QEMU caps each at it).
    #[arg(long, default_value_t = corral_node_agent::sim::DEFAULT_MIGRATION_BANDWIDTH)]
    pub migration_bandwidth: u64,
    /// The longest pause a live migration out of the sled plans for: pre-copy ends once the
    /// rest would take this long to send. Default: 300ms on simulated sleds, 20ms on QEMU
    /// sleds (docs/qemu.md, "Downtime").
    #[arg(long, value_parser = parse_duration)]
    pub downtime_budget: Option<Duration>,
    /// What runs the VMMs: `sim`, the simulated machine, or `qemu`, a QEMU process per VMM
    /// running corral-guest (docs/qemu.md; size `--cpus` and `--memory-mib` to the machine).
    #[arg(long, value_enum, default_value_t = HypervisorKind::Sim)]
    pub hypervisor: HypervisorKind,
    /// QEMU sleds: how guests are accelerated — `auto` (KVM when `/dev/kvm` is usable, TCG
    /// otherwise), `kvm` or `tcg`.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// QEMU sleds: the sled's QEMU processes die when this process does (by default they
    /// outlive the agent, which re-attaches to them when it starts again).
    #[arg(long)]
    pub vmms_die_with: Option<u32>,
}

/// What runs a sled's VMMs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypervisorKind {
    Sim,
    Qemu,
}

/// How a QEMU sled accelerates its guests.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub fn accel(self) -> Accel {
        match self {
            AccelChoice::Auto => Accel::detect(),
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
        }
    }
}

impl SledArgs {
    fn sled_config(&self, client: &kube::Client, name: &str, data_dir: &Path) -> SimSledConfig {
        let agent = AgentConfig::new(client.clone(), name, data_dir.to_path_buf());
        let mut config = SimSledConfig::new(agent);
        config.agent.capacity = Resources {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
        };
        config.agent.intervals.heartbeat = self.heartbeat;
        config.agent.intervals.lease_duration = self.lease_duration.max(Duration::from_secs(1));
        config.timing = SimTiming {
            boot_time: self.boot_time,
            stop_time: self.stop_time,
            migration_bandwidth: self.migration_bandwidth,
            ..SimTiming::default()
        };
        if let Some(budget) = self.downtime_budget {
            config.timing.downtime_budget = budget;
        }
        if self.hypervisor == HypervisorKind::Qemu {
            let mut qemu = QemuConfig::new(config.agent.capacity);
            qemu.accel = self.accel.accel();
            qemu.vmms_die_with = self.vmms_die_with;
            qemu.migration_bandwidth = self.migration_bandwidth;
            if let Some(budget) = self.downtime_budget {
                qemu.downtime_budget = budget;
            }
            config.qemu = Some(qemu);
        }
        config
    }
}

/// How the sleds' own endpoints (fault, migration, power) are served (docs/security.md, "The
/// sleds' endpoints").
#[derive(Clone, Debug)]
pub enum SledSecurity {
    /// HTTPS with the certificates of a `corral certs` directory: each sled serves with
    /// `node-SLED-serving.crt` and calls other sleds as `node-SLED.crt`, the power controllers
    /// serve with `power-controller.crt`; callers are verified against `ca.crt`.
    Pki(PathBuf),
    /// Plain HTTP, anyone may call (a rack whose API server runs `--insecure-http`).
    InsecureHttp,
}

impl SledSecurity {
    /// The endpoints of sled `sled`.
    fn sled(&self, sled: &str) -> anyhow::Result<Endpoints> {
        let SledSecurity::Pki(dir) = self else {
            return Ok(Endpoints::InsecureHttp);
        };
        let ca = dir.join("ca.crt");
        let serving = KeyPairFiles::in_dir(dir, &format!("node-{sled}-serving"));
        let identity = KeyPairFiles::in_dir(dir, &format!("node-{sled}"));
        Ok(Endpoints::Tls {
            server: server_config(&serving, &ca)
                .with_context(|| format!("the serving certificate of {sled}"))?,
            client: client_config(&ca, Some(&identity))
                .with_context(|| format!("the identity of {sled}"))?,
        })
    }

    /// The endpoints of the power controllers.
    fn power_controllers(&self) -> anyhow::Result<Endpoints> {
        let SledSecurity::Pki(dir) = self else {
            return Ok(Endpoints::InsecureHttp);
        };
        let ca = dir.join("ca.crt");
        let serving = KeyPairFiles::in_dir(dir, "power-controller");
        Ok(Endpoints::Tls {
            server: server_config(&serving, &ca)
                .context("the power controllers' serving certificate")?,
            client: client_config(&ca, None).context("the rack's CA")?,
        })
    }
}

/// `--pki DIR` or `--insecure-http`: how a sled's endpoints are served.
#[derive(clap::Args, Clone, Debug)]
pub struct EndpointArgs {
    /// The `corral certs` directory the sleds' endpoints are served from over HTTPS:
    /// `node-SLED-serving.crt`/`.key` for a sled's fault and migration API,
    /// `power-controller.crt`/`.key` for its power controller, `ca.crt` to verify callers,
    /// `node-SLED.crt`/`.key` to call other sleds with.
    #[arg(long, required_unless_present = "insecure_http")]
    pki: Option<PathBuf>,
    /// Serve the sleds' endpoints over plain HTTP, to anyone: only beside an API server run
    /// with --insecure-http (refused when the kubeconfig names an https:// server), on
    /// loopback. This gives up encryption and every check of who calls (faults, power,
    /// migrations).
    #[arg(long, conflicts_with = "pki")]
    insecure_http: bool,
}

impl EndpointArgs {
    /// How the endpoints are served; plain HTTP only when the API server named by
    /// `kubeconfig` (the agents' own) is plain HTTP too.
    fn security(&self, kubeconfig: Option<&Path>) -> anyhow::Result<SledSecurity> {
        if let Some(dir) = &self.pki {
            return Ok(SledSecurity::Pki(dir.clone()));
        }
        let server = api_server_url(kubeconfig)?;
        anyhow::ensure!(
            server.starts_with("http://"),
            "--insecure-http serves the sleds' endpoints over plain HTTP, only beside an API server run with --insecure-http; {server} is not: give --pki DIR"
        );
        tracing::warn!(
            "serving the sleds' endpoints over plain HTTP (--insecure-http): no encryption, anyone may call them"
        );
        Ok(SledSecurity::InsecureHttp)
    }
}

/// The API server's URL in the current context of `kubeconfig` (default: $KUBECONFIG,
/// ~/.kube/config).
fn api_server_url(kubeconfig: Option<&Path>) -> anyhow::Result<String> {
    let config = match kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading {}", path.display()))?,
        None => kube::config::Kubeconfig::read().context("reading the kubeconfig")?,
    };
    let current = config
        .current_context
        .as_deref()
        .context("the kubeconfig has no current context")?;
    let cluster = config
        .contexts
        .iter()
        .find(|named| named.name == current)
        .and_then(|named| named.context.as_ref())
        .map(|context| context.cluster.as_str())
        .with_context(|| format!("the kubeconfig has no context {current}"))?;
    config
        .clusters
        .iter()
        .find(|named| named.name == cluster)
        .and_then(|named| named.cluster.as_ref())
        .and_then(|cluster| cluster.server.clone())
        .with_context(|| format!("the kubeconfig names no server for cluster {cluster}"))
}

/// The routes of power controllers: power to `system:masters` and the controllers, the
/// simulated faults to `system:masters` only.
fn power_routes(power: axum::Router, faults: axum::Router) -> axum::Router {
    authorize(
        power,
        Rule::MastersOrControllers,
        "use the power controller",
    )
    .merge(authorize(faults, Rule::Masters, "inject power faults"))
}

/// The name of the `index`th simulated sled (1-based).
pub fn sled_name(index: usize) -> String {
    format!("sled-{index}")
}

/// How each sled's agent reaches the API server.
pub enum SledClients {
    /// All sleds with one client.
    Shared(kube::Client),
    /// Sled `NAME` with the identity in `DIR/node-NAME.kubeconfig` (`corral certs --node`).
    Dir(PathBuf),
}

impl SledClients {
    async fn client(&self, sled: &str) -> anyhow::Result<kube::Client> {
        match self {
            SledClients::Shared(client) => Ok(client.clone()),
            SledClients::Dir(dir) => {
                let path = dir.join(format!("node-{sled}.kubeconfig"));
                Ok(corral_client::connect(Some(&path))
                    .await
                    .with_context(|| format!("the identity of {sled}"))?)
            }
        }
    }
}

/// Starts `count` simulated sleds under `data_dir/sleds/NAME`, each with a fault API on a free
/// loopback port served as `security` says and its agent's own client (`agents`), and
/// registers their power controllers (served at `power_url`) with `client`.
#[allow(clippy::too_many_arguments)]
pub async fn start_sleds(
    client: &kube::Client,
    (agents, security): (&SledClients, &SledSecurity),
    count: usize,
    data_dir: &Path,
    sled: &SledArgs,
    mode: StartMode,
    power_url: Option<&str>,
) -> anyhow::Result<PowerControllers<SledHandle>> {
    let controllers = PowerControllers::default();
    for index in 1..=count {
        let name = sled_name(index);
        let dir = data_dir.join("sleds").join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut config = sled.sled_config(&agents.client(&name).await?, &name, &dir);
        config.fault_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.endpoints = security.sled(&name)?;
        config.agent.power_controller_url = power_url.map(|url| power_controller_url(url, &name));
        config.agent.failure_domain = Some(format!("shelf-{}", (index - 1) / 8 + 1));
        if let Some(url) = &config.agent.power_controller_url {
            point_at_power_controller(client, &name, url).await?;
        }
        let handle = SimSled::start(config, mode)
            .await
            .with_context(|| format!("starting simulated sled {name}"))?;
        controllers.insert(handle);
    }
    Ok(controllers)
}

/// [`point_at_power_controller`] until it succeeds, backing off up to 5 s between tries.
async fn keep_pointing_at_power_controller(client: kube::Client, sled: String, url: String) {
    let mut backoff = std::time::Duration::from_millis(200);
    while let Err(error) = point_at_power_controller(&client, &sled, &url).await {
        tracing::warn!(%sled, %error, ?backoff, "pointing the Sled at its power controller");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Sets `spec.powerController` of an existing Sled to `url`. The power controllers of
/// simulated sleds are this process's (their port changes from one start to the next), so it
/// keeps the inventory true; a Sled that does not exist yet gets the URL when its agent
/// registers it.
async fn point_at_power_controller(
    client: &kube::Client,
    name: &str,
    url: &str,
) -> anyhow::Result<()> {
    let sleds: kube::Api<corral_crds::Sled> = kube::Api::all(client.clone());
    let Some(sled) = sleds.get_opt(name).await? else {
        return Ok(());
    };
    if sled.spec.power_controller.as_deref() == Some(url) {
        return Ok(());
    }
    let patch = serde_json::json!({"spec": {"powerController": url}});
    sleds
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("recording the power controller of {name}"))?;
    Ok(())
}

/// Serves the power controllers of `controllers` on `listener` until `stop`, with the faults
/// they serve for their simulated sleds (a hang, a power controller that does not answer).
pub async fn serve_power(
    listener: tokio::net::TcpListener,
    controllers: PowerControllers<SledHandle>,
    endpoints: Endpoints,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = power_routes(
        corral_node_agent::power::router(controllers.clone()),
        corral_node_agent::sim::power_faults::router(controllers),
    );
    corral_node_agent::http::serve(listener, router, endpoints, stop).await
}

async fn shutdown_sleds(controllers: &PowerControllers<SledHandle>) {
    let sleds: Vec<SledHandle> = controllers.sleds();
    futures::future::join_all(sleds.iter().map(|s| s.shutdown())).await;
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the store, the sleds' machines and journals, and the kubeconfig live.
    #[arg(long, default_value = ".corral")]
    data_dir: PathBuf,
    /// Address of the API server.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// A directory of further CustomResourceDefinition YAML to serve, besides Corral's own kinds.
    #[arg(long)]
    crds: Option<PathBuf>,
    /// How many simulated sleds to run.
    #[arg(long, default_value_t = 8)]
    sleds: usize,
    /// Where to serve `/debug/controllers` (each controller's last outcome, errors, work
    /// queued); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    debug_listen: SocketAddr,
    #[command(flatten)]
    sled: SledArgs,
}

/// `corral up`: the API server on SQLite, the controllers and the simulated sleds, in one
/// process. Every start powers the sleds on afresh: restarting is a cold start of the rack.
pub async fn up(mut args: UpArgs) -> anyhow::Result<()> {
    // Everything of the rack lives in this process; so do the QEMU processes of its sleds.
    args.sled.vmms_die_with.get_or_insert(std::process::id());
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let pki = data_dir.join("pki");
    let mut certs = CertsArgs {
        dir: pki.clone(),
        servers: vec![server_url(args.listen)],
        hosts: Vec::new(),
        nodes: (1..=args.sleds).map(sled_name).collect(),
        users: Vec::new(),
        etcd_members: Vec::new(),
    };
    certs::make(&certs)?;
    let apiserver = ApiserverArgs {
        listen: args.listen,
        store: corral_store::StoreConfig::Sqlite {
            path: data_dir.join("store.db"),
        },
        etcd_prefix: "/corral".into(),
        etcd_cafile: None,
        etcd_certfile: None,
        etcd_keyfile: None,
        crds: args.crds,
        compaction_interval: Duration::from_secs(300),
        bookmark_interval: Duration::from_secs(60),
        limits: LimitArgs::default(),
        audit: AuditArgs::at(data_dir.join("audit.log")),
        security: SecurityArgs {
            pki: Some(pki.clone()),
            ..SecurityArgs::default()
        },
    };
    let stop = CancellationToken::new();
    let (address, apiserver_task) = start_apiserver(apiserver, stop.clone()).await?;
    if [server_url(address)] != certs.servers.as_slice() {
        // A port picked at bind time: the kubeconfigs name the one bound.
        certs.servers = vec![server_url(address)];
        certs::make(&certs)?;
    }
    let kubeconfig_path = data_dir.join("kubeconfig");
    std::fs::copy(pki.join("admin.kubeconfig"), &kubeconfig_path)
        .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
    let client = corral_client::connect(Some(&kubeconfig_path)).await?;
    let controllers_client =
        corral_client::connect(Some(&pki.join("controllers.kubeconfig"))).await?;

    let controllers_stop = CancellationToken::new();
    let config = corral_controllers::Config {
        power_tls: Some(crate::controllers::power_tls(&pki)?),
        ..controllers_config(
            Duration::from_secs(15),
            corral_controllers::DEFAULT_CONCURRENCY,
        )
    };
    let (debug_address, debug) = crate::debug::serve(
        args.debug_listen,
        config.board.clone(),
        controllers_stop.clone(),
    )
    .await?;
    let controllers = tokio::spawn(corral_controllers::run(
        controllers_client,
        config,
        controllers_stop.clone(),
    ));

    let power_listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("binding the power controllers' port")?;
    let power_url = format!("https://{}", power_listener.local_addr()?);
    let security = SledSecurity::Pki(pki.clone());
    let sleds = start_sleds(
        &client,
        (&SledClients::Dir(pki.clone()), &security),
        args.sleds,
        &data_dir,
        &args.sled,
        StartMode::ColdStart,
        Some(&power_url),
    )
    .await?;
    let power_stop = CancellationToken::new();
    let power = tokio::spawn(serve_power(
        power_listener,
        sleds.clone(),
        security.power_controllers()?,
        power_stop.clone(),
    ));

    let machines = match args.sled.hypervisor {
        HypervisorKind::Sim => "simulated sleds".to_string(),
        HypervisorKind::Qemu => format!(
            "sleds of QEMU processes ({})",
            args.sled.accel.accel().as_str()
        ),
    };
    println!(
        "Corral is up: API server at https://{address}, {} {machines} (power controllers at {power_url}), data in {}",
        args.sleds,
        data_dir.display()
    );
    println!("What each controller did: http://{debug_address}/debug/controllers");
    println!();
    println!("Next, in another terminal:");
    println!("  export KUBECONFIG={}", kubeconfig_path.display());
    println!("  corralctl get sleds");
    println!("  corralctl apply -f examples/web.yaml");
    println!(
        "  corralctl wait --for=condition=Running instance/web-1 instance/web-2 instance/web-3"
    );
    println!("  kubectl get instances");
    println!();
    println!(
        "Ctrl-C stops; running `corral up` again resumes: every Instance that should run comes back."
    );

    shutdown_signal().await;
    shutdown_sleds(&sleds).await;
    power_stop.cancel();
    controllers_stop.cancel();
    let _ = controllers.await;
    let _ = debug.await;
    let _ = power.await;
    stop.cancel();
    apiserver_task.await??;
    Ok(())
}

#[derive(clap::Args)]
pub struct NodeAgentArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// With --power-listen: the identity that records the power controller's address in the
    /// Sled's spec (inventory an agent may not write itself; default: --kubeconfig).
    #[arg(long)]
    inventory_kubeconfig: Option<PathBuf>,
    /// The sled this agent runs.
    #[arg(long)]
    sled: String,
    /// Where the sled's journal and simulated machine live.
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the fault-injection API listens.
    #[arg(long)]
    fault_listen: Option<SocketAddr>,
    /// Where this sled's power controller listens (`GET/POST /power`, and the faults it serves:
    /// `POST /hang`, `/resume`, `/power-controller/stop-answering`, `/power-controller/answer`).
    #[arg(long)]
    power_listen: Option<SocketAddr>,
    /// Power-cycle the machine first (its VMMs are gone; a new epoch), instead of resuming it.
    #[arg(long)]
    cold_start: bool,
    /// The failure domain recorded on the Sled when the agent registers it.
    #[arg(long)]
    failure_domain: Option<String>,
    /// Labels (`key=value`) recorded on the Sled when the agent registers it.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[command(flatten)]
    endpoints: EndpointArgs,
    #[command(flatten)]
    sled_args: SledArgs,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("invalid label {text:?} (use key=value)"))
}

/// `corral node-agent`: one simulated sled in this process.
pub async fn node_agent(args: NodeAgentArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let client = corral_client::connect(args.kubeconfig.as_deref()).await?;
    let mut config = args
        .sled_args
        .sled_config(&client, &args.sled, &args.data_dir);
    let security = args.endpoints.security(args.kubeconfig.as_deref())?;
    config.fault_listen = args.fault_listen;
    config.endpoints = security.sled(&args.sled)?;
    config.agent.failure_domain = args.failure_domain;
    config.agent.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    let power_listener = match args.power_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?,
        ),
        None => None,
    };
    let power_endpoints = security.power_controllers()?;
    if let Some(listener) = &power_listener {
        let url = format!("{}://{}", power_endpoints.scheme(), listener.local_addr()?);
        // The API server may be down while the sled boots: the sled comes up anyway, and its
        // Sled learns the address once the API answers.
        let inventory = match &args.inventory_kubeconfig {
            Some(path) => corral_client::connect(Some(path)).await?,
            None => client.clone(),
        };
        tokio::spawn(keep_pointing_at_power_controller(
            inventory,
            args.sled.clone(),
            url.clone(),
        ));
        config.agent.power_controller_url = Some(url);
    }
    let mode = if args.cold_start {
        StartMode::ColdStart
    } else {
        StartMode::Resume
    };
    let sled = SimSled::start(config, mode).await?;
    tracing::info!(sled = %args.sled, fault = ?sled.fault_address(), "node-agent running");
    let stop = CancellationToken::new();
    let power = power_listener.map(|listener| {
        let router = power_routes(
            corral_node_agent::power::sled_router(sled.clone()),
            corral_node_agent::sim::power_faults::sled_router(sled.clone()),
        );
        let serve = corral_node_agent::http::serve(listener, router, power_endpoints, stop.clone());
        tokio::spawn(serve)
    });
    shutdown_signal().await;
    sled.shutdown().await;
    stop.cancel();
    if let Some(power) = power {
        let _ = power.await;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PowerSimArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// How many simulated sleds this process hosts (`sled-1` ... `sled-N`).
    #[arg(long, default_value_t = 8)]
    sleds: usize,
    /// Each sled's agent uses its own identity, `DIR/node-SLED.kubeconfig` (`corral certs
    /// --dir DIR --node SLED`); without it every agent uses --kubeconfig.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Where the sleds' machines and journals live (`DIR/sleds/NAME`).
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the power controllers listen (`/sleds/NAME/power`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Power-cycle every machine first (a cold start of these sleds).
    #[arg(long)]
    cold_start: bool,
    #[command(flatten)]
    endpoints: EndpointArgs,
    #[command(flatten)]
    sled: SledArgs,
}

/// `corral power-sim`: many simulated sleds (machines, agents) and their power controllers.
pub async fn power_sim(mut args: PowerSimArgs) -> anyhow::Result<()> {
    // The machines it simulates are its own: their QEMU processes end with it.
    args.sled.vmms_die_with.get_or_insert(std::process::id());
    let client = corral_client::connect(args.kubeconfig.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let security = args.endpoints.security(args.kubeconfig.as_deref())?;
    let power_endpoints = security.power_controllers()?;
    let url = format!("{}://{}", power_endpoints.scheme(), listener.local_addr()?);
    let mode = if args.cold_start {
        StartMode::ColdStart
    } else {
        StartMode::Resume
    };
    let agents = match &args.credentials {
        Some(dir) => SledClients::Dir(dir.clone()),
        None => SledClients::Shared(client.clone()),
    };
    let sleds = start_sleds(
        &client,
        (&agents, &security),
        args.sleds,
        &args.data_dir,
        &args.sled,
        mode,
        Some(&url),
    )
    .await?;
    tracing::info!(sleds = args.sleds, power = %url, "power-sim running");
    println!("power controllers at {url}");
    let stop = CancellationToken::new();
    let power = tokio::spawn(serve_power(
        listener,
        sleds.clone(),
        power_endpoints,
        stop.clone(),
    ));
    shutdown_signal().await;
    shutdown_sleds(&sleds).await;
    stop.cancel();
    let _ = power.await;
    Ok(())
}

/// The URL of an API server listening on `address` (a wildcard address is reached on loopback).
fn server_url(address: SocketAddr) -> String {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("https://{address}")
}
