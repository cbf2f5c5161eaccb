//! `corral bench api`: how close the API server gets to the physical limit of its store.
//!
//! In one run: N creates of ~1 KiB objects through the HTTP API at concurrency C; the same
//! number of equivalent writes straight to the engine (etcd puts, or one-row SQLite
//! transactions) at the same concurrency; then W watchers receiving a steady write rate, with
//! the delivery latency of every event. The last line is `api/store ratio: X.XX`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use corral_apiserver::resource::Registry;
use corral_store::StoreConfig;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::measure::{cpu_seconds, peak_rss_mib, percentile};
use super::session::BenchStore;

#[derive(clap::Args)]
pub struct ApiArgs {
    /// `sqlite:PATH` (a fresh file; default: one in a temporary directory), `etcd:URL[,URL...]`,
    /// or `etcd:local` to start a private etcd for the run.
    #[arg(long)]
    store: Option<String>,
    /// Objects to create (and raw writes to make).
    #[arg(long, default_value_t = 20_000, value_parser = crate::command::parse_count)]
    objects: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64, value_parser = crate::command::parse_count)]
    concurrency: usize,
    /// Concurrent watchers for the latency phase.
    #[arg(long, default_value_t = 100, value_parser = crate::command::parse_count)]
    watchers: usize,
    /// Writes per second during the latency phase.
    #[arg(long, default_value_t = 1000, value_parser = crate::command::parse_count)]
    watch_rate: usize,
    /// Length of the latency phase.
    #[arg(long, default_value = "5s", value_parser = crate::command::parse_duration)]
    watch_duration: Duration,
    /// Serve plain HTTP, the client authenticating with a bearer token (what `corral apiserver
    /// --insecure-http` gives up, measured).
    #[arg(long)]
    insecure_http: bool,
    /// Run the API server without its audit trail (what the trail costs, measured).
    #[arg(long)]
    no_audit: bool,
}

/// The bearer token of `admin` under --insecure-http.
const BENCH_TOKEN: &str = "corral-bench-admin";

/// Every request of the benchmark's client: its `Authorization` under --insecure-http.
static BEARER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn authorized(builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
    match BEARER.get().and_then(Option::as_deref) {
        Some(token) => builder.header("authorization", format!("Bearer {token}")),
        None => builder,
    }
}

async fn get(client: &HttpClient, url: &str) -> anyhow::Result<hyper::Response<Incoming>> {
    let request = authorized(hyper::Request::get(url)).body(Full::new(Bytes::new()))?;
    Ok(client.request(request).await?)
}

const BENCH_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: benchobjects.bench.corral.dev
spec:
  group: bench.corral.dev
  scope: Namespaced
  names: {plural: benchobjects, singular: benchobject, kind: BenchObject}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              properties:
                payload: {type: string}
                sentAtMicros: {type: integer}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"#;

fn object_body(name: &str, payload: &str, sent_at_micros: u128) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "bench.corral.dev/v1",
            "kind": "BenchObject",
            "metadata": {"name": name, "labels": {"bench": "api"}},
            "spec": {"payload": payload, "sentAtMicros": sent_at_micros as u64},
        }))
        .expect("serializes"),
    )
}

/// The `sentAtMicros` value in a serialized event, found without parsing the whole line. It
/// is the last field of the object, so the search runs from the end.
fn sent_at_micros(line: &[u8]) -> Option<u64> {
    const NEEDLE: &[u8] = b"\"sentAtMicros\":";
    let at = line.windows(NEEDLE.len()).rposition(|w| w == NEEDLE)? + NEEDLE.len();
    let mut value: u64 = 0;
    let mut digits = 0;
    for b in &line[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(value)
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

fn micros_since_epoch() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of the benchmark's server: HTTPS, as `admin` with its client certificate (the
/// path every client of a rack takes).
fn https_client(tls: &corral_harness::tls::ClientTls, pool: usize) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.config().as_ref().clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build(connector)
}

async fn create(client: &HttpClient, base: &str, body: Bytes) -> anyhow::Result<()> {
    let request = authorized(hyper::Request::post(format!(
        "{base}/apis/bench.corral.dev/v1/namespaces/default/benchobjects"
    )))
    .header("content-type", "application/json")
    .body(Full::new(body))?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != hyper::StatusCode::CREATED {
        bail!(
            "create returned {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Runs `total` operations at `concurrency`, returns the elapsed time.
async fn run_concurrently<F, Fut>(
    total: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let op = op.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                op(i).await?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(start.elapsed())
}

/// CPU used by this process and by a local etcd over one phase.
struct CpuMeter {
    etcd_pid: Option<u32>,
    start: (f64, f64),
}

impl CpuMeter {
    fn start(etcd_pid: Option<u32>) -> CpuMeter {
        let etcd = etcd_pid
            .and_then(|p| cpu_seconds(&p.to_string()))
            .unwrap_or(0.0);
        CpuMeter {
            etcd_pid,
            start: (cpu_seconds("self").unwrap_or(0.0), etcd),
        }
    }

    /// "corral X.XX s CPU, etcd Y.YY s CPU" for the phase so far.
    fn report(&self) -> String {
        let own = cpu_seconds("self").unwrap_or(0.0) - self.start.0;
        match self.etcd_pid.and_then(|p| cpu_seconds(&p.to_string())) {
            Some(etcd) => format!("CPU: corral {own:.2} s, etcd {:.2} s", etcd - self.start.1),
            None => format!("CPU: corral {own:.2} s"),
        }
    }
}

pub async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let bench_store = BenchStore::open(args.store.as_deref(), scratch.path()).await?;
    let store_config = bench_store.config.clone();
    let crd_dir = scratch.path().join("crds");
    std::fs::create_dir_all(&crd_dir)?;
    std::fs::write(crd_dir.join("bench.yaml"), BENCH_CRD)?;
    let registry = Registry::load(Some(&crd_dir))?;
    let store = corral_store::open(&store_config).await?;
    // As `corral up` runs it: with an audit trail (every create is one line of it).
    let mut config = corral_apiserver::Config {
        audit: (!args.no_audit).then(|| corral_apiserver::audit::AuditConfig {
            path: scratch.path().join("audit.log"),
            max_bytes: 100 * 1024 * 1024,
            max_backups: 5,
        }),
        ..corral_apiserver::Config::default()
    };
    if args.insecure_http {
        let tokens = corral_apiserver::auth::TokenFile::parse(&format!(
            "{BENCH_TOKEN},admin,admin,{}",
            corral_apiserver::auth::identities::MASTERS_GROUP
        ))?;
        config.authentication.tokens = Some(std::sync::Arc::new(tokens));
    }
    let _ = BEARER.set(args.insecure_http.then(|| BENCH_TOKEN.to_string()));
    let running = corral_apiserver::ApiServer::start(registry, store, config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address: SocketAddr = listener.local_addr()?;
    let pki = scratch.path().join("pki");
    crate::certs::make(&crate::certs::CertsArgs {
        dir: pki.clone(),
        servers: vec![format!("https://{address}")],
        hosts: Vec::new(),
        nodes: Vec::new(),
        users: Vec::new(),
        etcd_members: Vec::new(),
    })?;
    let tls = corral_apiserver::serve::Tls::from_files(
        &pki.join("apiserver.crt"),
        &pki.join("apiserver.key"),
        Some(&pki.join("ca.crt")),
    )?;
    let client_tls = corral_harness::tls::ClientTls::from_pki(&pki, Some("admin"))
        .map_err(anyhow::Error::msg)?;
    let server = running.server.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(corral_apiserver::serve(
        listener,
        server,
        (!args.insecure_http).then_some(tls),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let scheme = if args.insecure_http { "http" } else { "https" };
    let base = format!("{scheme}://{address}");
    let client = https_client(&client_tls, args.concurrency.max(args.watchers) + 8);

    println!(
        "corral bench api: store {store_config}, {} objects of ~1 KiB, concurrency {}",
        args.objects, args.concurrency
    );
    let payload: String = "x".repeat(1024 - 200);

    let etcd_pid = bench_store.etcd_pid();

    // Phase 1: creates through the API.
    let meter = CpuMeter::start(etcd_pid);
    let api_elapsed = {
        let client = client.clone();
        let base = base.clone();
        let payload = payload.clone();
        run_concurrently(args.objects, args.concurrency, move |i| {
            let client = client.clone();
            let base = base.clone();
            let body = object_body(&format!("obj-{i:08}"), &payload, 0);
            async move { create(&client, &base, body).await }
        })
        .await?
    };
    let api_rate = args.objects as f64 / api_elapsed.as_secs_f64();
    println!(
        "api creates:      {:>9.0} objects/s  ({} in {:.2} s; {})",
        api_rate,
        args.objects,
        api_elapsed.as_secs_f64(),
        meter.report()
    );

    // Phase 2: the engine alone.
    let meter = CpuMeter::start(etcd_pid);
    let raw =
        corral_store::raw::raw_write_rate(&store_config, args.objects, args.concurrency, 1024)
            .await?;
    let raw_rate = raw.writes as f64 / raw.elapsed.as_secs_f64();
    println!(
        "raw store writes: {:>9.0} writes/s   ({} in {:.2} s; {}; {})",
        raw_rate,
        raw.writes,
        raw.elapsed.as_secs_f64(),
        raw_kind(&store_config),
        meter.report()
    );
    let meter = CpuMeter::start(etcd_pid);
    let blind =
        corral_store::raw::etcd_blind_put_rate(&store_config, args.objects, args.concurrency, 1024)
            .await?;
    if let Some(blind) = blind {
        println!(
            "  (for information: etcd blind puts {:>9.0} writes/s; {} in {:.2} s; {})",
            blind.rate(),
            blind.writes,
            blind.elapsed.as_secs_f64(),
            meter.report()
        );
    }

    // The earlier phases leave tens of thousands of revisions behind; a running API server
    // compacts its history every few minutes, so do what its compactor would before measuring
    // steady-state latency.
    let store = &running.server.store;
    store.compact(store.current_revision().await?).await?;

    // Phase 3: watch delivery latency.
    let meter = CpuMeter::start(etcd_pid);
    let (p50, p99, delivered, expected) =
        watch_latency(&client, &client_tls, &base, &payload, &args).await?;
    println!(
        "watch delivery:   p50 {:.1} ms, p99 {:.1} ms  ({} watchers, {} writes/s, {delivered}/{expected} events delivered; {})",
        p50,
        p99,
        args.watchers,
        args.watch_rate,
        meter.report()
    );

    let _ = stop_tx.send(());
    running.server.shutdown.cancel();
    let _ = serving.await;
    running.shutdown().await;
    if let Some(peak) = peak_rss_mib("self") {
        println!("peak RSS of this process (client + API server + cache): {peak:.0} MiB");
    }
    println!("api/store ratio: {:.2}", api_rate / raw_rate);
    Ok(())
}

fn raw_kind(config: &StoreConfig) -> &'static str {
    match config {
        StoreConfig::Sqlite { .. } => "sqlx one-row insert transactions",
        StoreConfig::Etcd { .. } => "etcd-client create-if-absent transactions",
    }
}

/// Starts the watchers, writes at a steady rate, and measures send→receive per event.
async fn watch_latency(
    client: &HttpClient,
    tls: &corral_harness::tls::ClientTls,
    base: &str,
    payload: &str,
    args: &ApiArgs,
) -> anyhow::Result<(f64, f64, usize, usize)> {
    // Start every watcher at the current revision so each sees only the latency-phase writes.
    let list = get(
        client,
        &format!("{base}/apis/bench.corral.dev/v1/namespaces/default/benchobjects?limit=1"),
    )
    .await?;
    let body = list.into_body().collect().await?.to_bytes();
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let total = (args.watch_rate as f64 * args.watch_duration.as_secs_f64()) as usize;
    let (latency_tx, mut latency_rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let mut watchers = tokio::task::JoinSet::new();
    for _ in 0..args.watchers {
        // Watchers use their own connections, outside the writers' pool.
        let watch_client = https_client(tls, 1);
        let url = format!(
            "{base}/apis/bench.corral.dev/v1/namespaces/default/benchobjects?watch=true&resourceVersion={rv}&timeoutSeconds=120"
        );
        let tx = latency_tx.clone();
        watchers.spawn(async move {
            let response = get(&watch_client, &url).await?;
            let mut body = response.into_body();
            let mut buffer: Vec<u8> = Vec::new();
            let mut seen = 0usize;
            while seen < total {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let frame = frame?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                buffer.extend_from_slice(data);
                let now = micros_since_epoch();
                let mut consumed = 0;
                while let Some(end) = memchr_newline(&buffer[consumed..]) {
                    let line = &buffer[consumed..consumed + end];
                    consumed += end + 1;
                    // Only the send time is needed; a full parse of every event would make
                    // the benchmark's own client, on the same cores, the bottleneck.
                    if let Some(sent) = sent_at_micros(line) {
                        let _ = tx.send((now.saturating_sub(sent as u128)) as f64 / 1000.0);
                        seen += 1;
                    }
                }
                buffer.drain(..consumed);
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    drop(latency_tx);
    // Give the watch requests time to be established before the first write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let interval = Duration::from_secs_f64(1.0 / args.watch_rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let client = client.clone();
        let base = base.to_string();
        let body = object_body(&format!("watch-{i:08}"), payload, micros_since_epoch());
        writes.spawn(async move { create(&client, &base, body).await });
    }
    while let Some(result) = writes.join_next().await {
        result??;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::timeout_at(deadline, watchers.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    watchers.abort_all();
    let mut latencies = Vec::new();
    while let Ok(l) = latency_rx.try_recv() {
        latencies.push(l);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok((
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len(),
        total * args.watchers,
    ))
}
