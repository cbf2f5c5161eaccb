use std::time::{Duration, Instant};

use super::*;

/// Runs `f` on a thread with the stack of a Tokio worker (2 MiB), where handlers run.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("spawning a thread")
        .join()
        .expect("the thread did not panic")
}

/// Nine anchors, each ten aliases of the one before: 10^9 strings once expanded.
fn billion_laughs() -> String {
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\na0: &a0 [lol]\n");
    for i in 1..10 {
        let aliases = vec![format!("*a{}", i - 1); 10].join(", ");
        yaml.push_str(&format!("a{i}: &a{i} [{aliases}]\n"));
    }
    yaml
}

#[test]
fn a_yaml_alias_bomb_is_refused_quickly() {
    let started = Instant::now();
    let error = on_worker_stack(|| parse_yaml(&billion_laughs()).map_err(|e| e.to_string()));
    assert!(error.is_err(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn yaml_nests_to_its_limit_and_json_text_to_the_json_decoders() {
    let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    let deepest = format!("a: {}", nested(YAML_MAX_DEPTH - 1));
    let parsed = on_worker_stack(move || parse_yaml(&deepest).map_err(|e| e.to_string()));
    assert!(
        parsed.is_ok(),
        "{YAML_MAX_DEPTH} levels are read: {parsed:?}"
    );
    let deeper = format!("a: {}", nested(YAML_MAX_DEPTH));
    assert!(on_worker_stack(move || parse_yaml(&deeper).is_err()));
    let json = format!(r#"{{"a": {}}}"#, nested(120));
    assert!(on_worker_stack(move || parse_yaml(&json).is_ok()));
    // Aliases cannot nest past the limit either.
    let mut yaml = format!("a0: &a0 {}\n", nested(60));
    for i in 1..8 {
        yaml.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
    }
    yaml.push_str(&format!("deep: {}*a7{}\n", "[".repeat(60), "]".repeat(60)));
    assert!(on_worker_stack(move || parse_yaml(&yaml).is_err()));
}

#[test]
fn a_body_of_many_small_values_is_read() {
    // What a large but plain object holds: more nodes than the library's default budget.
    let items: Vec<String> = (0..400_000).map(|i| (i % 10).to_string()).collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nitems: [{}]\n",
        items.join(",")
    );
    assert!(yaml.len() < 3 * 1024 * 1024);
    let value = parse_yaml(&yaml).expect("a plain body is read");
    assert_eq!(value["items"].as_array().map(Vec::len), Some(400_000));
}
