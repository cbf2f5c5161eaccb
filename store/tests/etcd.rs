//! Behaviour particular to the etcd backend: what callers see when etcd goes away.

use std::time::Duration;

use bytes::Bytes;
use corral_store::etcd::EtcdStore;
use corral_store::testing::EtcdServer;
use corral_store::{Store, StoreError, WatchOptions};
use futures::StreamExt;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_unavailable() {
    // Nothing listens on port 1 of the loopback.
    let endpoints = vec!["http://127.0.0.1:1".to_owned()];
    match tokio::time::timeout(
        Duration::from_secs(30),
        EtcdStore::connect(&endpoints, "/x", None),
    )
    .await
    {
        Ok(Err(StoreError::Unavailable(_))) => {}
        Ok(Err(other)) => panic!("expected Unavailable, got {other:?}"),
        Ok(Ok(_)) => panic!("expected Unavailable, got a store"),
        Err(_) => panic!("connect did not give up within 30 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_etcd_is_unavailable_and_a_restarted_one_has_the_data() {
    let mut server = EtcdServer::start().await.expect("start etcd");
    let store = EtcdStore::connect(&[server.endpoint()], "/kill", None)
        .await
        .expect("connect");
    let kv = store
        .create("/a", Bytes::from_static(b"1"))
        .await
        .expect("create");
    let mut watch = store
        .watch(
            "/",
            WatchOptions {
                after: kv.mod_revision,
                progress_interval: Duration::from_millis(200),
            },
        )
        .await
        .expect("watch");

    server.kill().expect("kill etcd");
    match store.create("/b", Bytes::from_static(b"2")).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("write to a killed etcd: expected Unavailable, got {other:?}"),
    }
    // The watch reports the loss instead of going quiet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(response))) => assert!(response.events.is_empty()),
            Ok(Some(Err(StoreError::Unavailable(_)))) => break,
            Ok(other) => panic!("watch on a killed etcd: expected Unavailable, got {other:?}"),
            Err(_) => panic!("the watch did not notice the killed etcd within 30 s"),
        }
    }

    server.restart().await.expect("restart etcd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = loop {
        match store.get("/a").await {
            Ok(value) => break value,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("read after restart: {error:?}"),
        }
    };
    assert_eq!(value, Some(kv));
}
