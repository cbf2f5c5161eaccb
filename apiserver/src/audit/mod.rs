//! The audit trail: every request that changes state, recorded as an `audit.k8s.io/v1` Event
//! (Kubernetes' `Metadata` level: who, their groups, whom they impersonated, the verb, the
//! object, the answer's code, when it came and when it was answered) in a JSON-lines file
//! that rotates by size, and read back for `corralctl audit` (`GET /audit`).
//!
//! What is recorded: every request whose method is `POST`, `PUT`, `PATCH` or `DELETE`, on any
//! path, whatever its outcome — refused (401, 403, 429), invalid, failed or done. Reads and
//! watches are not. The record is made when the answer is ready (stage `ResponseComplete`: no
//! mutating answer streams).
//!
//! # Guarantees
//!
//! - Blocking, as kube-apiserver's log backend: a request is answered only once its Event is
//!   queued to the writer, and the queue is bounded ([`QUEUE`]): when the disk is slower than
//!   the writes, writes slow down rather than go unrecorded.
//! - Read-your-writes: [`Log::read`] first waits for every Event queued before it to be in the
//!   file, so a request answered before the read is in its answer.
//! - An Event reaches the file at most a few milliseconds after its request is answered (the
//!   writer takes a busy queue in batches: `BUSY_PERIOD`).
//! - Bounded on disk: the file is rotated before a line would take it past `max_bytes`
//!   (`PATH` → `PATH.1` → … → `PATH.N`, the oldest dropped), so the trail never takes more
//!   than `(max_backups + 1) × max_bytes` (a single line larger than `max_bytes` is written
//!   whole, alone in its file). Files are created `0600`: the trail names every user.
//!
//! # Caveats
//!
//! - A failed write (disk full) is logged and the Event lost; the request is not failed.
//! - The trail is this API server's: several API servers each keep their own.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::auth::User;

mod file;

pub use file::Rotating;

/// How many Events may wait for the writer before requests wait for it.
pub const QUEUE: usize = 8192;

/// How often a busy writer takes what queued up (see `Log::open`).
const BUSY_PERIOD: std::time::Duration = std::time::Duration::from_millis(5);

/// Where the trail goes and how much of it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// The size at which the file is rotated (kube-apiserver's `--audit-log-maxsize`, in MB).
    pub max_bytes: u64,
    /// How many rotated files are kept (`--audit-log-maxbackup`).
    pub max_backups: usize,
}

/// One `audit.k8s.io/v1` Event (the fields the `Metadata` level fills).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub level: &'static str,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: &'static str,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    /// Who sent the request (empty when no credential was accepted).
    pub user: User,
    /// Whom the request acted as, when it impersonated someone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<User>,
    #[serde(rename = "sourceIPs")]
    pub source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    pub response_status: ResponseStatus,
    pub request_received_timestamp: String,
    pub stage_timestamp: String,
}

/// What a request named (`objectRef`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ResponseStatus {
    pub metadata: serde_json::Map<String, Value>,
    pub code: u16,
}

impl ResponseStatus {
    pub fn code(code: u16) -> ResponseStatus {
        ResponseStatus {
            metadata: serde_json::Map::new(),
            code,
        }
    }
}

impl Event {
    /// An Event with the constant fields set.
    pub fn new(audit_id: String, request_uri: String, received: jiff::Timestamp) -> Event {
        Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: "Metadata",
            audit_id,
            stage: "ResponseComplete",
            request_uri,
            verb: String::new(),
            user: User::default(),
            impersonated_user: None,
            source_ips: Vec::new(),
            user_agent: String::new(),
            object_ref: None,
            response_status: ResponseStatus::code(0),
            request_received_timestamp: micros(received),
            stage_timestamp: String::new(),
        }
    }
}

/// A timestamp as audit Events carry them (RFC 3339, microseconds, UTC).
pub fn micros(at: jiff::Timestamp) -> String {
    format!("{at:.6}")
}

/// Which Events a read returns: each given field must match exactly; the user matches either
/// the one who sent the request or the one it impersonated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub user: Option<String>,
    pub verb: Option<String>,
    /// At most this many, the most recent (0: no bound).
    pub limit: usize,
}

impl Filter {
    pub fn matches(&self, event: &Value) -> bool {
        let at = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
        let equal = |wanted: &Option<String>, pointer: &str| {
            wanted
                .as_deref()
                .is_none_or(|wanted| at(pointer).unwrap_or("") == wanted)
        };
        equal(&self.resource, "/objectRef/resource")
            && equal(&self.namespace, "/objectRef/namespace")
            && equal(&self.name, "/objectRef/name")
            && equal(&self.verb, "/verb")
            && self.user.as_deref().is_none_or(|user| {
                at("/user/username") == Some(user) || at("/impersonatedUser/username") == Some(user)
            })
    }
}

enum Message {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written and flushed.
    Flush(oneshot::Sender<()>),
}

/// Writes `first` and everything queued behind it, flushes once, then answers the flushes
/// among them.
fn write_queued(file: &mut Rotating, first: Message, received: &mut mpsc::Receiver<Message>) {
    let mut waiting = Vec::new();
    let mut next = Some(first);
    while let Some(message) = next {
        match message {
            Message::Line(line) => {
                if let Err(error) = file.write_line(&line) {
                    tracing::error!(%error, "could not write the audit log");
                }
            }
            Message::Flush(done) => waiting.push(done),
        }
        next = received.try_recv().ok();
    }
    if let Err(error) = file.flush() {
        tracing::error!(%error, "could not write the audit log");
    }
    for done in waiting {
        let _ = done.send(());
    }
}

/// The trail: a queue to its writer thread, and the files to read it back from.
pub struct Log {
    config: AuditConfig,
    queue: mpsc::Sender<Message>,
}

impl Log {
    /// Opens (or creates) the file and starts its writer.
    pub fn open(config: &AuditConfig) -> std::io::Result<Log> {
        let mut file = Rotating::open(&config.path, config.max_bytes, config.max_backups)?;
        let (queue, mut received) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                // Idle, the writer waits for the next Event. Busy, it takes what queued up every
                // `BUSY_PERIOD`, writes it and flushes once: the requests that queue Events
                // then never wake it (a wake is a system call per request, and a context switch).
                while let Some(first) = received.blocking_recv() {
                    let mut next = Some(first);
                    while let Some(message) = next {
                        write_queued(&mut file, message, &mut received);
                        std::thread::sleep(BUSY_PERIOD);
                        next = received.try_recv().ok();
                    }
                }
                if let Err(error) = file.flush() {
                    tracing::error!(%error, "could not write the audit log");
                }
            })?;
        Ok(Log {
            config: config.clone(),
            queue,
        })
    }

    /// Queues `event` (waiting while the queue is full).
    pub async fn record(&self, event: &Event) {
        let mut line = serde_json::to_vec(event).expect("an audit Event serializes");
        line.push(b'\n');
        if self.queue.send(Message::Line(line)).await.is_err() {
            tracing::error!("the audit log's writer stopped");
        }
    }

    /// Waits until everything queued so far is in the file.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// The Events that match `filter`, oldest first, from every file of the trail.
    pub async fn read(&self, filter: Filter) -> std::io::Result<Vec<Value>> {
        self.flush().await;
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || read(&config.path, config.max_backups, &filter))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Reads the files of a trail at `path`, oldest first; lines that are not JSON are skipped
/// (a line cut short by a crash).
pub fn read(path: &Path, max_backups: usize, filter: &Filter) -> std::io::Result<Vec<Value>> {
    use std::io::BufRead;
    let mut found = std::collections::VecDeque::new();
    for file in file::oldest_first(path, max_backups) {
        let opened = match std::fs::File::open(&file) {
            Ok(opened) => opened,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for line in std::io::BufReader::new(opened).lines() {
            let line = line?;
            // Cheap test first: most lines name none of what is asked for.
            let named = [&filter.name, &filter.user, &filter.resource]
                .into_iter()
                .flatten()
                .all(|wanted| line.contains(wanted.as_str()));
            if !named {
                continue;
            }
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if filter.matches(&event) {
                found.push_back(event);
                if filter.limit > 0 && found.len() > filter.limit {
                    found.pop_front();
                }
            }
        }
    }
    Ok(found.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_filter_matches_exact_fields_and_either_user() {
        let event = json!({
            "verb": "patch",
            "user": {"username": "admin"},
            "impersonatedUser": {"username": "alice"},
            "objectRef": {"resource": "sleds", "name": "sled-1"},
        });
        let filter = |f: Filter| f.matches(&event);
        assert!(filter(Filter::default()));
        assert!(filter(Filter {
            resource: Some("sleds".into()),
            name: Some("sled-1".into()),
            ..Filter::default()
        }));
        assert!(!filter(Filter {
            name: Some("sled-10".into()),
            ..Filter::default()
        }));
        assert!(filter(Filter {
            user: Some("alice".into()),
            verb: Some("patch".into()),
            ..Filter::default()
        }));
        assert!(filter(Filter {
            user: Some("admin".into()),
            ..Filter::default()
        }));
        assert!(!filter(Filter {
            user: Some("bob".into()),
            ..Filter::default()
        }));
        assert!(!filter(Filter {
            namespace: Some("team-a".into()),
            ..Filter::default()
        }));
    }

    #[tokio::test]
    async fn what_is_recorded_is_read_back_at_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            path: dir.path().join("audit.log"),
            max_bytes: 1024,
            max_backups: 3,
        };
        let log = Log::open(&config).unwrap();
        let received = jiff::Timestamp::now();
        for i in 0..40 {
            let mut event = Event::new(format!("id-{i}"), format!("/x/{i}"), received);
            event.verb = "create".into();
            event.object_ref = Some(ObjectRef {
                resource: "sleds".into(),
                name: format!("sled-{}", i % 2),
                api_version: "v1".into(),
                ..ObjectRef::default()
            });
            log.record(&event).await;
        }
        // No flush asked for: the read waits for the writer itself.
        let all = log
            .read(Filter {
                resource: Some("sleds".into()),
                name: Some("sled-1".into()),
                ..Filter::default()
            })
            .await
            .unwrap();
        // 40 lines of ~300 bytes rotate through 4 files of 1 KiB: only the newest are kept.
        assert!(!all.is_empty() && all.len() < 20, "{}", all.len());
        let ids: Vec<&str> = all.iter().map(|e| e["auditID"].as_str().unwrap()).collect();
        assert_eq!(ids.last(), Some(&"id-39"));
        let numbers: Vec<u32> = ids.iter().map(|id| id[3..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        let last = log
            .read(Filter {
                limit: 2,
                ..Filter::default()
            })
            .await
            .unwrap();
        let ids: Vec<&str> = last
            .iter()
            .map(|e| e["auditID"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["id-38", "id-39"]);
    }
}
