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

mod client;
mod error;
mod watch;

use bytes::Bytes;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::keys::prefix_end;
use crate::{
    KeyValue, ListRequest, ListResponse, Result, Revision, Store, StoreError, WatchOptions,
    WatchStream,
};

pub use self::client::EtcdStore;
pub(crate) use self::client::connect_options;
pub use self::error::EtcdError;

use self::client::timed;
use self::error::{Failure, classify, malformed, other};

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.read_current_revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.find_compacted_revision().await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let full = self.full_key(key);
        let response = timed(|| {
            let mut kv = self.kv();
            let full = full.clone();
            async move { kv.get(full, None).await }
        })
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
        let response = self.txn(txn).await?;
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
        let response = self.txn(txn).await?;
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
        let response = self.txn(txn).await?;
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
        let compacted = self.known_compacted();
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
        let full = self.full_key(prefix);
        let stream = timed(|| {
            let mut client = self.watcher();
            let (full, etcd_options) = (full.clone(), etcd_options.clone());
            async move { client.watch(full, Some(etcd_options)).await }
        })
        .await?
        .map_err(other)?;
        Ok(
            watch::EtcdWatch::new(self.clone(), stream, after, options.progress_interval)
                .into_stream(),
        )
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match timed(|| {
            let mut kv = self.kv();
            async move { kv.compact(revision, None).await }
        })
        .await?
        {
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
