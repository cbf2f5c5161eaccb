//! Free loopback ports for the processes a test starts.
//!
//! # Guarantees
//! - A port is free when it is handed out, and this process never hands the same port out
//!   twice. The kernel offers a port again as soon as its listener closes, and a port handed to
//!   a child that has not bound it yet is closed: without the ledger, two processes of one
//!   test (an agent's fault API and another agent's power controller, say) could be given the
//!   same port, and one of them would fail to start.
//!
//! # Assumptions
//! - Another process on the machine may still take a port between its handing out and its
//!   binding: starters retry on new ports when a child reports `Address already in use`.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// How many ports one request draws from the kernel before it gives up finding one this
/// process was not handed before.
const DRAWS: usize = 64;

/// Every port this process has handed out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free loopback address this process was never handed before.
pub fn free_address() -> io::Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_ports(1)?[0])))
}

/// `count` distinct free loopback ports this process was never handed before.
pub fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    // Every listener is held until the end, so the kernel offers a new port on each draw.
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(count);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    while ports.len() < count {
        if held.len() >= count + DRAWS {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{DRAWS} loopback ports drawn in a row had been handed out before"),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        held.push(listener);
        if !handed_out.contains(&port) {
            ports.push(port);
        }
    }
    handed_out.extend(&ports);
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_port_is_handed_out_twice() {
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let port = free_address().expect("a free port").port();
            assert!(seen.insert(port), "port {port} was handed out twice");
        }
        let batch = free_ports(50).expect("free ports");
        for port in batch {
            assert!(seen.insert(port), "port {port} was handed out twice");
        }
    }
}
