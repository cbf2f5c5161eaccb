//! The Python `kubernetes` client (installed by scripts/setup.sh) against the real
//! `corral apiserver`, on both backends. The scenario is in tests/data/python_client.py.

mod common;

use std::path::Path;
use std::process::Command;

use common::Backend;

fn run(backend: Backend) {
    let server = common::apiserver(backend);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/python_client.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(server.kubeconfig())
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the Python client scenario failed:\n{stderr}\nserver log:\n{}",
        server.log()
    );
    assert!(stdout.contains("python client: ok"));
}

#[test]
fn python_client_works_against_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn python_client_works_against_etcd() {
    run(Backend::Etcd);
}
