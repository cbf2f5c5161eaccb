//! The crate graph keeps the architecture's promises (ARCHITECTURE.md): clients reach the
//! store only through the API, and only the storage crate names the engines; no module reaches
//! itself through others, and no source file is a god module.

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

#[path = "architecture/modules.rs"]
mod modules;

/// Every workspace crate with a `src/`.
const CRATES: [&str; 10] = [
    "crds",
    "store",
    "apimachinery",
    "apiserver",
    "client",
    "controllers",
    "corral",
    "cli",
    "node-agent",
    "e2e",
];

/// Circles still being taken apart, as `crate: a ↔ b`. Listed so that a new one fails at once;
/// a circle that is gone must leave the list too.
const KNOWN_CIRCLES: &[&str] = &[
    "apimachinery: schema ↔ schema::defaults ↔ schema::embedded ↔ schema::listtype ↔ schema::prune ↔ schema::validate",
    "controllers: instance::migrate ↔ instance::plan",
    "corral: bench ↔ bench::api ↔ bench::drain ↔ bench::rack ↔ bench::rack::measure ↔ bench::v2p ↔ crate ↔ rack",
    "cli: apply ↔ cli ↔ crate ↔ delete ↔ describe ↔ diff ↔ drain ↔ events ↔ get ↔ lifecycle ↔ wait",
    "node-agent: plan ↔ plan_migration",
    "node-agent: migration ↔ migration::target ↔ reconcile",
];

/// Non-test source files over the limit, still being split.
const KNOWN_LONG_FILES: &[&str] = &[
    "apimachinery/src/schema/validate.rs",
    "apimachinery/src/validation/objectmeta.rs",
    "controllers/src/instance/plan.rs",
];

/// The most lines a non-test source file may have (STYLE.md: no god modules).
const MAX_LINES: usize = 800;

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

#[test]
fn no_module_reaches_itself_through_others() {
    let mut found = Vec::new();
    for name in CRATES {
        let source = modules::Crate::read(&workspace().join(name));
        for circle in source.circles() {
            found.push(format!("{name}: {}", circle.join(" ↔ ")));
        }
    }
    let known: Vec<String> = KNOWN_CIRCLES.iter().map(|c| c.to_string()).collect();
    let new: Vec<&String> = found.iter().filter(|c| !known.contains(c)).collect();
    let gone: Vec<&String> = known.iter().filter(|c| !found.contains(c)).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "module circles (modules.rs has the rules): new {new:#?}; gone but still listed {gone:#?}"
    );
}

#[test]
fn no_source_file_is_a_god_module() {
    let mut long = Vec::new();
    for name in CRATES {
        let source = modules::Crate::read(&workspace().join(name));
        for (file, lines) in source.lines {
            if lines > MAX_LINES {
                let relative = file.strip_prefix(workspace()).unwrap_or(&file);
                long.push(relative.display().to_string());
            }
        }
    }
    let new: Vec<&String> = long.iter().filter(|f| !KNOWN_LONG_FILES.contains(&f.as_str())).collect();
    let gone: Vec<&&str> = KNOWN_LONG_FILES.iter().filter(|f| !long.iter().any(|l| l == *f)).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "non-test source files over {MAX_LINES} lines: new {new:#?}; split but still listed {gone:#?}"
    );
}

/// The API server's handlers are its HTTP edge: the object layer, the garbage collector and
/// start-up never reach into them (they share the object layer instead). Only the crate root
/// names `handlers`, and only its root module, to mount the router.
#[test]
fn only_the_router_wiring_names_the_apiservers_handlers() {
    let source = modules::Crate::read(&workspace().join("apiserver"));
    let handlers = vec!["handlers".to_string()];
    let mut found = Vec::new();
    for (module, targets) in source.edges() {
        if module.starts_with(&handlers) {
            continue;
        }
        for target in targets.iter().filter(|t| t.starts_with(&handlers)) {
            let router_wiring = module.is_empty() && *target == handlers;
            if !router_wiring {
                found.push(format!(
                    "{} names {}",
                    modules::display(&module),
                    modules::display(target)
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "modules outside the API server's handlers name them: {found:#?}"
    );
}
