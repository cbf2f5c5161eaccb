//! Clients that would hold the server up: one that sends its request head a byte a second, one
//! that connects and sends nothing. Each is disconnected after the header-read timeout, while
//! everyone else is served, and a watch — a long answer, not a slow request — lives on.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use super::BASE;
use super::limits::open_stream;
use crate::common::{self, Backend, http};

/// Whether the server has closed `stream`, waiting at most `wait` for it to.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).expect("a read timeout");
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

fn assert_serving(address: SocketAddr) {
    let (status, body) = http(address, "GET", "/healthz", &[], b"");
    assert_eq!(status, 200, "{body}");
}

fn slow_clients_are_disconnected(backend: Backend) {
    let server = common::apiserver_with(backend, &["--header-read-timeout", "1s"]);
    let address = server.address();
    // A watch outlives the header-read timeout: it is an answer, not a slow request.
    let (status, mut watch) = open_stream(address, &format!("{BASE}?watch=true"));
    assert_eq!(status, 200);

    // A client that sends its request head one byte a second (deliberately slow: at most the
    // head's length in seconds).
    let started = Instant::now();
    let mut slow = TcpStream::connect(address).expect("connecting");
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let mut dropped_after = None;
    for byte in head.bytes() {
        if slow.write_all(&[byte]).is_err() || closed_within(&mut slow, Duration::from_secs(1)) {
            dropped_after = Some(started.elapsed());
            break;
        }
        // Meanwhile everyone else is served.
        assert_serving(address);
    }
    let dropped_after = dropped_after.expect("the slow client was disconnected");
    assert!(
        dropped_after < Duration::from_secs(5),
        "disconnected after {dropped_after:?}"
    );

    // A client that connects and sends nothing.
    let mut idle = TcpStream::connect(address).expect("connecting");
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)),
        "an idle connection is closed"
    );
    assert_serving(address);

    // The watch opened before all this still delivers.
    let json_ct = [("Content-Type", "application/json")];
    let widget = json!({"apiVersion": "test.corral.dev/v1", "kind": "Widget",
                        "metadata": {"name": "after"}, "spec": {"color": "red"}});
    let (status, body) = http(
        address,
        "POST",
        BASE,
        &json_ct,
        widget.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let mut size = String::new();
    watch.read_line(&mut size).expect("a chunk size");
    let mut event = String::new();
    watch.read_line(&mut event).expect("an event");
    assert!(event.contains(r#""name":"after""#), "{event}");
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the watch outlived the header-read timeout"
    );
}

#[test]
fn slow_clients_are_disconnected_on_sqlite() {
    slow_clients_are_disconnected(Backend::Sqlite);
}

#[test]
fn slow_clients_are_disconnected_on_etcd() {
    slow_clients_are_disconnected(Backend::Etcd);
}
