//! The distributed backend: the store's keys in an etcd cluster, under one key prefix.
//!
//! # What it promises
//!
//! Everything in the crate docs, with etcd doing the real work: etcd's revision *is* the
//! store's revision, its transactions make writes conditional, its quorum commit makes them
//! durable, and its watch delivers events in order with their previous values.
//!
//! # Definitions
//!
//! - A store key `k` is the etcd key `PREFIX + k`; keys read back have `PREFIX` stripped.
//! - Create is `txn(create_revision(k) == 0 → put, else get)`; update and delete are
//!   `txn(create_revision(k) > 0 ∧ mod_revision(k) == expected → put/delete with prev_kv,
//!   else get)` (the first comparison keeps `expected == 0` from matching an absent key).
//! - A watch response's progress is the revision of its last event, or, for a progress-only
//!   response, the revision in its header (etcd's answer to `request_progress`, which a watch
//!   sends every half `progress_interval`).
//!
//! # The compacted revision
//!
//! etcd cannot be asked for its compacted revision, so this backend keeps a lower bound in
//! memory (raised by its own `compact` calls and by compaction errors etcd reports) and, when
//! asked, finds the exact value by bisection: a read at revision R fails as compacted if (and
//! only if) R < the compacted revision, so about log2(current - known) cheap `count_only`
//! reads find it. This needs no reserved key (which would be a write, moving the revision, and
//! would show up in lists), and sees compactions made by other API servers or by etcd's own
//! auto-compaction. If etcd was compacted at revision 1 exactly, the answer is 0
//! (indistinguishable, and harmless: nothing is older).
//!
//! # Invariants
//!
//! - A watch never reports progress P unless every event <= P of its range was delivered: see
//!   the progress section of `watch`, which also covers etcd < 3.4.24 / 3.5.8, whose answer
//!   to `request_progress` may overtake undelivered events (etcd issue 15220).
//! - A watch starting below the known compacted revision is refused even when etcd would
//!   still serve it (etcd serves `after == C - 1`, but the previous values of the events at C
//!   may be gone); an update or delete event without its previous value ends the watch with
//!   `Compacted` rather than deliver an event without it.
//!
//! # Assumptions
//!
//! - No two deployments use prefixes where one is a prefix of the other (`/corral` and
//!   `/corral2`): a list of `/corral` would see `/corral2`'s keys.
//! - Nothing else writes under the prefix.
//! - etcd requests other than watches finish within `REQUEST_TIMEOUT`; past it the call is
//!   `Unavailable` (the request may still have been applied, as with any timeout).
//!
//! # Not responsible for
//!
//! Running or configuring etcd (auto-compaction, quotas, TLS), and retrying: connection
//! failures surface as `Unavailable` and the caller decides.

mod watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, PutOptions,
    Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use crate::keys::prefix_end;
use crate::{
    KeyValue, ListRequest, ListResponse, Result, Revision, Store, StoreError, WatchOptions,
    WatchStream,
};

/// How long a non-watch request may take before it is `Unavailable`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures particular to this backend; they reach callers as the `#[source]` of a
/// [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd request failed")]
    Request(#[source] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd returned the key {key:?}, outside the prefix")]
    KeyOutsidePrefix { key: String },
    #[error("a key under the prefix is not UTF-8")]
    KeyNotUtf8(#[source] std::string::FromUtf8Error),
    #[error("etcd's answer lacks {0}")]
    Malformed(&'static str),
    #[error("etcd canceled the watch: {0}")]
    WatchCanceled(String),
    #[error("etcd ended the watch stream")]
    WatchEnded,
}

/// What an etcd error means for the store.
enum Failure {
    Compacted,
    FutureRevision,
    Other(StoreError),
}

fn classify(error: etcd_client::Error) -> Failure {
    use tonic::Code;
    let unavailable = match &error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("required revision has been compacted") {
                return Failure::Compacted;
            }
            if message.contains("required revision is a future revision") {
                return Failure::FutureRevision;
            }
            // A status that carries a source error was made on this side from a transport
            // failure (a broken connection reads as `Unknown` with a hyper error inside).
            let transport = std::error::Error::source(status).is_some();
            transport
                || matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
                )
        }
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_) => true,
        _ => false,
    };
    let error = Box::new(EtcdError::Request(error));
    Failure::Other(if unavailable {
        StoreError::Unavailable(error)
    } else {
        StoreError::Backend(error)
    })
}

fn other(error: etcd_client::Error) -> StoreError {
    match classify(error) {
        Failure::Other(error) => error,
        // Only reads at a revision and compactions can fail these ways; they handle them.
        Failure::Compacted => StoreError::Backend(Box::new(EtcdError::Malformed(
            "a request that names no revision failed as compacted",
        ))),
        Failure::FutureRevision => StoreError::Backend(Box::new(EtcdError::Malformed(
            "a request that names no revision failed as a future revision",
        ))),
    }
}

fn malformed(what: &'static str) -> StoreError {
    StoreError::Backend(Box::new(EtcdError::Malformed(what)))
}

/// Runs an etcd request with [`REQUEST_TIMEOUT`].
async fn timed<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<Result<T, etcd_client::Error>> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| StoreError::Unavailable(Box::new(EtcdError::Timeout(REQUEST_TIMEOUT))))
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
    client: Client,
    prefix: Arc<[u8]>,
    /// A lower bound of etcd's compacted revision (see the module docs).
    known_compacted: Arc<AtomicI64>,
    progress_is_ordered: bool,
}

impl EtcdStore {
    /// Connects to `endpoints` and checks that etcd answers (an unreachable cluster is
    /// `Unavailable`).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = timed(Client::connect(endpoints, Some(options)))
            .await?
            .map_err(other)?;
        let status = timed(client.maintenance_client().status())
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

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key.as_bytes());
        full
    }

    fn strip(&self, key: &[u8]) -> Result<String> {
        let Some(key) = key.strip_prefix(&self.prefix[..]) else {
            return Err(StoreError::Backend(Box::new(EtcdError::KeyOutsidePrefix {
                key: String::from_utf8_lossy(key).into_owned(),
            })));
        };
        String::from_utf8(key.to_vec())
            .map_err(|e| StoreError::Backend(Box::new(EtcdError::KeyNotUtf8(e))))
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    fn note_compacted(&self, revision: Revision) {
        self.known_compacted.fetch_max(revision, Ordering::Relaxed);
    }

    /// Reads one key's count at `revision`: `Ok(true)` if etcd still serves that revision,
    /// `Ok(false)` if it was compacted.
    async fn serves_revision(&self, revision: Revision) -> Result<bool> {
        let options = GetOptions::new().with_count_only().with_revision(revision);
        let mut kv = self.client.kv_client();
        match timed(kv.get(&self.prefix[..], Some(options))).await? {
            Ok(_) => Ok(true),
            Err(error) => match classify(error) {
                Failure::Compacted => Ok(false),
                Failure::FutureRevision => Ok(true),
                Failure::Other(error) => Err(error),
            },
        }
    }

    /// The latest value of `key` inside a failed transaction's `else` branch.
    fn else_value(&self, response: &TxnResponse) -> Result<Option<KeyValue>> {
        match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => {
                get.kvs().first().map(|kv| self.key_value(kv)).transpose()
            }
            _ => Err(malformed("the get of a failed transaction")),
        }
    }

    fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
        header
            .map(|h| h.revision())
            .ok_or_else(|| malformed("a response header"))
    }

    async fn range(
        &self,
        start: Vec<u8>,
        options: GetOptions,
    ) -> Result<GetResponse, etcd_client::Error> {
        let mut kv = self.client.kv_client();
        match tokio::time::timeout(REQUEST_TIMEOUT, kv.get(start, Some(options))).await {
            Ok(result) => result,
            Err(_) => Err(etcd_client::Error::GRpcStatus(
                tonic::Status::deadline_exceeded("etcd range timed out"),
            )),
        }
    }

    async fn compacted_error(&self, requested: Revision) -> StoreError {
        // Compaction has passed `requested`, so the compacted revision is above it.
        self.note_compacted(requested + 1);
        match self.compacted_revision().await {
            Ok(compacted) => StoreError::Compacted {
                requested,
                compacted,
            },
            Err(error) => error,
        }
    }

    async fn future_error(&self, requested: Revision) -> StoreError {
        match self.current_revision().await {
            Ok(current) => StoreError::FutureRevision { requested, current },
            Err(error) => error,
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn current_revision(&self) -> Result<Revision> {
        let mut kv = self.client.kv_client();
        let options = GetOptions::new().with_count_only();
        let response = timed(kv.get(&self.prefix[..], Some(options)))
            .await?
            .map_err(other)?;
        Self::header_revision(response.header())
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        let known = self.known_compacted.load(Ordering::Relaxed);
        let current = self.current_revision().await?;
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

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.client.kv_client();
        let response = timed(kv.get(self.full_key(key), None))
            .await?
            .map_err(other)?;
        response
            .kvs()
            .first()
            .map(|kv| self.key_value(kv))
            .transpose()
    }

    async fn list(&self, request: ListRequest) -> Result<ListResponse> {
        if request.revision == Some(0) {
            // etcd reads revision 0 as "latest"; the store means "before the first write".
            let compacted = self.compacted_revision().await?;
            if compacted > 0 {
                return Err(StoreError::Compacted {
                    requested: 0,
                    compacted,
                });
            }
            return Ok(ListResponse {
                items: Vec::new(),
                revision: 0,
                more: false,
                count: 0,
            });
        }
        let base = self.full_key(&request.prefix);
        // etcd's "\0" as a range end means "to the end of the keyspace".
        let end = prefix_end(&base).unwrap_or_else(|| vec![0]);
        let start = match &request.start {
            Some(start) if start.as_bytes() > request.prefix.as_bytes() => self.full_key(start),
            _ => base,
        };
        let mut options = GetOptions::new().with_range(end);
        if let Some(limit) = request.limit.filter(|&limit| limit > 0) {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(revision) = request.revision {
            options = options.with_revision(revision);
        }
        let response = match self.range(start, options).await {
            Ok(response) => response,
            Err(error) => {
                let requested = request.revision.unwrap_or(0);
                return Err(match classify(error) {
                    Failure::Compacted => self.compacted_error(requested).await,
                    Failure::FutureRevision => self.future_error(requested).await,
                    Failure::Other(error) => error,
                });
            }
        };
        let items = response
            .kvs()
            .iter()
            .map(|kv| self.key_value(kv))
            .collect::<Result<_>>()?;
        let revision = match request.revision {
            Some(revision) => revision,
            None => Self::header_revision(response.header())?,
        };
        Ok(ListResponse {
            items,
            revision,
            more: response.more(),
            count: u64::try_from(response.count()).unwrap_or(0),
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.clone(), value.to_vec(), None)])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = self.client.kv_client();
        let response = timed(kv.txn(txn)).await?.map_err(other)?;
        if response.succeeded() {
            let revision = Self::header_revision(response.header())?;
            return Ok(KeyValue {
                key: key.to_owned(),
                value,
                create_revision: revision,
                mod_revision: revision,
            });
        }
        match self.else_value(&response)? {
            Some(current) => Err(StoreError::AlreadyExists {
                key: key.to_owned(),
                current,
            }),
            None => Err(malformed(
                "the existing value of a key that failed to be created",
            )),
        }
    }

    async fn update(&self, key: &str, expected: Revision, value: Bytes) -> Result<KeyValue> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([
                Compare::create_revision(full.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(full.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(
                full.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = self.client.kv_client();
        let response = timed(kv.txn(txn)).await?.map_err(other)?;
        if !response.succeeded() {
            return Err(match self.else_value(&response)? {
                Some(current) => StoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: Some(current),
                },
                None => StoreError::NotFound {
                    key: key.to_owned(),
                },
            });
        }
        let revision = Self::header_revision(response.header())?;
        let create_revision = match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Put(put)) => put
                .prev_key()
                .map(|prev| prev.create_revision())
                .ok_or_else(|| malformed("the previous value of an update"))?,
            _ => return Err(malformed("the put of an update")),
        };
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Revision) -> Result<KeyValue> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([
                Compare::create_revision(full.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(full.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = self.client.kv_client();
        let response = timed(kv.txn(txn)).await?.map_err(other)?;
        if !response.succeeded() {
            return Err(match self.else_value(&response)? {
                Some(current) => StoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: Some(current),
                },
                None => StoreError::NotFound {
                    key: key.to_owned(),
                },
            });
        }
        let revision = Self::header_revision(response.header())?;
        let previous = match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(delete)) => match delete.prev_kvs().first() {
                Some(prev) => self.key_value(prev)?,
                None => return Err(malformed("the previous value of a delete")),
            },
            _ => return Err(malformed("the delete of a delete")),
        };
        Ok(KeyValue {
            mod_revision: revision,
            ..previous
        })
    }

    async fn watch(&self, prefix: &str, options: WatchOptions) -> Result<WatchStream> {
        let after = options.after.max(0);
        let compacted = self.known_compacted.load(Ordering::Relaxed);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let etcd_options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after + 1);
        let mut client = self.client.watch_client();
        let stream = timed(client.watch(self.full_key(prefix), Some(etcd_options)))
            .await?
            .map_err(other)?;
        Ok(
            watch::EtcdWatch::new(self.clone(), stream, after, options.progress_interval)
                .into_stream(),
        )
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut kv = self.client.kv_client();
        match timed(kv.compact(revision, None)).await? {
            Ok(_) => {
                self.note_compacted(revision);
                Ok(())
            }
            Err(error) => match classify(error) {
                // etcd refuses to compact at or below its compacted revision: already done.
                Failure::Compacted => Ok(()),
                Failure::FutureRevision => Err(self.future_error(revision).await),
                Failure::Other(error) => Err(error),
            },
        }
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
