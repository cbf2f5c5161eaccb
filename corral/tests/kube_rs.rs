//! kube-rs (Client, watcher, reflector, Controller, the finalizer helper) against the real
//! `corral apiserver`, on both backends.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Apiserver, Backend};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{Controller, reflector};
use kube::{Client, CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "test.corral.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
pub struct WidgetSpec {
    pub color: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct WidgetStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(rename = "observedGeneration", skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn widget(name: &str, color: &str) -> Widget {
    Widget::new(
        name,
        WidgetSpec {
            color: color.into(),
            size: None,
        },
    )
}

/// A client from the server's `admin` kubeconfig: HTTPS, the rack's CA, a client certificate.
async fn client(server: &Apiserver) -> Client {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(server.kubeconfig()).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client configuration");
    assert_eq!(config.cluster_url.scheme_str(), Some("https"));
    Client::try_from(config).expect("kube client")
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn crud(server: &Apiserver) {
    let api: Api<Widget> = Api::namespaced(client(server).await, "default");
    let created = api
        .create(&PostParams::default(), &widget("crud", "red"))
        .await
        .unwrap();
    assert_eq!(created.spec.size, Some(10), "defaulted by the schema");
    assert_eq!(created.metadata.generation, Some(1));
    let mut got = api.get("crud").await.unwrap();
    got.spec.color = "blue".into();
    let replaced = api
        .replace("crud", &PostParams::default(), &got)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    let stale = api
        .replace("crud", &PostParams::default(), &got)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, kube::Error::Api(ref e) if e.code == 409),
        "{stale:?}"
    );
    let patched = api
        .patch(
            "crud",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"size": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.size, Some(5));
    let applied = api
        .patch("crud", &PatchParams::apply("tester").force(), &Patch::Apply(serde_json::json!({
            "apiVersion": "test.corral.dev/v1", "kind": "Widget", "metadata": {"name": "crud"}, "spec": {"color": "green"}
        })))
        .await
        .unwrap();
    assert_eq!(applied.spec.color, "green");
    let status = api
        .patch_status(
            "crud",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"phase": "Done"}})),
        )
        .await
        .unwrap();
    assert_eq!(status.status.unwrap().phase.as_deref(), Some("Done"));
    assert_eq!(
        status.metadata.generation, applied.metadata.generation,
        "status writes leave generation alone"
    );
    let list = api.list(&ListParams::default().labels("")).await.unwrap();
    assert!(list.items.iter().any(|w| w.name_any() == "crud"));
    let exists = api
        .create(&PostParams::default(), &widget("crud", "red"))
        .await
        .unwrap_err();
    assert!(
        matches!(exists, kube::Error::Api(ref e) if e.reason == "AlreadyExists"),
        "{exists:?}"
    );
    api.delete("crud", &DeleteParams::default()).await.unwrap();
    let gone = api.get("crud").await.unwrap_err();
    assert!(
        matches!(gone, kube::Error::Api(ref e) if e.code == 404),
        "{gone:?}"
    );
}

/// Polls the raw watcher until `done` holds for the reflected names, counting relists.
async fn drive(
    stream: &mut (impl futures::Stream<Item = Result<Event<Widget>, watcher::Error>> + Unpin),
    names: &mut std::collections::BTreeSet<String>,
    inits: &mut usize,
    done: impl Fn(&std::collections::BTreeSet<String>) -> bool,
) {
    let mut pending_init = std::collections::BTreeSet::new();
    while !done(names) {
        match stream.next().await {
            Some(Ok(Event::Init)) => {
                *inits += 1;
                pending_init.clear();
            }
            Some(Ok(Event::InitApply(w))) => {
                pending_init.insert(w.name_any());
            }
            Some(Ok(Event::InitDone)) => *names = std::mem::take(&mut pending_init),
            Some(Ok(Event::Apply(w))) => {
                names.insert(w.name_any());
            }
            Some(Ok(Event::Delete(w))) => {
                names.remove(&w.name_any());
            }
            Some(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            None => panic!("watcher stream ended"),
        }
    }
}

async fn watcher_survives_restart_and_compaction(server: &mut Apiserver) {
    let api: Api<Widget> = Api::namespaced(client(server).await, "default");
    for name in ["a1", "a2"] {
        api.create(&PostParams::default(), &widget(name, "red"))
            .await
            .unwrap();
    }
    let mut stream = Box::pin(watcher::watcher(api.clone(), watcher::Config::default()));
    let mut names = std::collections::BTreeSet::new();
    let mut inits = 0;
    within(
        "initial list",
        drive(&mut stream, &mut names, &mut inits, |n| {
            n.contains("a1") && n.contains("a2")
        }),
    )
    .await;
    assert_eq!(inits, 1);

    // Restart: the watcher resumes (or relists) and sees what was written meanwhile.
    server.restart().await.expect("restarting corral apiserver");
    api.create(&PostParams::default(), &widget("b1", "red"))
        .await
        .unwrap();
    within(
        "watch after restart",
        drive(&mut stream, &mut names, &mut inits, |n| n.contains("b1")),
    )
    .await;

    // Compaction while the watcher is away: it gets 410 Expired and relists.
    server.restart().await.expect("restarting corral apiserver");
    api.create(&PostParams::default(), &widget("c1", "red"))
        .await
        .unwrap();
    api.delete("a1", &DeleteParams::default()).await.unwrap();
    let before = inits;
    let http = reqwest_free_get(
        server,
        "/apis/test.corral.dev/v1/namespaces/default/widgets",
    );
    let rv: i64 = http["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // Wait until history up to the current revision is compacted (compaction interval is 1 s).
    common::wait_until("compaction", Duration::from_secs(30), || {
        let (status, _) = common::http(
            &server,
            "GET",
            &format!(
                "/apis/test.corral.dev/v1/namespaces/default/widgets?resourceVersion={}&resourceVersionMatch=Exact",
                rv - 1
            ),
            &[],
            b"",
        );
        status == 410
    });
    within(
        "relist after compaction",
        drive(&mut stream, &mut names, &mut inits, |n| {
            n.contains("c1") && !n.contains("a1")
        }),
    )
    .await;
    assert!(inits > before, "the watcher relisted after 410 Expired");
}

fn reqwest_free_get(server: &Apiserver, path: &str) -> serde_json::Value {
    let (status, body) = common::http(&server, "GET", path, &[], b"");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn reflector_and_controller(server: &Apiserver) {
    let client = client(server).await;
    let api: Api<Widget> = Api::namespaced(client.clone(), "ctl");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "ctl"}})).unwrap(),
        )
        .await
        .unwrap();

    // Reflector: a local cache that follows the server.
    let (reader, writer) = reflector::store();
    let reflected = reflector::reflector(
        writer,
        watcher::watcher(api.clone(), watcher::Config::default()),
    );
    let reflecting = tokio::spawn(reflected.try_for_each(|_| async { Ok(()) }));
    reader.wait_until_ready().await.unwrap();

    // Controller with the finalizer helper.
    const FINALIZER: &str = "test.corral.dev/cleanup";
    let cleanups = Arc::new(AtomicUsize::new(0));
    let reconcile = {
        let api = api.clone();
        let cleanups = cleanups.clone();
        move |widget: Arc<Widget>, _ctx: Arc<()>| {
            let api = api.clone();
            let cleanups = cleanups.clone();
            async move {
                finalizer(&api, FINALIZER, widget, |event| async {
                    match event {
                        Finalizer::Apply(w) => {
                            let status = serde_json::json!({"status": {"phase": "Reconciled", "observedGeneration": w.metadata.generation}});
                            api.patch_status(&w.name_any(), &PatchParams::default(), &Patch::Merge(status)).await?;
                            Ok::<Action, kube::Error>(Action::await_change())
                        }
                        Finalizer::Cleanup(_) => {
                            cleanups.fetch_add(1, Ordering::SeqCst);
                            Ok(Action::await_change())
                        }
                    }
                })
                .await
            }
        }
    };
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_millis(200)),
            Arc::new(()),
        )
        .for_each(|_| async {});
    let controlling = tokio::spawn(controller);

    api.create(&PostParams::default(), &widget("managed", "red"))
        .await
        .unwrap();
    within("reconciled with finalizer", async {
        loop {
            let w = api.get("managed").await.unwrap();
            if w.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Reconciled")
                && w.finalizers().contains(&FINALIZER.to_string())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    within("reflector sees it", async {
        while reader
            .get(&reflector::ObjectRef::new("managed").within("ctl"))
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    api.delete("managed", &DeleteParams::default())
        .await
        .unwrap();
    within("finalized and gone", async {
        while api.get_opt("managed").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(cleanups.load(Ordering::SeqCst), 1);
    within("reflector drops it", async {
        while reader
            .get(&reflector::ObjectRef::new("managed").within("ctl"))
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    controlling.abort();
    reflecting.abort();
}

async fn scenario(backend: Backend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = common::start_apiserver(
        backend,
        &["--compaction-interval", "1s", "--bookmark-interval", "1s"],
    )
    .await;
    crud(&server).await;
    reflector_and_controller(&server).await;
    watcher_survives_restart_and_compaction(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_works_against_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_works_against_etcd() {
    scenario(Backend::Etcd).await;
}

/// `a`'s admin kubeconfig, naming `b` too (the `corral.dev/servers` extension of
/// `corral certs --server A --server B`).
fn kubeconfig_of_both(a: &Apiserver, b: &Apiserver) -> std::path::PathBuf {
    let mut kubeconfig = kube::config::Kubeconfig::read_from(a.kubeconfig()).expect("a kubeconfig");
    let cluster = kubeconfig.clusters[0].cluster.as_mut().expect("a cluster");
    cluster.extensions = Some(vec![kube::config::NamedExtension {
        name: corral_client::failover::SERVERS_EXTENSION.into(),
        extension: serde_json::json!({"servers": [a.base_url(), b.base_url()]}),
    }]);
    let path = a.dir().join("both.kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&kubeconfig).unwrap()).unwrap();
    path
}

/// Corral's client of two API servers keeps working while either dies (SIGKILL), and its
/// watcher resumes on the other server from its last resourceVersion, without a relist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_two_servers_fails_over_and_its_watch_resumes_without_a_relist() {
    let mut a = common::start_apiserver(Backend::Etcd, &[]).await;
    let scratch = corral_harness::Scratch::temporary("corral-test-").unwrap();
    let mut b = a.peer(scratch).await.expect("a second API server");
    let client = corral_client::connect(Some(&kubeconfig_of_both(&a, &b)))
        .await
        .expect("a client of both");
    let api: Api<Widget> = Api::namespaced(client, "default");
    let mut stream = Box::pin(watcher::watcher(api.clone(), watcher::Config::default()));
    let mut names = std::collections::BTreeSet::new();
    let mut inits = 0;

    // Each server dies in turn (A comes back before B goes); whichever the client was on,
    // one of the kills is the one it fails over from.
    for (step, name) in ["before", "a-dead", "a-back", "b-dead"]
        .into_iter()
        .enumerate()
    {
        match step {
            1 => a.kill9(),
            2 => a.restart().await.expect("restarting A"),
            3 => b.kill9(),
            _ => {}
        }
        let created = within(
            &format!("creating {name}"),
            api.create(&PostParams::default(), &widget(name, "red")),
        )
        .await
        .unwrap_or_else(|error| panic!("creating {name}: {error}"));
        assert_eq!(created.name_any(), name);
        within(
            &format!("watching {name} arrive"),
            drive(&mut stream, &mut names, &mut inits, |n| n.contains(name)),
        )
        .await;
        let listed = within("listing", api.list(&ListParams::default()))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), step + 1);
    }
    assert_eq!(
        inits, 1,
        "the watch resumed on the other server without a relist"
    );
}
