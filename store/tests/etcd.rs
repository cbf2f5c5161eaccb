//! Behaviour particular to the etcd backend: what callers see when etcd goes away, and watch
//! progress on an etcd that answers progress requests ahead of the events (before 3.4.24 /
//! 3.5.8, etcd-io/etcd#15220; Debian's 3.4.23 is one).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use corral_store::etcd::EtcdStore;
use corral_store::testing::EtcdServer;
use corral_store::{Revision, Store, StoreError, WatchOptions, WatchResponse};
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

/// The most one of the tests below may take.
const OVERTAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether this etcd version answers a progress request in order with the events (etcd 3.4.24,
/// 3.5.8 and later). Unparsable versions count as old.
fn progress_is_ordered(version: &str) -> bool {
    let parts: Vec<u32> = version
        .split('.')
        .map_while(|part| part.parse().ok())
        .collect();
    match parts[..] {
        [3, 4, patch, ..] => patch >= 24,
        [3, 5, patch, ..] => patch >= 8,
        [3, minor, ..] => minor > 5,
        [major, ..] => major > 3,
        [] => false,
    }
}

/// A private etcd and a raw client of it (no Corral code between the test and etcd).
async fn etcd_with_raw_client() -> (EtcdServer, etcd_client::Client) {
    let server = EtcdServer::start().await.expect("start etcd");
    let client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .expect("connect");
    (server, client)
}

async fn etcd_version(client: &etcd_client::Client) -> String {
    let status = client
        .maintenance_client()
        .status()
        .await
        .expect("etcd status");
    status.version().to_owned()
}

/// The revision etcd is at.
async fn etcd_revision(client: &etcd_client::Client) -> Revision {
    let response = client
        .kv_client()
        .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
        .await
        .expect("read the revision");
    response.header().expect("a response header").revision()
}

/// A backlog of single-key puts: `revisions` of them, one revision each, under `prefix` on
/// `keys` keys (so after the first `keys`, puts are updates), values of `value_len` bytes.
#[derive(Clone, Copy, Debug)]
struct Backlog {
    revisions: usize,
    keys: usize,
    value_len: usize,
}

impl Backlog {
    /// Writes the backlog (64 puts in flight) and returns the revision before it and its last
    /// revision. Nothing else may write meanwhile: the backlog is every revision in between.
    async fn write(self, client: &etcd_client::Client, prefix: &str) -> (Revision, Revision) {
        let before = etcd_revision(client).await;
        let next = Arc::new(AtomicUsize::new(0));
        let value = vec![b'v'; self.value_len];
        let writers: Vec<_> = (0..64)
            .map(|_| {
                let mut kv = client.kv_client();
                let (next, value, prefix) = (next.clone(), value.clone(), prefix.to_owned());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= self.revisions {
                            return;
                        }
                        let key = format!("{prefix}{:06}", i % self.keys);
                        kv.put(key, value.clone(), None).await.expect("put");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("a backlog writer");
        }
        let last = etcd_revision(client).await;
        assert_eq!(
            last - before,
            self.revisions as Revision,
            "someone else wrote"
        );
        (before, last)
    }
}

/// What a raw etcd watch received, in order.
#[derive(Debug)]
enum Arrival {
    /// The revisions of one response's events.
    Events(Vec<Revision>),
    /// A progress-only response: its header revision.
    Progress(Revision),
}

/// How far the progress answers in `arrivals` overtook the events.
#[derive(Debug, Default, PartialEq, Eq)]
struct Overtaking {
    answers: usize,
    /// Answers with a revision >= an event that arrived after them.
    overtaking_answers: usize,
    events: usize,
    /// Events that arrived after an answer with a revision >= theirs.
    overtaken_events: usize,
}

impl Overtaking {
    fn of(arrivals: &[Arrival]) -> Overtaking {
        let mut overtaking = Overtaking::default();
        let mut greatest_answer = Revision::MIN;
        for arrival in arrivals {
            match arrival {
                Arrival::Progress(revision) => {
                    overtaking.answers += 1;
                    greatest_answer = greatest_answer.max(*revision);
                }
                Arrival::Events(revisions) => {
                    overtaking.events += revisions.len();
                    overtaking.overtaken_events +=
                        revisions.iter().filter(|r| **r <= greatest_answer).count();
                }
            }
        }
        let mut least_later_event = Revision::MAX;
        for arrival in arrivals.iter().rev() {
            match arrival {
                Arrival::Progress(revision) if *revision >= least_later_event => {
                    overtaking.overtaking_answers += 1;
                }
                Arrival::Progress(_) => {}
                Arrival::Events(revisions) => {
                    least_later_event = least_later_event.min(revisions[0]);
                }
            }
        }
        overtaking
    }
}

/// Watches `prefix` after `after` with etcd's own client (with previous values, as the store
/// does), asking for progress at once and then every 5 ms, until the event at `last` arrives.
async fn raw_watch(
    client: &etcd_client::Client,
    prefix: &str,
    after: Revision,
    last: Revision,
) -> Vec<Arrival> {
    let options = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(after + 1);
    let mut stream = client
        .watch_client()
        .max_decoding_message_size(i32::MAX as usize)
        .watch(prefix, Some(options))
        .await
        .expect("watch");
    let mut ask = tokio::time::interval(Duration::from_millis(5));
    let mut arrivals = Vec::new();
    let mut delivered = after;
    while delivered < last {
        tokio::select! {
            message = stream.message() => {
                let response = message.expect("watch message").expect("the watch ended");
                if response.created() {
                    continue;
                }
                let revisions: Vec<Revision> = response
                    .events()
                    .iter()
                    .map(|event| event.kv().expect("an event's key-value").mod_revision())
                    .collect();
                match revisions.last() {
                    Some(revision) => {
                        delivered = *revision;
                        arrivals.push(Arrival::Events(revisions));
                    }
                    None => {
                        let header = response.header().expect("a response header");
                        arrivals.push(Arrival::Progress(header.revision()));
                    }
                }
            }
            _ = ask.tick() => stream.request_progress().await.expect("request progress"),
        }
    }
    arrivals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_etcd_progress_answers_overtake_the_events_of_a_catching_up_watch() {
    let test = async {
        let (_server, client) = etcd_with_raw_client().await;
        let version = etcd_version(&client).await;
        // 3,000 revisions: etcd catches the watch up in three batches of 1,000, 100 ms apart.
        let backlog = Backlog {
            revisions: 3_000,
            keys: 3_000,
            value_len: 16,
        };
        let (before, last) = backlog.write(&client, "/raw/").await;
        let arrivals = raw_watch(&client, "/raw/", before, last).await;
        let overtaking = Overtaking::of(&arrivals);
        eprintln!("etcd {version}, {backlog:?}: {overtaking:?}");
        assert_eq!(overtaking.events, backlog.revisions, "events lost");
        if progress_is_ordered(&version) {
            assert_eq!(
                overtaking.overtaken_events, 0,
                "etcd {version}: {overtaking:?}"
            );
        } else {
            // An answer says "up to R" (the backlog's last revision) while events <= R are
            // still to come: on 3.4.23, answers came ahead of 2,000 to all 3,000 of them.
            assert!(
                overtaking.overtaking_answers > 0 && overtaking.overtaken_events > 0,
                "etcd {version} is expected to answer ahead of the events: {overtaking:?}"
            );
        }
    };
    tokio::time::timeout(OVERTAKE_TIMEOUT, test)
        .await
        .expect("the test did not finish in time");
}

/// Reads `watch` until it has delivered `last`, checking the store's promise on every response:
/// events come one revision after the other from `after + 1` (the backlog is every revision),
/// and none at or below a progress already reported (a progress of P promises that every event
/// <= P was delivered). A `slow` reader spends 300 ms on each response without events before
/// it reads on. Returns the number of responses.
async fn check_watch(
    watch: &mut corral_store::WatchStream,
    after: Revision,
    last: Revision,
    slow: bool,
) -> usize {
    let mut delivered = after;
    let mut reported = after;
    let mut responses = 0;
    while delivered < last {
        let response: WatchResponse =
            match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
                Ok(Some(Ok(response))) => response,
                Ok(other) => panic!("watch: expected a response, got {other:?}"),
                Err(_) => panic!("no watch response within 30 s (delivered {delivered} of {last})"),
            };
        responses += 1;
        for event in &response.events {
            assert!(
                event.revision() > reported,
                "the event at {} came after progress {reported} was reported",
                event.revision()
            );
            assert_eq!(
                event.revision(),
                delivered + 1,
                "an event missing or out of order"
            );
            delivered = event.revision();
        }
        assert!(
            response.progress <= delivered || delivered == last,
            "progress {} reported with only {delivered} of {last} delivered",
            response.progress
        );
        reported = reported.max(response.progress);
        if slow && response.events.is_empty() {
            // The reader's own work, during which the watch is not read.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_watch_progress_never_passes_an_undelivered_event() {
    let test = async {
        let (server, client) = etcd_with_raw_client().await;
        let store = EtcdStore::connect(&[server.endpoint()], "/overtake", None)
            .await
            .expect("connect");
        let version = etcd_version(&client).await;
        // Small creates: etcd sends a batch of 1,000 revisions every 100 ms. Updates of 50 kB
        // values: a batch of 1,000 revisions (with their previous values) took etcd 0.5 to 2 s
        // to read and send, longer than a hold measured by the clock alone; 5,000 of them make
        // each pass over the history slow to read too. A slow reader lets such a hold run out
        // while batches wait unread.
        let small = Backlog {
            revisions: 5_000,
            keys: 5_000,
            value_len: 16,
        };
        let large = Backlog {
            revisions: 2_000,
            keys: 100,
            value_len: 50_000,
        };
        let huge = Backlog {
            revisions: 5_000,
            keys: 200,
            value_len: 50_000,
        };
        let rounds = [
            (small, false),
            (large, false),
            (huge, false),
            (small, true),
            (large, false),
            (small, true),
        ];
        for (round, (backlog, slow)) in rounds.into_iter().enumerate() {
            let (before, last) = backlog.write(&client, &format!("/overtake/{round}/")).await;
            let mut watch = store
                .watch(
                    "/",
                    WatchOptions {
                        after: before,
                        progress_interval: Duration::from_millis(20),
                    },
                )
                .await
                .expect("watch");
            let started = Instant::now();
            let responses = check_watch(&mut watch, before, last, slow).await;
            eprintln!(
                "etcd {version}, round {round}, {backlog:?}, slow reader: {slow}: caught up in \
                 {:?}, {responses} responses",
                started.elapsed()
            );
        }
    };
    tokio::time::timeout(OVERTAKE_TIMEOUT, test)
        .await
        .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_watch_of_a_quiet_prefix_from_the_past_reports_progress() {
    let test = async {
        let (server, client) = etcd_with_raw_client().await;
        let store = EtcdStore::connect(&[server.endpoint()], "/quiet", None)
            .await
            .expect("connect");
        let backlog = Backlog {
            revisions: 3_000,
            keys: 3_000,
            value_len: 16,
        };
        let (before, last) = backlog.write(&client, "/elsewhere/").await;
        let mut watch = store
            .watch(
                "/",
                WatchOptions {
                    after: before,
                    progress_interval: Duration::from_millis(20),
                },
            )
            .await
            .expect("watch");
        // etcd catches the watch up with nothing to send: progress must still pass the
        // backlog, however carefully it is believed.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut progress = before;
        while progress < last {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(Ok(response))) => {
                    assert!(response.events.is_empty(), "an event from another prefix");
                    assert!(response.progress >= progress, "progress went backwards");
                    progress = response.progress;
                }
                Ok(other) => panic!("watch: expected a response, got {other:?}"),
                Err(_) => panic!("progress stayed at {progress}, below {last}, for 10 s"),
            }
        }
    };
    tokio::time::timeout(OVERTAKE_TIMEOUT, test)
        .await
        .expect("the test did not finish in time");
}
