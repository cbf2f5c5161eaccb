//! Clients that would hold the server up, each answered while everyone else is served:
//!
//! - one that sends its request head a byte a second, one that connects and sends nothing:
//!   disconnected after the header-read timeout (a watch, a long answer, lives on);
//! - more requests in flight than the server works on at once: 429 with `Retry-After: 1`,
//!   read-only and mutating requests each against their own limit, probes and watches never;
//! - a request that takes too long (here: a body that never comes whole): 504;
//! - more watches from one client than it may hold: 429, while other clients watch on. A
//!   client is its user: the same user from another address is the same client, another user
//!   from the same address another.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_harness::{block_on, wait_for_blocking};
use serde_json::{Value, json};

use super::BASE;
use super::limits::{next_event, open_stream};
use crate::common::{self, Backend, Endpoint, Reach, TlsStream, connect, http, read_all};

/// An answer: status, headers (lowercase names) and the parsed body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A 429 as kube-apiserver's limits answer: a `TooManyRequests` Status with
    /// `Retry-After: 1`.
    fn assert_too_many_requests(&self, what: &str) {
        assert_eq!(self.status, 429, "{what}: {}", self.body);
        assert_eq!(self.header("retry-after"), Some("1"), "{what}");
        assert_eq!(self.body["kind"], "Status", "{what}");
        assert_eq!(self.body["reason"], "TooManyRequests", "{what}");
        assert_eq!(self.body["code"], 429, "{what}");
        assert_eq!(self.body["details"]["retryAfterSeconds"], 1, "{what}");
    }
}

/// One request on a connection of its own, read to its end.
fn request(to: &Endpoint, method: &str, path: &str, body: &str) -> Answer {
    let stream = connect(to, Duration::from_secs(30)).expect("connecting");
    send(stream, to, method, path, body)
}

fn send(mut stream: TlsStream, to: &Endpoint, method: &str, path: &str, body: &str) -> Answer {
    let address = to.address;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("writing a request");
    stream.flush().expect("sending a request");
    let mut response = Vec::new();
    read_all(&mut stream, &mut response);
    parse(&String::from_utf8_lossy(&response))
}

fn parse(text: &str) -> Answer {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    // A chunked body (small answers come in one chunk): take the JSON out of it.
    let json = body
        .find('{')
        .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
        .unwrap_or("");
    Answer {
        status,
        headers,
        body: serde_json::from_str(json).unwrap_or(Value::Null),
    }
}

fn widget(name: &str) -> String {
    json!({"apiVersion": "test.corral.dev/v1", "kind": "Widget",
           "metadata": {"name": name}, "spec": {"color": "red"}})
    .to_string()
}

/// Bytes a body promises beyond what [`hold_with_unfinished_body`] sends.
const MISSING: usize = 16;

/// A POST whose body does not come whole: a mutating request in flight for as long as the
/// connection stays open (or until the request timeout).
fn hold_with_unfinished_body(to: &Endpoint, name: &str) -> TlsStream {
    let mut stream = connect(to, Duration::from_secs(30)).expect("connecting");
    let body = widget(name);
    write!(
        stream,
        "POST {BASE} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        to.address,
        body.len() + MISSING
    )
    .expect("writing a request");
    stream.flush().expect("sending a request");
    stream
}

/// Whether the server has answered (or closed) `stream` yet.
fn answered(stream: &mut TlsStream) -> bool {
    stream
        .sock
        .set_nonblocking(true)
        .expect("a non-blocking stream");
    let mut byte = [0u8; 1];
    let answered =
        !matches!(stream.sock.peek(&mut byte), Err(error) if error.kind() == ErrorKind::WouldBlock);
    stream
        .sock
        .set_nonblocking(false)
        .expect("a blocking stream");
    answered
}

/// The rest of [`hold_with_unfinished_body`]'s body (JSON allows trailing blanks), and the answer.
fn finish_body(mut stream: TlsStream) -> Answer {
    stream
        .write_all(&[b' '; MISSING])
        .expect("writing the rest");
    stream.flush().expect("sending the rest");
    let mut response = Vec::new();
    read_all(&mut stream, &mut response);
    parse(&String::from_utf8_lossy(&response))
}

/// Waits (at most 20 s) for `probe` to give an answer with `status`.
fn wait_for_status(what: &str, status: u16, mut probe: impl FnMut() -> Answer) -> Answer {
    wait_for_blocking(what, Duration::from_secs(20), || {
        let answer = probe();
        if answer.status == status {
            Ok(answer)
        } else {
            Err(format!("answered {}: {}", answer.status, answer.body))
        }
    })
    .unwrap_or_else(|error| panic!("{error}"))
    .0
}

/// Whether the server has closed `stream`, waiting at most `wait` for it to.
fn closed_within(stream: &mut TlsStream, wait: Duration) -> bool {
    stream
        .sock
        .set_read_timeout(Some(wait))
        .expect("a read timeout");
    let mut buffer = [0u8; 256];
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Ok(read) => panic!(
            "answered a request it never got whole: {:?}",
            String::from_utf8_lossy(&buffer[..read])
        ),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

fn assert_serving(to: &Endpoint) {
    let (status, body) = http(to, "GET", "/healthz", &[], b"");
    assert_eq!(status, 200, "{body}");
}

fn slow_clients_are_disconnected(backend: Backend) {
    let server = common::apiserver_with(backend, &["--header-read-timeout", "1s"]);
    let to = server.endpoint();
    // A watch outlives the header-read timeout: it is an answer, not a slow request.
    let (status, mut watch) = open_stream(&to, &format!("{BASE}?watch=true"));
    assert_eq!(status, 200);

    // A client that sends its request head one byte a second (deliberately slow: at most the
    // head's length in seconds).
    let started = Instant::now();
    let mut slow = connect(&to, Duration::from_secs(1)).expect("connecting");
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", to.address);
    let mut dropped_after = None;
    for byte in head.bytes() {
        let sent = slow.write_all(&[byte]).and_then(|()| slow.flush());
        if sent.is_err() || closed_within(&mut slow, Duration::from_secs(1)) {
            dropped_after = Some(started.elapsed());
            break;
        }
        // Meanwhile everyone else is served.
        assert_serving(&to);
    }
    let dropped_after = dropped_after.expect("the slow client was disconnected");
    assert!(
        dropped_after < Duration::from_secs(5),
        "disconnected after {dropped_after:?}"
    );

    // A client that connects and sends nothing.
    let mut idle = connect(&to, Duration::from_secs(5)).expect("connecting");
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)),
        "an idle connection is closed"
    );
    assert_serving(&to);

    // The watch opened before all this still delivers.
    let json_ct = [("Content-Type", "application/json")];
    let widget = json!({"apiVersion": "test.corral.dev/v1", "kind": "Widget",
                        "metadata": {"name": "after"}, "spec": {"color": "red"}});
    let (status, body) = http(&to, "POST", BASE, &json_ct, widget.to_string().as_bytes());
    assert_eq!(status, 201, "{body}");
    let event = next_event(&mut watch);
    assert!(event.contains(r#""name":"after""#), "{event}");
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the watch outlived the header-read timeout"
    );
}

fn too_many_requests_in_flight(backend: Backend) {
    let server = common::apiserver_with(
        backend,
        &[
            "--max-requests-inflight",
            "1",
            "--max-mutating-requests-inflight",
            "1",
        ],
    );
    let to = server.endpoint();
    // A write in flight (its body never comes) takes the one mutating place.
    let mut held = hold_with_unfinished_body(&to, "held");
    let refused = wait_for_status("a write refused", 429, || {
        // A probe can take the place before the held write does, which is then refused
        // itself: hold again.
        if answered(&mut held) {
            held = hold_with_unfinished_body(&to, "held");
        }
        request(&to, "POST", BASE, &widget("other"))
    });
    refused.assert_too_many_requests("a second write");
    // Reads have places of their own; probes and watches take none.
    assert_eq!(request(&to, "GET", BASE, "").status, 200);
    assert_eq!(request(&to, "GET", "/readyz", "").status, 200);
    let (status, _watch) = open_stream(&to, &format!("{BASE}?watch=true"));
    assert_eq!(status, 200);

    // A read in flight takes the one read-only place: a list waiting (3 s) for a revision the
    // store has not reached, again and again until a read is refused.
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let (stop, to) = (stop.clone(), to.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                request(&to, "GET", &format!("{BASE}?resourceVersion=999999999"), "");
            }
        })
    };
    let refused = wait_for_status("a read refused", 429, || request(&to, "GET", BASE, ""));
    refused.assert_too_many_requests("a second read");
    assert_eq!(request(&to, "GET", "/healthz", "").status, 200);
    stop.store(true, Ordering::Relaxed);
    holder.join().expect("the holder did not panic");
    wait_for_status("reads served again", 200, || request(&to, "GET", BASE, ""));

    // The held write completes once its body does, and writes are served again.
    assert_eq!(finish_body(held).status, 201);
    assert_eq!(request(&to, "POST", BASE, &widget("after")).status, 201);
}

fn slow_requests_time_out(backend: Backend) {
    let server = common::apiserver_with(backend, &["--request-timeout", "1s"]);
    let to = server.endpoint();
    let started = Instant::now();
    let mut held = hold_with_unfinished_body(&to, "slow");
    // Meanwhile everyone else is served.
    assert_eq!(request(&to, "GET", BASE, "").status, 200);
    held.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let mut response = Vec::new();
    read_all(&mut held, &mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let answer = parse(&text);
    assert_eq!(answer.status, 504, "{text}");
    assert_eq!(answer.body["reason"], "Timeout", "{text}");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not complete within")),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing of it was stored, and the server serves on.
    assert_eq!(request(&to, "GET", &format!("{BASE}/slow"), "").status, 404);
    assert_eq!(request(&to, "POST", BASE, &widget("fast")).status, 201);
}

/// A TLS connection to `to` from `source`, another loopback address than 127.0.0.1: another
/// client.
fn connect_from(source: &str, to: &Endpoint) -> TlsStream {
    let address = to.address;
    let stream = block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse().expect("an address"))?;
        socket.connect(address).await
    })
    .expect("connecting from another address");
    let stream = stream.into_std().expect("a std stream");
    stream.set_nonblocking(false).expect("a blocking stream");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let connection = rustls::ClientConnection::new(
        to.tls.config().clone(),
        rustls::pki_types::ServerName::IpAddress(address.ip().into()),
    )
    .expect("a TLS client");
    rustls::StreamOwned::new(connection, stream)
}

fn too_many_watches_from_one_client(backend: Backend) {
    let server = common::apiserver_with(backend, &["--max-watches-per-client", "2"]);
    let to = server.endpoint();
    let watch = format!("{BASE}?watch=true");
    let (first, mut first_stream) = open_stream(&to, &watch);
    let (second, _second_stream) = open_stream(&to, &watch);
    assert_eq!((first, second), (200, 200));
    request(&to, "GET", &watch, "").assert_too_many_requests("a third watch");
    // The same user from another address is the same client.
    let elsewhere = connect_from("127.0.0.2", &to);
    send(elsewhere, &to, "GET", &watch, "")
        .assert_too_many_requests("a third watch from another address");
    // Another user, from the same address, watches on; and everything else is served.
    let issued = std::process::Command::new(common::corral())
        .args(["certs", "--dir"])
        .arg(server.pki())
        .args(["--user", "carol:system:masters"])
        .output()
        .expect("corral certs");
    assert!(issued.status.success(), "{issued:?}");
    let carol = Endpoint {
        address: to.address,
        tls: corral_harness::tls::ClientTls::from_pki(server.pki(), Some("carol"))
            .expect("carol's certificate"),
    };
    let other = request(&carol, "GET", &format!("{watch}&timeoutSeconds=1"), "");
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(request(&to, "GET", BASE, "").status, 200);
    // A watch that ends gives its place back.
    first_stream
        .get_mut()
        .sock
        .shutdown(std::net::Shutdown::Both)
        .expect("closing a watch");
    drop(first_stream);
    let (status, _third) = wait_for_blocking(
        "a watch's place given back",
        Duration::from_secs(20),
        || {
            let (status, stream) = open_stream(&to, &watch);
            if status == 200 {
                Ok((status, stream))
            } else {
                Err(format!("answered {status}"))
            }
        },
    )
    .unwrap_or_else(|error| panic!("{error}"))
    .0;
    assert_eq!(status, 200);
}

#[test]
fn too_many_requests_in_flight_on_sqlite() {
    too_many_requests_in_flight(Backend::Sqlite);
}

#[test]
fn too_many_requests_in_flight_on_etcd() {
    too_many_requests_in_flight(Backend::Etcd);
}

#[test]
fn slow_requests_time_out_on_sqlite() {
    slow_requests_time_out(Backend::Sqlite);
}

#[test]
fn slow_requests_time_out_on_etcd() {
    slow_requests_time_out(Backend::Etcd);
}

#[test]
fn too_many_watches_from_one_client_on_sqlite() {
    too_many_watches_from_one_client(Backend::Sqlite);
}

#[test]
fn too_many_watches_from_one_client_on_etcd() {
    too_many_watches_from_one_client(Backend::Etcd);
}

#[test]
fn slow_clients_are_disconnected_on_sqlite() {
    slow_clients_are_disconnected(Backend::Sqlite);
}

#[test]
fn slow_clients_are_disconnected_on_etcd() {
    slow_clients_are_disconnected(Backend::Etcd);
}
