//! A QMP client: one connection to a QEMU process's monitor socket, shared by every caller.
//!
//! QEMU's monitor serves one client at a time, so each VMM has exactly one [`Qmp`]: commands
//! are sent with an `id` and their replies matched by it; asynchronous events go to the
//! `on_event` callback given at connect time. When QEMU goes away (the socket closes), every
//! pending and later command fails with [`QmpError::Closed`] and `on_event` sees [`Event::Gone`].
//!
//! # Invariants
//! - A command gets exactly one answer: its reply, an error, [`QmpError::Closed`], or
//!   [`QmpError::Timeout`] after [`COMMAND_TIMEOUT`] (a QEMU that stopped answering).
//! - The reader task ends when the socket closes or the [`Qmp`] is dropped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;

/// How long a command may take before QEMU counts as not answering.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a QMP command failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QMP at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP greeting: {0}")]
    Greeting(String),
    #[error("QEMU's monitor is gone")]
    Closed,
    #[error("QEMU did not answer {command} within {COMMAND_TIMEOUT:?}")]
    Timeout { command: String },
    #[error("QEMU refused {command}: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
    #[error("writing to QMP")]
    Write(#[source] std::io::Error),
}

/// What QEMU told without being asked.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A QMP event: its name, data, and when QEMU says it happened.
    Qemu {
        name: String,
        data: Value,
        at: Option<jiff::Timestamp>,
    },
    /// The monitor closed: the process ended (or closed it).
    Gone,
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>>;

/// A connected monitor (see the module docs).
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to the monitor at `path`, negotiates capabilities, and starts reading.
    pub async fn connect(
        path: &Path,
        on_event: impl Fn(Event) + Send + 'static,
    ) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| QmpError::Greeting("none within the timeout".into()))?
            .map_err(|error| QmpError::Greeting(error.to_string()))?
            .ok_or_else(|| QmpError::Greeting("the socket closed".into()))?;
        if !greeting.contains("\"QMP\"") {
            return Err(QmpError::Greeting(greeting));
        }
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader = tokio::spawn(read_loop(lines, pending.clone(), on_event));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            reader,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        match self.pending.lock().expect("qmp lock").as_mut() {
            Some(pending) => pending.insert(id, answer),
            None => return Err(QmpError::Closed),
        };
        let mut message = json!({"execute": command, "id": id});
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = serde_json::to_vec(&message).expect("a JSON value serializes");
        line.push(b'\n');
        let written = {
            let mut writer = self.writer.lock().await;
            writer.write_all(&line).await
        };
        if let Err(error) = written {
            self.forget(id);
            return Err(QmpError::Write(error));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, answered).await {
            Ok(Ok(answer)) => answer.map_err(|error| match error {
                QmpError::Refused { class, desc, .. } => QmpError::Refused {
                    command: command.to_string(),
                    class,
                    desc,
                },
                other => other,
            }),
            Ok(Err(_)) => Err(QmpError::Closed),
            Err(_) => {
                self.forget(id);
                Err(QmpError::Timeout {
                    command: command.to_string(),
                })
            }
        }
    }

    /// Whether the monitor is still connected.
    pub fn is_open(&self) -> bool {
        self.pending.lock().expect("qmp lock").is_some()
    }

    fn forget(&self, id: u64) {
        if let Some(pending) = self.pending.lock().expect("qmp lock").as_mut() {
            pending.remove(&id);
        }
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    on_event: impl Fn(Event),
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            tracing::debug!(%line, "QMP: not JSON");
            continue;
        };
        if let Some(name) = message.get("event").and_then(Value::as_str) {
            on_event(Event::Qemu {
                name: name.to_string(),
                data: message.get("data").cloned().unwrap_or(Value::Null),
                at: timestamp(&message),
            });
            continue;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let answer = match (message.get("return"), message.get("error")) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(error)) => Err(QmpError::Refused {
                command: String::new(),
                class: text(error, "class"),
                desc: text(error, "desc"),
            }),
            (None, None) => continue,
        };
        let waiter = pending
            .lock()
            .expect("qmp lock")
            .as_mut()
            .and_then(|pending| pending.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer);
        }
    }
    // Closing the map fails every waiter (their senders drop) and every later command.
    pending.lock().expect("qmp lock").take();
    on_event(Event::Gone);
}

/// An event's `timestamp` (`{"seconds": S, "microseconds": U}`, the host's clock).
fn timestamp(message: &Value) -> Option<jiff::Timestamp> {
    let at = message.get("timestamp")?;
    let seconds = at.get("seconds")?.as_i64()?;
    let micros = at.get("microseconds")?.as_i64()?;
    jiff::Timestamp::from_microsecond(seconds.checked_mul(1_000_000)?.checked_add(micros)?).ok()
}

fn text(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
