//! The default admission rules — the fence tokens (`admission/fence.rs`) and the annotations
//! read as settings (`admission/annotations.rs`) — as a client sees them: a real API
//! server with its default rules and Corral's own kinds, on a loopback port over a real SQLite
//! file or a real etcd, written through kube-rs the way node-agents and controllers write.
//!
//! Each case runs on both backends. After every refusal the object is read back: a refused
//! write changes nothing (same resourceVersion, same status).

use std::time::Duration;

use corral_apiserver::resource::Registry;
use corral_apiserver::{ApiServer, Config, Running};
use corral_crds::{Sled, Vmm};
use corral_store::testing::EtcdServer;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// How long any one request may take.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Etcd,
}

/// A server with the default configuration (so the default admission rules) serving Corral's
/// kinds, and a kube-rs client of it. Dropping it stops the server.
struct Server {
    client: Client,
    running: Option<Running>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// The bearer token of `admin` in `system:masters`.
const TOKEN: &str = "fence-admin";

impl Server {
    async fn start(backend: Backend) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store_config = match backend {
            Backend::Sqlite => format!("sqlite:{}", dir.path().join("store.db").display())
                .parse()
                .expect("a SQLite store URL"),
            Backend::Etcd => EtcdServer::shared()
                .await
                .expect("starting etcd")
                .config(&format!("/fence-{}", rand::random::<u64>())),
        };
        let store = corral_store::open(&store_config)
            .await
            .expect("opening the store");
        let registry = Registry::load_with(corral_crds::MANIFESTS, None).expect("Corral's CRDs");
        let tokens = corral_apiserver::auth::TokenFile::parse(&format!(
            "{TOKEN},admin,admin,system:masters"
        ))
        .expect("a token line");
        let config = Config {
            authentication: corral_apiserver::auth::Authentication {
                tokens: Some(std::sync::Arc::new(tokens)),
            },
            ..Config::default()
        };
        let running = ApiServer::start(registry, store, config)
            .await
            .expect("starting the API server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(corral_apiserver::serve(
            listener,
            running.server.clone(),
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {TOKEN}\n"
        ))
        .expect("a kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a client configuration");
        let client = Client::try_from(config).expect("a kube client");
        Server {
            client,
            running: Some(running),
            stop: Some(stop),
            serving: Some(serving),
            _dir: dir,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serving) = self.serving.take() {
            let _ = serving.await;
        }
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    fn sleds(&self) -> Api<Sled> {
        Api::all(self.client.clone())
    }

    fn vmms(&self) -> Api<Vmm> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates Sled `name` and sets its `status.epoch`.
    async fn sled_at(&self, name: &str, epoch: u64) -> Sled {
        let sled: Sled = typed(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Sled",
            "metadata": {"name": name}, "spec": {},
        }));
        within(self.sleds().create(&PostParams::default(), &sled))
            .await
            .expect("creating a sled");
        within(self.sleds().patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"epoch": epoch, "vmms": 1}})),
        ))
        .await
        .expect("setting the sled's epoch")
    }

    /// Creates Vmm `name` in `default` placed on `sled` at `placed_epoch`.
    async fn vmm_on(&self, name: &str, sled: &str, placed_epoch: u64) -> Vmm {
        let vmm: Vmm = typed(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Vmm",
            "metadata": {"name": name},
            "spec": {"instance": "web", "sled": sled, "sledEpoch": placed_epoch,
                     "resources": {"cpus": 2, "memoryMiB": 2048}, "image": "debian-12"},
        }));
        within(self.vmms().create(&PostParams::default(), &vmm))
            .await
            .expect("creating a vmm")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = &self.running {
            running.server.shutdown.cancel();
        }
    }
}

fn typed<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("a well-formed object")
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("the request did not finish in time")
}

/// The `Status` a refused call got; panics if the call succeeded or failed otherwise.
#[track_caller]
fn refusal<T: std::fmt::Debug>(result: kube::Result<T>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Asserts a 409 `Conflict` whose first cause names `field` and whose message holds every one
/// of `words`.
#[track_caller]
fn assert_fenced<T: std::fmt::Debug>(result: kube::Result<T>, field: &str, words: &[&str]) {
    let status = refusal(result);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "Conflict"),
        "{status:?}"
    );
    let causes = status.details.as_ref().map(|d| d.causes.clone());
    assert_eq!(
        causes
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.field.as_str()),
        Some(field),
        "{status:?}"
    );
    for word in words {
        assert!(
            status.message.contains(word),
            "{word:?} is not in {:?}",
            status.message
        );
    }
}

fn sled_epoch(sled: &Sled) -> u64 {
    sled.status.as_ref().map_or(0, |status| status.epoch)
}

fn report_epoch(vmm: &Vmm) -> u64 {
    vmm.status.as_ref().map_or(0, |status| status.sled_epoch)
}

/// A server-side apply of the status of `kind` `name` as `manager`.
fn apply_status(kind: &str, name: &str, status: Value) -> Patch<Value> {
    Patch::Apply(json!({
        "apiVersion": "corral.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name}, "status": status,
    }))
}

fn agent() -> PatchParams {
    PatchParams::apply("node-agent").force()
}

/// Runs `case` on a fresh server of each backend.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                let server = super::Server::start(super::Backend::Sqlite).await;
                super::$case(&server).await;
                server.shutdown().await;
            })*
        }
        mod etcd {
            $(#[tokio::test]
            async fn $case() {
                let server = super::Server::start(super::Backend::Etcd).await;
                super::$case(&server).await;
                server.shutdown().await;
            })*
        }
    };
}

on_both_backends!(
    a_sled_status_that_lowers_the_epoch_is_refused,
    a_sled_write_that_keeps_or_raises_the_epoch_is_admitted,
    a_vmm_report_of_an_ended_sled_life_is_refused,
    a_vmm_report_the_rule_does_not_judge_is_admitted,
    a_fenced_agent_is_refused_on_every_write_and_the_control_plane_is_not,
    a_dirty_rate_that_is_not_a_number_is_refused_and_a_number_is_stored,
);

async fn a_dirty_rate_that_is_not_a_number_is_refused_and_a_number_is_stored(server: &Server) {
    let instances: Api<corral_crds::Instance> = Api::namespaced(server.client.clone(), "default");
    let instance = |rate: &str| -> corral_crds::Instance {
        typed(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Instance",
            "metadata": {"name": "web", "annotations": {"corral.dev/dirty-rate": rate}},
            "spec": {"cpus": 1, "memoryMiB": 256, "image": "corral-guest"},
        }))
    };
    for bad in ["fast", "-1", "1.5", ""] {
        let status =
            refusal(within(instances.create(&PostParams::default(), &instance(bad))).await);
        assert_eq!(
            (status.code, status.reason.as_str()),
            (422, "Invalid"),
            "{status:?}"
        );
        let field = status
            .details
            .as_ref()
            .and_then(|d| d.causes.first())
            .map(|c| c.field.clone());
        assert_eq!(
            field.as_deref(),
            Some("metadata.annotations[corral.dev/dirty-rate]"),
            "{status:?}"
        );
        assert!(
            within(instances.get_opt("web")).await.unwrap().is_none(),
            "nothing stored"
        );
    }
    let stored = within(instances.create(&PostParams::default(), &instance("104857600")))
        .await
        .expect("a whole number is admitted");
    assert_eq!(
        stored
            .annotations()
            .get("corral.dev/dirty-rate")
            .map(String::as_str),
        Some("104857600")
    );
    let status = refusal(
        within(instances.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"corral.dev/dirty-rate": "lots"}}})),
        ))
        .await,
    );
    assert_eq!(status.code, 422, "{status:?}");
    let unchanged = within(instances.get("web")).await.unwrap();
    assert_eq!(
        unchanged.resource_version(),
        stored.resource_version(),
        "nothing changed"
    );
}

async fn a_sled_status_that_lowers_the_epoch_is_refused(server: &Server) {
    let sleds = server.sleds();
    let before = server.sled_at("s1", 5).await;
    let words = ["status.epoch never goes down", "s1", "epoch 5", "carries 4"];

    let lowered = Patch::Merge(json!({"status": {"epoch": 4}}));
    assert_fenced(
        within(sleds.patch_status("s1", &PatchParams::default(), &lowered)).await,
        "status.epoch",
        &words,
    );
    let mut replaced = before.clone();
    replaced.status.as_mut().unwrap().epoch = 4;
    assert_fenced(
        within(sleds.replace_status("s1", &PostParams::default(), &replaced)).await,
        "status.epoch",
        &words,
    );
    let json_patch: Patch<Value> = Patch::Json(
        serde_json::from_value(json!([{"op": "replace", "path": "/status/epoch", "value": 4}]))
            .unwrap(),
    );
    assert_fenced(
        within(sleds.patch_status("s1", &PatchParams::default(), &json_patch)).await,
        "status.epoch",
        &words,
    );
    assert_fenced(
        within(sleds.patch_status(
            "s1",
            &agent(),
            &apply_status("Sled", "s1", json!({"epoch": 4})),
        ))
        .await,
        "status.epoch",
        &words,
    );
    // Erasing the token lowers it to 0.
    let erased = Patch::Merge(json!({"status": {"epoch": null}}));
    assert_fenced(
        within(sleds.patch_status("s1", &PatchParams::default(), &erased)).await,
        "status.epoch",
        &["carries 0"],
    );
    // A dry run is refused too.
    assert_fenced(
        within(sleds.patch_status("s1", &PatchParams::default().dry_run(), &lowered)).await,
        "status.epoch",
        &words,
    );

    let after = within(sleds.get("s1")).await.unwrap();
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(
        after.status, before.status,
        "a refused write changed the sled"
    );
}

async fn a_sled_write_that_keeps_or_raises_the_epoch_is_admitted(server: &Server) {
    let sleds = server.sleds();
    server.sled_at("s1", 5).await;

    // A merge patch that does not touch the epoch (the agent's V2P acknowledgements, its
    // conditions, its counts).
    let counted = within(sleds.patch_status(
        "s1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"vmms": 3}})),
    ))
    .await
    .expect("a status write that leaves the epoch alone");
    assert_eq!(sled_epoch(&counted), 5);
    assert_eq!(counted.status.as_ref().unwrap().vmms, 3);

    // The same epoch, written whole.
    let mut same = counted.clone();
    same.status.as_mut().unwrap().vmms = 4;
    let same = within(sleds.replace_status("s1", &PostParams::default(), &same))
        .await
        .expect("a replace at the same epoch");
    assert_eq!(sled_epoch(&same), 5);

    // A higher epoch: a boot, or a fence.
    let raised = within(sleds.patch_status(
        "s1",
        &agent(),
        &apply_status("Sled", "s1", json!({"epoch": 6})),
    ))
    .await
    .expect("raising the epoch");
    assert_eq!(sled_epoch(&raised), 6);

    // The main resource (a cordon) keeps the stored status.
    let cordoned = within(sleds.patch(
        "s1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"unschedulable": true}})),
    ))
    .await
    .expect("cordoning");
    assert!(cordoned.spec.unschedulable);
    assert_eq!(sled_epoch(&cordoned), 6);
}

async fn a_vmm_report_of_an_ended_sled_life_is_refused(server: &Server) {
    let vmms = server.vmms();
    server.sled_at("s1", 4).await;
    let vmm = server.vmm_on("v1", "s1", 3).await;
    let words = [
        "default/v1",
        "epoch 3 of sled s1",
        "at epoch 4",
        "the sled was fenced or rebooted since",
    ];

    let mut report = vmm.clone();
    report.status = Some(typed(
        json!({"state": "Running", "stateGeneration": 2, "sledEpoch": 3}),
    ));
    assert_fenced(
        within(vmms.replace_status("v1", &PostParams::default(), &report)).await,
        "status.sledEpoch",
        &words,
    );
    assert_fenced(
        within(vmms.patch_status(
            "v1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "Running", "sledEpoch": 3}})),
        ))
        .await,
        "status.sledEpoch",
        &words,
    );
    assert_fenced(
        within(vmms.patch_status(
            "v1",
            &agent(),
            &apply_status("Vmm", "v1", json!({"state": "Running", "sledEpoch": 3})),
        ))
        .await,
        "status.sledEpoch",
        &words,
    );

    let after = within(vmms.get("v1")).await.unwrap();
    assert_eq!(after.resource_version(), vmm.resource_version());
    assert_eq!(after.status, vmm.status, "a refused report changed the vmm");
}

async fn a_vmm_report_the_rule_does_not_judge_is_admitted(server: &Server) {
    let vmms = server.vmms();
    server.sled_at("s1", 4).await;
    server.vmm_on("v1", "s1", 4).await;
    let report = |epoch: u64, generation: u64| {
        Patch::Merge(
            json!({"status": {"state": "Running", "stateGeneration": generation,
                                       "sledEpoch": epoch}}),
        )
    };

    let current = within(vmms.patch_status("v1", &PatchParams::default(), &report(4, 1)))
        .await
        .expect("a report of the sled's current life");
    assert_eq!(report_epoch(&current), 4);
    let higher = within(vmms.patch_status("v1", &PatchParams::default(), &report(5, 2)))
        .await
        .expect("a report from a life the Sled has not shown yet");
    assert_eq!(report_epoch(&higher), 5);
    let unsigned = within(vmms.patch_status("v1", &PatchParams::default(), &report(0, 3)))
        .await
        .expect("a status without sledEpoch is not an agent's report");
    assert_eq!(report_epoch(&unsigned), 0);

    // A Vmm whose Sled does not exist has no token to be checked against.
    server.vmm_on("v2", "nowhere", 1).await;
    let orphan = within(vmms.patch_status("v2", &PatchParams::default(), &report(1, 1)))
        .await
        .expect("a report about a sled that does not exist");
    assert_eq!(report_epoch(&orphan), 1);
}

async fn a_fenced_agent_is_refused_on_every_write_and_the_control_plane_is_not(server: &Server) {
    let (sleds, vmms) = (server.sleds(), server.vmms());
    server.sled_at("s1", 3).await;
    server.vmm_on("v1", "s1", 3).await;
    let agent_report = |generation: u64| {
        apply_status(
            "Vmm",
            "v1",
            json!({"state": "Running", "stateGeneration": generation, "sledEpoch": 3}),
        )
    };
    within(vmms.patch_status("v1", &agent(), &agent_report(1)))
        .await
        .expect("the agent reports while its life lasts");

    // The sled-health controller fences the sled: its epoch rises past the agent's.
    within(sleds.patch_status(
        "s1",
        &PatchParams::apply("sled-health").force(),
        &apply_status("Sled", "s1", json!({"epoch": 4})),
    ))
    .await
    .expect("the fence raises the epoch");

    // The agent comes back and writes as if nothing happened: the same report again, its
    // next one, and its sled's status at its own epoch.
    for generation in [1, 2] {
        assert_fenced(
            within(vmms.patch_status("v1", &agent(), &agent_report(generation))).await,
            "status.sledEpoch",
            &["fenced or rebooted since"],
        );
    }
    assert_fenced(
        within(sleds.patch_status(
            "s1",
            &agent(),
            &apply_status("Sled", "s1", json!({"epoch": 3, "vmms": 1})),
        ))
        .await,
        "status.epoch",
        &["never goes down"],
    );
    let vmm = within(vmms.get("v1")).await.unwrap();
    assert_eq!(vmm.status.as_ref().unwrap().state_generation, 1);

    // Releasing the Vmm is a main-resource write, and is never refused, although its stored
    // status still carries the ended life's epoch.
    let labelled = within(vmms.patch(
        "v1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"released": "true"}}})),
    ))
    .await
    .expect("a main-resource write to a Vmm of a fenced sled");
    assert_eq!(report_epoch(&labelled), 3);
}
