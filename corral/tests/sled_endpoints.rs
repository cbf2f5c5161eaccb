//! The sleds' own endpoints over TLS, with their callers authenticated and authorized
//! (docs/security.md, "The sleds' endpoints"), on a rack of real processes (`corral node-agent`
//! per sled, each with its power controller; `corral certs` issues every certificate):
//!
//! - the fault API answers `401` without a client certificate, `403` to a tenant and to a
//!   sled's agent (naming them), and serves `admin`;
//! - a power controller refuses a sled's agent and serves the controllers' identity, whose
//!   power faults it refuses (those are `admin`'s);
//! - the migration endpoint refuses (`403`) the agent of a sled that is not where the target
//!   Vmm is placed, and `admin`; the agent of that sled gets past authorization (to the
//!   source's own checks);
//! - a target agent refuses a server whose certificate names another sled than the source
//!   (a Sled whose `agentAddress` points elsewhere), and a plain-HTTP address;
//! - a client certificate of another CA does not get through the handshake;
//! - `corral node-agent --insecure-http` refuses to start beside an HTTPS API server.

mod common;

use std::time::Duration;

use corral_client::tls::{KeyPairFiles, client_config, server_config};
use corral_crds::{Instance, InstanceSpec, InstanceState};
use corral_harness::apiserver::request_over_tls;
use corral_harness::tls::ClientTls;
use corral_harness::{Rack, RackSpec, Scratch, SledDoor, Store};
use corral_node_agent::http::Endpoints;
use corral_node_agent::migration::target::ask_source;
use kube::api::{Api, PostParams};

const SLEDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sled_endpoint_serves_only_its_callers() {
    let scratch = Scratch::temporary("corral-sled-endpoints-").expect("a scratch directory");
    let mut spec = RackSpec::for_failures(
        common::corral().to_path_buf(),
        Store::Sqlite(scratch.path().join("store.db")),
        SLEDS,
        Duration::from_secs(20),
        corral_controllers::LEADER_LEASE,
    );
    spec.controllers = 1;
    let mut rack = Rack::new(spec, scratch).expect("a rack");
    rack.start(Duration::from_secs(60))
        .await
        .expect("the rack starts");
    let server = rack.apiserver().base_url();
    let alice = ["--server", &server, "--user", "alice:corral:tenants"];
    certs(rack.apiserver().pki(), &alice);

    fault_api(&rack).await;
    power_api(&rack).await;
    migration_endpoint(&rack).await;
    target_checks_the_source(&rack).await;
    rack.stop(Duration::from_secs(5)).await;
}

/// `METHOD path` on a door of `sled` as `identity`; panics if the request itself fails.
async fn ask(
    rack: &Rack,
    sled: &str,
    door: SledDoor,
    (method, path, body): (&str, &str, &str),
    identity: Option<&str>,
) -> (u16, String) {
    let (status, body) = rack
        .sled_request(sled, door, (method, path, body), identity)
        .await
        .unwrap_or_else(|error| panic!("{method} {path} on {sled} as {identity:?}: {error}"));
    (status, message(&body))
}

/// The message of an `{"error": "..."}` answer; any other body as it is.
fn message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value["error"].as_str().map(String::from))
        .unwrap_or_else(|| body.to_string())
}

async fn fault_api(rack: &Rack) {
    let heartbeat = ("GET", "/heartbeat", "");
    // No client certificate: the handshake succeeds (the server is the sled's), the request
    // is refused.
    let (address, _) = rack
        .door("sled-1", SledDoor::Agent)
        .await
        .expect("the fault API's address");
    let anonymous = ClientTls::from_pki(rack.apiserver().pki(), None).expect("the rack's CA");
    let (status, body) = request_over_tls(&anonymous, address, "GET", "/heartbeat", "")
        .await
        .expect("an answer");
    assert_eq!(status, 401, "{body}");

    let (status, body) = ask(rack, "sled-1", SledDoor::Agent, heartbeat, Some("alice")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body, "Forbidden: user \"alice\" may not use the fault-injection API",
        "the refusal names the user"
    );
    let crash = ("POST", "/heartbeat/stop", "");
    let (status, body) = ask(rack, "sled-1", SledDoor::Agent, crash, Some("node-sled-1")).await;
    assert_eq!(status, 403, "even the sled's own agent: {body}");
    assert!(body.contains("system:node:sled-1"), "{body}");

    let (status, body) = ask(rack, "sled-1", SledDoor::Agent, heartbeat, None).await;
    assert_eq!((status, body.as_str()), (200, "{\"paused\":false}"));

    // An `admin` of another CA, offered by a client that trusts the rack's CA: the sled ends
    // the handshake.
    let other = rack.dir().join("other-pki");
    certs(&other, &[]);
    let mixed = rack.dir().join("mixed-pki");
    std::fs::create_dir_all(&mixed).expect("a directory");
    std::fs::copy(rack.apiserver().pki().join("ca.crt"), mixed.join("ca.crt")).expect("the CA");
    for file in ["admin.crt", "admin.key"] {
        std::fs::copy(other.join(file), mixed.join(file)).expect("the other admin");
    }
    let foreign = ClientTls::from_pki(&mixed, Some("admin")).expect("the mixed identity");
    let refused = request_over_tls(&foreign, address, "GET", "/heartbeat", "").await;
    assert!(refused.is_err(), "{refused:?}");
}

/// `corral certs --dir DIR` with `extra` flags.
fn certs(dir: &std::path::Path, extra: &[&str]) {
    let output = std::process::Command::new(common::corral())
        .args(["certs", "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("corral certs runs");
    assert!(output.status.success(), "corral certs: {output:?}");
}

#[test]
fn plain_http_sleds_are_refused_beside_an_https_api_server() {
    let scratch = Scratch::temporary("corral-insecure-sled-").expect("a scratch directory");
    let pki = scratch.path().join("pki");
    certs(&pki, &["--node", "sled-1"]);
    let output = std::process::Command::new(common::corral())
        .args([
            "node-agent",
            "--sled",
            "sled-1",
            "--insecure-http",
            "--data-dir",
        ])
        .arg(scratch.path().join("sled-1"))
        .arg("--kubeconfig")
        .arg(pki.join("node-sled-1.kubeconfig"))
        .output()
        .expect("corral node-agent runs");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("only beside an API server run with --insecure-http"),
        "{stderr}"
    );
}

async fn power_api(rack: &Rack) {
    let power = ("GET", "/power", "");
    let (status, body) = ask(rack, "sled-2", SledDoor::Power, power, Some("node-sled-2")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("system:node:sled-2"), "{body}");
    let (status, body) = ask(rack, "sled-2", SledDoor::Power, power, Some("controllers")).await;
    assert_eq!((status, body.as_str()), (200, "{\"state\":\"On\"}"));
    let hang = ("POST", "/hang", "");
    let (status, body) = ask(rack, "sled-2", SledDoor::Power, hang, Some("controllers")).await;
    assert_eq!(status, 403, "power faults are admin's: {body}");
    assert!(body.contains("system:corral:controllers"), "{body}");
    assert_eq!(rack.power_reads("sled-2").await.as_deref(), Ok("On"));
}

async fn migration_endpoint(rack: &Rack) {
    let instances: Api<Instance> = Api::namespaced(rack.client().clone(), "default");
    let instance = Instance::new(
        "tls-web",
        InstanceSpec {
            cpus: 1,
            memory_mib: 256,
            image: "debian-12".into(),
            ..Default::default()
        },
    );
    instances
        .create(&PostParams::default(), &instance)
        .await
        .expect("creating an instance");
    let (status, _) = rack
        .wait_for("tls-web Running", Duration::from_secs(45), async || {
            let instance = instances
                .get("tls-web")
                .await
                .map_err(|error| error.to_string())?;
            let status = instance.status.unwrap_or_default();
            match (status.state, status.sled, status.active_vmm) {
                (Some(InstanceState::Running), Some(sled), Some(vmm)) => Ok((sled, vmm)),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    let (sled, vmm) = status;
    let other = if sled == "sled-1" { "sled-2" } else { "sled-1" };
    // A request naming the running Vmm as its own target: only the agent of the sled that Vmm
    // is placed on may make it.
    let request = |target_sled: &str| {
        serde_json::json!({
            "migration": "tls-web-m",
            "namespace": "default",
            "sourceVmm": vmm,
            "targetVmm": vmm,
            "targetSled": target_sled,
        })
        .to_string()
    };
    let from_other = request(other);
    let post = ("POST", "/migrations", from_other.as_str());
    let identity = format!("node-{other}");
    let (status, body) = ask(rack, &sled, SledDoor::Agent, post, Some(&identity)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("system:node:{other}")), "{body}");
    let (status, body) = ask(rack, &sled, SledDoor::Agent, post, None).await;
    assert_eq!(status, 403, "not even admin: {body}");

    let (address, _) = rack
        .door(&sled, SledDoor::Agent)
        .await
        .expect("the agent's address");
    let anonymous = ClientTls::from_pki(rack.apiserver().pki(), None).expect("the rack's CA");
    let (status, body) = request_over_tls(&anonymous, address, "POST", "/migrations", &from_other)
        .await
        .expect("an answer");
    assert_eq!(status, 401, "{body}");

    // The agent of the Vmm's own sled is authorized; the source then finds that the Instance
    // names no such migration.
    let own = request(&sled);
    let post = ("POST", "/migrations", own.as_str());
    let identity = format!("node-{sled}");
    let (status, body) = ask(rack, &sled, SledDoor::Agent, post, Some(&identity)).await;
    assert_eq!(status, 409, "{body}");
}

async fn target_checks_the_source(rack: &Rack) {
    let pki = rack.apiserver().pki();
    let ca = pki.join("ca.crt");
    let endpoints = Endpoints::Tls {
        server: server_config(&KeyPairFiles::in_dir(pki, "node-sled-3-serving"), &ca)
            .expect("sled-3's serving certificate"),
        client: client_config(&ca, Some(&KeyPairFiles::in_dir(pki, "node-sled-3")))
            .expect("sled-3's identity"),
    };
    let sled_2 = rack
        .agents
        .iter()
        .find(|agent| agent.sled == "sled-2")
        .expect("sled-2's agent")
        .fault;
    let body = bytes::Bytes::from_static(b"{}");
    // sled-1's address pointed at sled-2's agent: the target does not even send its request.
    let error = ask_source(
        &endpoints,
        &format!("https://{sled_2}"),
        "sled-1",
        body.clone(),
    )
    .await
    .err()
    .expect("a server naming another sled is refused");
    assert!(
        error.contains("is system:node:sled-2, not system:node:sled-1"),
        "{error}"
    );
    let error = ask_source(
        &endpoints,
        &format!("http://{sled_2}"),
        "sled-2",
        body.clone(),
    )
    .await
    .err()
    .expect("a plain-HTTP address is refused");
    assert!(error.contains("over TLS only"), "{error}");
    // The right sled: the request goes through, and the source answers it (400: the body is
    // not a transfer request).
    let answer = ask_source(&endpoints, &format!("https://{sled_2}"), "sled-2", body)
        .await
        .unwrap_or_else(|error| panic!("asking sled-2: {error}"));
    assert_eq!(answer.response.status(), 400);
}
