//! The crate graph keeps the architecture's promises (ARCHITECTURE.md): clients reach the
//! store only through the API, and only the storage crate names the engines.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Normal (non-dev) dependency names of every workspace package.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let deps = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (package["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn clients_never_depend_on_the_store() {
    for (package, deps) in dependencies() {
        if [
            "corral-controllers",
            "corral-node-agent",
            "corral-cli",
            "corral-client",
            "corral-e2e",
        ]
        .contains(&package.as_str())
        {
            for forbidden in ["corral-store", "corral-apiserver"] {
                assert!(
                    !deps.contains(forbidden),
                    "{package} depends on {forbidden}"
                );
            }
        }
    }
}

#[test]
fn only_the_store_names_the_engines() {
    for (package, deps) in dependencies() {
        if deps.contains("etcd-client") {
            assert_eq!(package, "corral-store", "{package} names etcd-client");
        }
        if deps.contains("sqlx") {
            // The node-agent's local journal is the one other SQLite user (docs/rack.md).
            assert!(
                package == "corral-store" || package == "corral-node-agent",
                "{package} names sqlx"
            );
        }
    }
}

#[test]
fn the_api_layers_know_no_corral_kind() {
    for (package, deps) in dependencies() {
        if ["corral-store", "corral-apimachinery", "corral-apiserver"].contains(&package.as_str()) {
            assert!(
                !deps.contains("corral-crds"),
                "{package} depends on corral-crds"
            );
        }
    }
}
