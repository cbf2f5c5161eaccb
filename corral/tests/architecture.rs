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
fn the_harness_starts_processes_and_knows_only_the_api() {
    let deps = &dependencies()["corral-harness"];
    for forbidden in [
        "corral-store",
        "corral-apiserver",
        "corral-controllers",
        "corral-node-agent",
    ] {
        assert!(
            !deps.contains(forbidden),
            "corral-harness depends on {forbidden}"
        );
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
const CRATES: [&str; 11] = [
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
    "harness",
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
fn the_module_checks_cover_every_crate_of_the_workspace() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace())
        .output()
        .expect("running cargo metadata");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut members: Vec<String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let manifest = std::path::PathBuf::from(package["manifest_path"].as_str().unwrap());
            let dir = manifest
                .parent()
                .unwrap()
                .strip_prefix(workspace())
                .unwrap();
            dir.display().to_string()
        })
        .collect();
    members.sort();
    let mut checked: Vec<String> = CRATES.iter().map(|c| c.to_string()).collect();
    checked.sort();
    assert_eq!(checked, members);
}

#[test]
fn no_module_reaches_itself_through_others() {
    let mut circles = Vec::new();
    for name in CRATES {
        let source = modules::Crate::read(&workspace().join(name));
        assert!(
            !source.modules.is_empty(),
            "{name} has no source (the crate list is stale)"
        );
        for circle in source.circles() {
            circles.push(format!("{name}: {}", circle.join(" ↔ ")));
        }
    }
    assert!(
        circles.is_empty(),
        "module circles (architecture/modules.rs has the rules): {circles:#?}"
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
                long.push(format!("{} ({lines} lines)", relative.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "non-test source files over {MAX_LINES} lines: {long:#?}"
    );
}

/// What only the controllers' kit may name: API writes, Event recording, readiness flags and
/// the "already done" matches (`controllers/src/kit/`).
const KIT_ONLY: [&str; 12] = [
    "Api::",
    "Api<",
    "Recorder",
    "replace_status",
    "patch_status",
    "PostParams",
    "PatchParams",
    "DeleteParams",
    "status.code",
    "idempotent",
    "AtomicBool",
    "enum Severity",
];

#[test]
fn the_kit_is_the_only_place_controllers_build_effects() {
    let controllers = modules::Crate::read(&workspace().join("controllers"));
    let mut found = Vec::new();
    for (module, code) in &controllers.modules {
        if module.first().is_some_and(|m| m == "kit") {
            continue;
        }
        for token in KIT_ONLY {
            if code.contains(token) {
                found.push(format!("{} names {token}", modules::display(module)));
            }
        }
    }
    assert!(found.is_empty(), "outside the kit: {found:#?}");
}

#[test]
fn only_the_node_agents_simulator_names_the_simulator() {
    let source = modules::Crate::read(&workspace().join("node-agent"));
    let simulator: modules::Module = vec!["sim".to_string()];
    assert!(
        source.modules.contains_key(&simulator),
        "the node-agent keeps its simulator in sim/"
    );
    let mut naming = Vec::new();
    for (module, targets) in source.edges() {
        if module.starts_with(&simulator) {
            continue;
        }
        for target in targets.iter().filter(|t| t.starts_with(&simulator)) {
            naming.push(format!(
                "{} names {}",
                modules::display(&module),
                modules::display(target)
            ));
        }
    }
    assert!(
        naming.is_empty(),
        "the node-agent outside sim/ knows only the traits (Hypervisor, V2pTable, \
         PowerController), never the simulator: {naming:#?}"
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
