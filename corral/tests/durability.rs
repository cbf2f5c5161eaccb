//! `kill -9` of the API server during a burst of concurrent writes loses no write that was
//! answered 2xx: after a restart, every acknowledged object is there, on both backends.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, http};

const BASE: &str = "/apis/test.corral.dev/v1/namespaces/default/widgets";

fn burst_then_kill(backend: Backend) {
    let mut server = common::apiserver(backend);
    let endpoint = common::Reach::endpoint(&server);
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let name = format!("w{writer}-{i}");
                    let body = format!(r#"{{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{{"name":"{name}"}},"spec":{{"color":"red"}}}}"#);
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| http(&endpoint, "POST", BASE, &[("Content-Type", "application/json")], body.as_bytes())));
                    match result {
                        Ok((201, _)) => acknowledged.lock().unwrap().push(name),
                        // Connection refused or reset once the server is dead.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    common::wait_until(
        "a burst of acknowledged writes",
        Duration::from_secs(30),
        || acknowledged.lock().unwrap().len() >= 300,
    );
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    common::restart(&mut server);
    let present: std::collections::HashSet<String> =
        common::list_names(&server, BASE).into_iter().collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !present.contains(n.as_str()))
        .collect();
    println!(
        "{backend:?}: {} writes acknowledged before kill -9, {} present after restart, {} lost",
        acknowledged.len(),
        present.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after kill -9: {lost:?}"
    );
}

#[test]
fn kill_9_loses_no_acknowledged_write_on_sqlite() {
    burst_then_kill(Backend::Sqlite);
}

#[test]
fn kill_9_loses_no_acknowledged_write_on_etcd() {
    burst_then_kill(Backend::Etcd);
}
