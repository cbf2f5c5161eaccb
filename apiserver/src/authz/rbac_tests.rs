use super::*;

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Rule {
        verbs: strings(verbs),
        api_groups: strings(groups),
        resources: strings(resources),
        resource_names: strings(names),
        non_resource_urls: Vec::new(),
    }
}

fn on(verb: &str, resource: &str, sub: Option<&str>, name: Option<&str>) -> Attributes {
    Attributes::resource(verb, "corral.dev", resource, sub, Some("team-a"), name)
}

#[test]
fn a_rule_allows_its_verbs_groups_resources_and_names() {
    let instances = rule(&["get", "create"], &["corral.dev"], &["instances"], &[]);
    assert!(instances.allows(&on("create", "instances", None, None)));
    assert!(!instances.allows(&on("delete", "instances", None, Some("a"))));
    assert!(!instances.allows(&on("get", "sleds", None, Some("a"))));
    assert!(!instances.allows(&on("get", "instances", Some("status"), Some("a"))));
    let other_group = Attributes::resource("get", "", "instances", None, None, None);
    assert!(!instances.allows(&other_group));

    let named = rule(&["patch"], &["corral.dev"], &["sleds"], &["sled-1"]);
    assert!(named.allows(&on("patch", "sleds", None, Some("sled-1"))));
    assert!(!named.allows(&on("patch", "sleds", None, Some("sled-2"))));
    // A rule with names never allows a request that names nothing (a list, a create).
    assert!(!named.allows(&on("patch", "sleds", None, None)));
}

#[test]
fn wildcards_and_subresources() {
    let all = rule(&["*"], &["*"], &["*"], &[]);
    assert!(all.allows(&on("escalate", "roles", None, None)));
    let statuses = rule(&["update"], &["corral.dev"], &["*/status"], &[]);
    assert!(statuses.allows(&on("update", "vmms", Some("status"), Some("v"))));
    assert!(!statuses.allows(&on("update", "vmms", None, Some("v"))));
    let vmm_status = rule(&["patch"], &["corral.dev"], &["vmms/status"], &[]);
    assert!(vmm_status.allows(&on("patch", "vmms", Some("status"), Some("v"))));
    assert!(!vmm_status.allows(&on("patch", "sleds", Some("status"), Some("v"))));
}

#[test]
fn non_resource_urls_match_whole_paths_or_star_prefixes() {
    let discovery = Rule {
        verbs: vec!["get".into()],
        non_resource_urls: vec!["/api".into(), "/apis/*".into()],
        ..Rule::default()
    };
    assert!(discovery.allows(&Attributes::path("get", "/api")));
    assert!(discovery.allows(&Attributes::path("get", "/apis/corral.dev/v1alpha1")));
    assert!(!discovery.allows(&Attributes::path("get", "/api/v1")));
    assert!(!discovery.allows(&Attributes::path("post", "/api")));
    // A resource rule never allows a path, nor a path rule a resource.
    assert!(!discovery.allows(&on("get", "instances", None, None)));
    let resources = rule(&["get"], &["*"], &["*"], &[]);
    assert!(!resources.allows(&Attributes::path("get", "/api")));
}
