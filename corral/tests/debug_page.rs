//! `corral controllers --debug-listen`: the real binary, against a real API server, serves
//! each controller's outcomes at `/debug/controllers`, and they are the reconciles that
//! happened; and `/metrics`, whose series count them too and say the process leads.

mod common;

use std::time::Duration;

use corral_crds::{Instance, InstanceSpec};
use corral_e2e::http::Http;
use corral_harness::{Process, Scratch, wait_for};
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;

use common::{Backend, corral, start_apiserver};

/// Every wait gives up after this long.
const BOUND: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_controllers_serve_what_each_reconcile_came_to() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start_apiserver(Backend::Sqlite, &[]).await;
    let scratch = Scratch::temporary("corral-debug-").expect("a temporary directory");
    let debug = corral_harness::apiserver::free_address().expect("a free port");
    let kubeconfig = server.kubeconfig();
    let mut controllers = Process::new(
        "controllers",
        corral(),
        scratch.path().join("controllers.log"),
    );
    controllers
        .start(&[
            "controllers".to_string(),
            "--kubeconfig".to_string(),
            kubeconfig.display().to_string(),
            "--lease-duration".to_string(),
            "4s".to_string(),
            "--debug-listen".to_string(),
            debug.to_string(),
        ])
        .expect("starting corral controllers");

    // An Instance no sled can take (there is none): the instance controller adds its
    // finalizer, then says why it cannot place it.
    let client = corral_client::connect(Some(&kubeconfig))
        .await
        .expect("a client");
    let instances: Api<Instance> = Api::namespaced(client, "default");
    let instance = Instance::new(
        "lonely",
        InstanceSpec {
            cpus: 1,
            memory_mib: 512,
            image: "debian-12".into(),
            ..Default::default()
        },
    );
    instances
        .create(&PostParams::default(), &instance)
        .await
        .expect("creating an instance");

    let http = Http::new();
    let address = debug.to_string();
    let (report, _) = wait_for("the instance controller's report", BOUND, async || {
        controllers.check_alive().map_err(|e| e.to_string())?;
        let board: Value = http
            .get_json(&address, "/debug/controllers")
            .await
            .map_err(|e| e.to_string())?;
        let report = board["instance"].clone();
        let last = &report["last"];
        let placed_nowhere = last["object"] == "default/lonely"
            && last["outcome"]["result"] == "applied"
            && last["outcome"]["phase"] == "Creating";
        if placed_nowhere {
            Ok(board)
        } else {
            Err(format!("the board says {board}"))
        }
    })
    .await
    .expect("the debug page shows the instance's reconcile");
    let instance = &report["instance"];
    assert_eq!(instance["failed"], 0, "{report}");
    assert!(instance["applied"].as_u64() >= Some(1), "{report}");
    // Unschedulable: every plan asks to look again soon (the instance controller's retry).
    assert_eq!(instance["last"]["outcome"]["requeueMs"], 2000, "{report}");
    assert_eq!(instance["inFlight"], 0, "{report}");

    // The same reconciles as Prometheus series.
    let text = http
        .call("GET", &address, "/metrics", None)
        .await
        .expect("the controllers' metrics");
    let text = String::from_utf8_lossy(&text);
    let sample = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit_once(' '))
            .and_then(|(_, value)| value.parse().ok())
    };
    let applied =
        sample("corral_controller_reconciles_total{controller=\"instance\",result=\"applied\"}")
            .unwrap_or_else(|| panic!("no applied reconciles of the instance controller:\n{text}"));
    assert!(applied >= 1.0, "{text}");
    assert_eq!(sample("corral_controllers_leader "), Some(1.0), "{text}");
    assert!(
        text.contains(
            "corral_controller_reconcile_duration_seconds_bucket{controller=\"instance\""
        ),
        "{text}"
    );
    assert!(
        text.contains("corral_controller_queue_depth{controller=\"instance\"}"),
        "{text}"
    );
    controllers.stop(Duration::from_secs(5)).await;
}
