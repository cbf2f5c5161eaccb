//! etcd over TLS with client certificates (docs/storage.md, "etcd over TLS"): a real etcd that
//! speaks only TLS and asks every client for a certificate its CA signed
//! (`--client-cert-auth`), and the real `corral apiserver` on it with `--etcd-cafile`,
//! `--etcd-certfile` and `--etcd-keyfile`. Writes, lists and watches go through; a client
//! without a certificate, or without TLS, is refused by etcd itself; an API server without its
//! certificate does not start.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use corral_harness::{Apiserver, ApiserverSpec, Scratch, Store};
use corral_store::testing::{EtcdServer, EtcdServerTls};
use corral_store::{EtcdTls, StoreConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

/// The rack's CA with a serving certificate for 127.0.0.1 (etcd's) and a client identity for
/// the API server, as `corral certs` makes them.
fn certificates(dir: &Path) -> EtcdServerTls {
    let made = Command::new(common::corral())
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--user", "apiserver-etcd-client"])
        .output()
        .expect("corral certs");
    assert!(made.status.success(), "{made:?}");
    EtcdServerTls {
        ca: dir.join("ca.crt"),
        serving: (dir.join("apiserver.crt"), dir.join("apiserver.key")),
        client: (
            dir.join("apiserver-etcd-client.crt"),
            dir.join("apiserver-etcd-client.key"),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_stores_in_an_etcd_that_authenticates_its_clients() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let pki = dir.path().join("etcd-pki");
    let tls = certificates(&pki);
    let etcd = EtcdServer::start_tls(tls.clone())
        .await
        .expect("etcd with TLS and client certificates");
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    // etcd refuses a client without a certificate, and one without TLS.
    let without_certificate = StoreConfig::Etcd {
        endpoints: vec![endpoint.clone()],
        prefix: "/refused".into(),
        tls: Some(EtcdTls {
            ca: tls.ca.clone(),
            identity: None,
        }),
    };
    let plain = StoreConfig::Etcd {
        endpoints: vec![endpoint.replace("https://", "http://")],
        prefix: "/refused".into(),
        tls: None,
    };
    for refused in [without_certificate, plain] {
        let opened = corral_store::open(&refused).await;
        assert!(opened.is_err(), "{refused} was let in");
    }
    // With its certificate, a store client reads and writes.
    let direct = corral_store::open(&etcd.config("/direct"))
        .await
        .expect("a store over TLS with a client certificate");
    direct
        .create("/direct/k", bytes::Bytes::from_static(b"v"))
        .await
        .expect("a write over TLS");

    // The API server with the flags: the whole path works.
    let scratch = Scratch::temporary("corral-etcd-tls-").expect("a temporary directory");
    let flags = [
        ("--etcd-cafile", &tls.ca),
        ("--etcd-certfile", &tls.client.0),
        ("--etcd-keyfile", &tls.client.1),
    ];
    let mut args = Vec::new();
    for (flag, path) in flags {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    let spec = ApiserverSpec {
        program: common::corral().to_path_buf(),
        store: Store::Etcd {
            endpoints: vec![endpoint.replace("https://", "")],
            prefix: "/tls".into(),
        },
        args,
        log_filter: "info".into(),
        pki: None,
    };
    let server = Apiserver::start(spec.clone(), scratch)
        .await
        .expect("corral apiserver on etcd over TLS");
    let client = corral_client::connect(Some(&server.kubeconfig()))
        .await
        .expect("a client");
    let namespaces: Api<Namespace> = Api::all(client);
    let listed = namespaces
        .list(&ListParams::default())
        .await
        .expect("a list");
    let version = listed.metadata.resource_version.clone().unwrap_or_default();
    let watch = namespaces
        .watch(&WatchParams::default().timeout(10), &version)
        .await
        .expect("a watch");
    let mut watch = std::pin::pin!(watch);
    let created: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "over-tls"},
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &created)
        .await
        .expect("a create over TLS to etcd");
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        use futures::TryStreamExt;
        while let Some(event) = watch.try_next().await.expect("the watch") {
            if let WatchEvent::Added(namespace) = event
                && namespace.metadata.name.as_deref() == Some("over-tls")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the create was not watched");
    // It is in etcd, under the server's prefix.
    let stored = corral_store::open(&etcd.config("/tls"))
        .await
        .expect("the store")
        .get("/registry/core/namespaces/over-tls")
        .await
        .expect("a read");
    assert!(stored.is_some(), "not stored under /tls");
    drop(server);

    // Without its client certificate the API server does not start, and says why.
    let refused = tokio::process::Command::new(common::corral())
        .args(["apiserver", "--insecure-http", "--listen", "127.0.0.1:0"])
        .args(["--store", &format!("etcd:{endpoint}")])
        .arg("--etcd-cafile")
        .arg(&tls.ca)
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(60), refused)
        .await
        .expect("an API server without its etcd client certificate kept running")
        .expect("running corral apiserver");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("opening store etcd:https://"), "{stderr}");
}
