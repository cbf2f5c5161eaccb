//! The connection to etcd under one key prefix: translating keys in and out of the prefix,
//! timing requests out, and knowing the current and compacted revisions. The [`Store`]
//! operations built on it are in the parent module; watches (`watch`) use it too.
//!
//! # Invariants
//!
//! - `known_compacted` only rises, and never above etcd's real compacted revision: it is
//!   raised by this store's own compactions, by compaction errors etcd reports, and by the
//!   bisection that finds the exact value.
//!
//! [`Store`]: crate::Store

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, GetResponse, Identity, KvClient, TlsOptions,
    Txn, TxnOpResponse, TxnResponse, WatchClient,
};

use super::error::{EtcdError, Failure, classify, malformed, other};
use crate::{EtcdTls, KeyValue, Result, Revision, StoreError};

/// How long a non-watch request may take before it is `Unavailable`.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest response read from etcd (Kubernetes' `MaxCallRecvMsgSize`, `math.MaxInt32`).
/// gRPC's default, 4 MiB, is less than one list page of large objects, or one watch response
/// (etcd sends up to 1,000 revisions in one, each with its previous value): such a list or
/// watch would fail every time. The API server bounds what it asks for instead (pages, and
/// objects of at most 1.5 MB).
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// How many times a request that reached no member is sent again (see [`timed`]).
const CONNECT_RETRIES: u32 = 4;
/// The pause before the first resend; each further one waits this much longer.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Runs an etcd request (made afresh by `request` for each attempt) with [`REQUEST_TIMEOUT`]
/// over all its attempts. etcd-client spreads requests over every member it was given and
/// keeps a member that died in the set, so a request may be sent to a member whose connection
/// is refused: such a request reached no etcd, whatever it was, and is sent again (up to
/// [`CONNECT_RETRIES`] times), which lets the balancer pick a live member. Any other failure is
/// the caller's: a request that may have reached a member is never sent twice.
pub(super) async fn timed<T, F, Fut>(mut request: F) -> Result<Result<T, etcd_client::Error>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let attempts = async {
        let mut attempt = 0;
        loop {
            match request().await {
                Err(error) if attempt < CONNECT_RETRIES && did_not_connect(&error) => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "an etcd member refused the connection; sending again");
                    tokio::time::sleep(RETRY_PAUSE * attempt).await;
                }
                answer => return answer,
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempts)
        .await
        .map_err(|_| StoreError::Unavailable(Box::new(EtcdError::Timeout(REQUEST_TIMEOUT))))
}

/// Whether `error` says no connection to a member could be made (so the request reached none).
fn did_not_connect(error: &etcd_client::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        // hyper-util's connector error, which does not always keep the io::Error as a source.
        let text = error.to_string();
        if text.contains("tcp connect error") || text.contains("Connection refused") {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether this etcd version answers `request_progress` only once the watch is synced (etcd
/// 3.4.24, 3.5.8 and later); older ones may answer ahead of undelivered events.
fn progress_is_ordered(version: &str) -> bool {
    let mut parts = version.split('.').map(|part| {
        part.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    match (major, minor) {
        (3, 4) => patch >= 24,
        (3, 5) => patch >= 8,
        (3, minor) => minor > 5,
        (major, _) => major > 3,
    }
}

/// The etcd-backed store. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct EtcdStore {
    pub(super) client: Client,
    prefix: Arc<[u8]>,
    /// A lower bound of etcd's compacted revision (see the module docs).
    known_compacted: Arc<AtomicI64>,
    pub(super) progress_is_ordered: bool,
}

/// The options every connection to etcd uses: timeouts, keep-alives and, when given, TLS
/// (etcd's CA, and the client certificate for an etcd that asks for one). A TLS file that
/// cannot be read is a `Backend` error naming it.
pub(crate) fn connect_options(tls: Option<&EtcdTls>) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| {
                StoreError::Backend(Box::new(EtcdError::TlsFile {
                    path: path.display().to_string(),
                    source,
                }))
            })
        };
        let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(config);
    }
    Ok(options)
}

impl EtcdStore {
    /// Connects to `endpoints` (over TLS when `tls` is given) and checks that etcd answers (an
    /// unreachable cluster, or one that refuses the handshake, is `Unavailable`).
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<EtcdStore> {
        let options = connect_options(tls)?;
        let client = timed(|| Client::connect(endpoints, Some(options.clone())))
            .await?
            .map_err(other)?;
        let status = timed(|| {
            let mut maintenance = client.maintenance_client();
            async move { maintenance.status().await }
        })
        .await?
        .map_err(other)?;
        let progress_is_ordered = progress_is_ordered(status.version());
        if !progress_is_ordered {
            tracing::info!(
                version = status.version(),
                "etcd answers progress requests out of order (before 3.4.24 / 3.5.8); \
                 watch progress is held back to stay correct"
            );
        }
        Ok(EtcdStore {
            client,
            prefix: Arc::from(prefix.as_bytes()),
            known_compacted: Arc::new(AtomicI64::new(0)),
            progress_is_ordered,
        })
    }

    /// A KV client that reads responses of up to [`MAX_RESPONSE_BYTES`].
    pub(super) fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// Runs `txn` ([`timed`]: sent again only if it reached no member).
    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        timed(|| {
            let mut kv = self.kv();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await?
        .map_err(other)
    }

    /// A watch client that reads responses of up to [`MAX_RESPONSE_BYTES`].
    pub(super) fn watcher(&self) -> WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub(super) fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key.as_bytes());
        full
    }

    pub(super) fn strip(&self, key: &[u8]) -> Result<String> {
        let Some(key) = key.strip_prefix(&self.prefix[..]) else {
            return Err(StoreError::Backend(Box::new(EtcdError::KeyOutsidePrefix {
                key: String::from_utf8_lossy(key).into_owned(),
            })));
        };
        String::from_utf8(key.to_vec())
            .map_err(|e| StoreError::Backend(Box::new(EtcdError::KeyNotUtf8(e))))
    }

    pub(super) fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    pub(super) fn note_compacted(&self, revision: Revision) {
        self.known_compacted.fetch_max(revision, Ordering::Relaxed);
    }

    /// Reads one key's count at `revision`: `Ok(true)` if etcd still serves that revision,
    /// `Ok(false)` if it was compacted.
    async fn serves_revision(&self, revision: Revision) -> Result<bool> {
        let options = GetOptions::new().with_count_only().with_revision(revision);
        match timed(|| {
            let mut kv = self.kv();
            let options = options.clone();
            async move { kv.get(&self.prefix[..], Some(options)).await }
        })
        .await?
        {
            Ok(_) => Ok(true),
            Err(error) => match classify(error) {
                Failure::Compacted => Ok(false),
                Failure::FutureRevision => Ok(true),
                Failure::Other(error) => Err(error),
            },
        }
    }

    /// The latest value of `key` inside a failed transaction's `else` branch.
    pub(super) fn else_value(&self, response: &TxnResponse) -> Result<Option<KeyValue>> {
        match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => {
                get.kvs().first().map(|kv| self.key_value(kv)).transpose()
            }
            _ => Err(malformed("the get of a failed transaction")),
        }
    }

    pub(super) fn header_revision(
        header: Option<&etcd_client::ResponseHeader>,
    ) -> Result<Revision> {
        header
            .map(|h| h.revision())
            .ok_or_else(|| malformed("a response header"))
    }

    pub(super) async fn range(
        &self,
        start: Vec<u8>,
        options: GetOptions,
    ) -> Result<GetResponse, etcd_client::Error> {
        let request = || {
            let mut kv = self.kv();
            let (start, options) = (start.clone(), options.clone());
            async move { kv.get(start, Some(options)).await }
        };
        match timed(request).await {
            Ok(result) => result,
            Err(_) => Err(etcd_client::Error::GRpcStatus(
                tonic::Status::deadline_exceeded("etcd range timed out"),
            )),
        }
    }

    pub(super) async fn compacted_error(&self, requested: Revision) -> StoreError {
        // Compaction has passed `requested`, so the compacted revision is above it.
        self.note_compacted(requested + 1);
        match self.find_compacted_revision().await {
            Ok(compacted) => StoreError::Compacted {
                requested,
                compacted,
            },
            Err(error) => error,
        }
    }

    pub(super) async fn future_error(&self, requested: Revision) -> StoreError {
        match self.read_current_revision().await {
            Ok(current) => StoreError::FutureRevision { requested, current },
            Err(error) => error,
        }
    }

    /// The lower bound of the compacted revision this store knows without asking etcd.
    pub(super) fn known_compacted(&self) -> Revision {
        self.known_compacted.load(Ordering::Relaxed)
    }

    /// The store-wide revision, from a `count_only` read of the prefix.
    pub(super) async fn read_current_revision(&self) -> Result<Revision> {
        let options = GetOptions::new().with_count_only();
        let response = timed(|| {
            let mut kv = self.kv();
            let options = options.clone();
            async move { kv.get(&self.prefix[..], Some(options)).await }
        })
        .await?
        .map_err(other)?;
        Self::header_revision(response.header())
    }

    /// The compacted revision, by bisection above the known lower bound (see the parent
    /// module's docs).
    pub(super) async fn find_compacted_revision(&self) -> Result<Revision> {
        let known = self.known_compacted.load(Ordering::Relaxed);
        let current = self.read_current_revision().await?;
        // Invariant: etcd serves `ok` (or it is the current revision) and does not serve `bad`.
        let mut bad = known.max(1);
        if bad >= current || self.serves_revision(bad).await? {
            return Ok(known);
        }
        let mut ok = current;
        while ok - bad > 1 {
            let middle = bad + (ok - bad) / 2;
            if self.serves_revision(middle).await? {
                ok = middle;
            } else {
                bad = middle;
            }
        }
        self.note_compacted(ok);
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_ordered_from_the_fixed_releases_on() {
        assert!(!progress_is_ordered("3.4.23"));
        assert!(progress_is_ordered("3.4.24"));
        assert!(!progress_is_ordered("3.5.7"));
        assert!(progress_is_ordered("3.5.8"));
        assert!(progress_is_ordered("3.6.0"));
        assert!(progress_is_ordered("4.0.0"));
        assert!(!progress_is_ordered("garbage"));
    }
}
