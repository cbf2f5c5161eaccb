//! `apply`: create then change, from a multi-document file, a directory and stdin; `--prune`;
//! broken manifests that name file, document and field and apply nothing.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_multi_document_file_is_created_then_changed() {
    let rack = Rack::start().await;
    let first = format!(
        "{}---\n{}---\napiVersion: corral.dev/v1alpha1\nkind: Sled\nmetadata:\n  name: s1\nspec:\n  failureDomain: shelf-a\n",
        instance_yaml("web-1", "2", "app: web"),
        instance_yaml("web-2", "2", "app: web"),
    );
    let path = rack.write("web.yaml", &first);
    let path = path.to_str().unwrap();
    let run = rack.corralctl(&["apply", "-f", path]).await.ok();
    assert_eq!(
        run.stdout,
        "instance.corral.dev/web-1 created\ninstance.corral.dev/web-2 created\nsled.corral.dev/s1 created\n"
    );
    let web1 = rack.instances("default").get("web-1").await.unwrap();
    assert_eq!(at(&web1, "/spec/cpus"), json!(2));
    assert_eq!(
        at(&web1, "/metadata/annotations/corral.dev~1applied-by"),
        json!("corralctl")
    );
    assert_eq!(
        at(
            &rack.sleds().get("s1").await.unwrap(),
            "/spec/failureDomain"
        ),
        json!("shelf-a")
    );

    let changed = first.replacen("cpus: 2", "cpus: 4", 1);
    rack.write("web.yaml", &changed);
    let run = rack.corralctl(&["apply", "-f", path]).await.ok();
    assert_eq!(
        run.stdout,
        "instance.corral.dev/web-1 configured\ninstance.corral.dev/web-2 unchanged\nsled.corral.dev/s1 unchanged\n"
    );
    let web1 = rack.instances("default").get("web-1").await.unwrap();
    assert_eq!(at(&web1, "/spec/cpus"), json!(4));
}

#[tokio::test]
async fn a_directory_is_applied_in_name_order_and_stdin_too() {
    let rack = Rack::start().await;
    rack.namespace("prod").await;
    rack.write("set/b.yaml", &instance_yaml("b", "1", ""));
    rack.write(
        "set/a.json",
        r#"{"apiVersion": "corral.dev/v1alpha1", "kind": "Instance",
            "metadata": {"name": "a", "namespace": "prod"},
            "spec": {"cpus": 1, "memoryMiB": 512, "image": "debian-12"}}"#,
    );
    rack.write("set/README.md", "not a manifest");
    let dir = rack.server.dir().join("set");
    let run = rack
        .corralctl(&["apply", "-f", dir.to_str().unwrap()])
        .await
        .ok();
    assert_eq!(
        run.stdout,
        "instance.corral.dev/a created\ninstance.corral.dev/b created\n"
    );
    assert!(rack.instances("prod").get_opt("a").await.unwrap().is_some());
    assert!(
        rack.instances("default")
            .get_opt("b")
            .await
            .unwrap()
            .is_some()
    );

    let run = rack
        .corralctl_with_stdin(
            &["apply", "-n", "prod", "-f", "-"],
            Some(&instance_yaml("c", "3", "")),
        )
        .await
        .ok();
    assert_eq!(run.stdout, "instance.corral.dev/c created\n");
    let c = rack.instances("prod").get("c").await.unwrap();
    assert_eq!(at(&c, "/spec/cpus"), json!(3));
    // Applying the same text again changes nothing.
    let run = rack
        .corralctl_with_stdin(
            &["apply", "-n", "prod", "-f", "-"],
            Some(&instance_yaml("c", "3", "")),
        )
        .await
        .ok();
    assert_eq!(run.stdout, "instance.corral.dev/c unchanged\n");
}

#[tokio::test]
async fn prune_deletes_what_the_set_no_longer_holds_and_nothing_else() {
    let rack = Rack::start().await;
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| instance_yaml(n, "1", "app: web"))
            .collect::<Vec<_>>()
            .join("---\n")
    };
    let path = rack.write("web.yaml", &set(&["a", "b", "c"]));
    let path = path.to_str().unwrap();
    rack.corralctl(&["apply", "-f", path, "--prune", "-l", "app=web"])
        .await
        .ok();
    // Not applied by corralctl, though it matches the selector: never pruned.
    let mut foreign = instance_json("foreign", "Always");
    foreign["metadata"]["labels"] = json!({"app": "web"});
    rack.create(&rack.instances("default"), foreign).await;
    // Applied by corralctl, but under another selector: not pruned by this set.
    let other = rack.write("other.yaml", &instance_yaml("other", "1", "app: db"));
    rack.corralctl(&["apply", "-f", other.to_str().unwrap()])
        .await
        .ok();

    rack.write("web.yaml", &set(&["a", "c"]));
    let dry = rack
        .corralctl(&["apply", "-f", path, "--prune", "-l", "app=web", "--dry-run"])
        .await
        .ok();
    assert!(
        dry.stdout
            .contains("instance.corral.dev/b pruned (server dry run)"),
        "{dry}"
    );
    assert!(
        rack.instances("default")
            .get_opt("b")
            .await
            .unwrap()
            .is_some()
    );

    let run = rack
        .corralctl(&["apply", "-f", path, "--prune", "-l", "app=web"])
        .await
        .ok();
    assert!(run.stdout.contains("instance.corral.dev/b pruned"), "{run}");
    let api = rack.instances("default");
    assert!(api.get_opt("b").await.unwrap().is_none());
    for kept in ["a", "c", "foreign", "other"] {
        assert!(
            api.get_opt(kept).await.unwrap().is_some(),
            "{kept} was pruned"
        );
    }
    // A set with a broken document prunes nothing (it applies nothing at all).
    rack.write("web.yaml", &format!("{}---\nkind: [\n", set(&["a"])));
    rack.corralctl(&["apply", "-f", path, "--prune", "-l", "app=web"])
        .await
        .failed();
    assert!(api.get_opt("c").await.unwrap().is_some());
    // --prune without a selector is refused.
    rack.corralctl(&["apply", "-f", path, "--prune"])
        .await
        .failed();
}

#[tokio::test]
async fn broken_manifests_name_file_document_and_field_and_apply_nothing() {
    let rack = Rack::start().await;
    let valid = instance_yaml("valid", "1", "");
    // (name, broken second document, what the error must name)
    let cases: &[(&str, String, &[&str])] = &[
        (
            "bad-yaml",
            "apiVersion: corral.dev/v1alpha1\nkind: Instance\nspec: {cpus: [\n".into(),
            &["invalid YAML", "line"],
        ),
        (
            "unknown-kind",
            "apiVersion: corral.dev/v1alpha1\nkind: Widget\nmetadata:\n  name: w\n".into(),
            &["(Widget w)", "field kind", "Widget"],
        ),
        (
            "old-version",
            "apiVersion: corral.dev/v9\nkind: Instance\nmetadata:\n  name: w\n".into(),
            &["field kind", "served as corral.dev/v1alpha1"],
        ),
        (
            "unknown-field",
            instance_yaml("broken", "1", "").replace("image:", "colour: red\n  image:"),
            &["(Instance broken)", "field spec.colour", "unknown field"],
        ),
        (
            "invalid-value",
            instance_yaml("broken", "\"lots\"", ""),
            &["(Instance broken)", "field spec.cpus"],
        ),
        (
            "negative",
            instance_yaml("broken", "-3", ""),
            &["(Instance broken)", "field spec.cpus"],
        ),
        (
            "bad-enum",
            instance_yaml("broken", "1", "").replace("image:", "runStrategy: Sometimes\n  image:"),
            &["(Instance broken)", "field spec.runStrategy"],
        ),
        (
            "no-name",
            "apiVersion: corral.dev/v1alpha1\nkind: Instance\nmetadata: {}\nspec: {}\n".into(),
            &["field metadata.name: Required value"],
        ),
        (
            "no-kind",
            "apiVersion: corral.dev/v1alpha1\nmetadata:\n  name: x\n".into(),
            &["field kind: Required value"],
        ),
    ];
    for (name, broken, expected) in cases {
        let file = format!("{name}.yaml");
        let path = rack.write(&file, &format!("{valid}---\n{broken}"));
        let run = rack
            .corralctl(&["apply", "-f", path.to_str().unwrap()])
            .await
            .failed();
        let prefix = format!("{}: document 2", path.display());
        assert!(
            run.stderr.contains(&prefix),
            "{name}: no {prefix:?} in\n{run}"
        );
        for needle in *expected {
            assert!(
                run.stderr.contains(needle),
                "{name}: no {needle:?} in\n{run}"
            );
        }
        assert!(run.stderr.contains("nothing applied"), "{name}:\n{run}");
        assert!(!run.stderr.contains("panicked"), "{name}:\n{run}");
        let api = rack.instances("default");
        assert!(
            api.get_opt("broken").await.unwrap().is_none(),
            "{name}: the broken document was applied"
        );
        assert!(
            api.get_opt("valid").await.unwrap().is_none(),
            "{name}: the set was partly applied"
        );
    }
    // Two files, one broken: nothing of either is applied, and the error names the right file.
    let good = rack.write("two/a.yaml", &valid);
    rack.write("two/b.yaml", &instance_yaml("broken", "0", ""));
    let run = rack
        .corralctl(&["apply", "-f", good.parent().unwrap().to_str().unwrap()])
        .await
        .failed();
    assert!(
        run.stderr
            .contains("b.yaml: document 1 (Instance broken): field spec.cpus"),
        "{run}"
    );
    assert!(
        rack.instances("default")
            .get_opt("valid")
            .await
            .unwrap()
            .is_none()
    );
    // A file that does not exist.
    let run = rack
        .corralctl(&["apply", "-f", "/nonexistent/x.yaml"])
        .await
        .failed();
    assert!(run.stderr.contains("/nonexistent/x.yaml"), "{run}");
}

#[tokio::test]
async fn dry_run_and_conflicts_leave_objects_alone() {
    let rack = Rack::start().await;
    let path = rack.write("web.yaml", &instance_yaml("web", "2", ""));
    let path = path.to_str().unwrap();
    let run = rack
        .corralctl(&["apply", "-f", path, "--dry-run"])
        .await
        .ok();
    assert_eq!(
        run.stdout,
        "instance.corral.dev/web created (server dry run)\n"
    );
    assert!(
        rack.instances("default")
            .get_opt("web")
            .await
            .unwrap()
            .is_none()
    );
    rack.corralctl(&["apply", "-f", path]).await.ok();
    rack.write("web.yaml", &instance_yaml("web", "5", ""));
    let run = rack
        .corralctl(&["apply", "-f", path, "--dry-run"])
        .await
        .ok();
    assert_eq!(
        run.stdout,
        "instance.corral.dev/web configured (server dry run)\n"
    );
    let web = rack.instances("default").get("web").await.unwrap();
    assert_eq!(at(&web, "/spec/cpus"), json!(2));
    // Another manager takes spec.cpus; corralctl's change of it is then a conflict.
    rack.instances("default")
        .patch(
            "web",
            &kube::api::PatchParams::apply("someone-else").force(),
            &kube::api::Patch::Apply(json!({
                "apiVersion": "corral.dev/v1alpha1", "kind": "Instance",
                "metadata": {"name": "web"}, "spec": {"cpus": 3},
            })),
        )
        .await
        .unwrap();
    rack.write("web.yaml", &instance_yaml("web", "4", ""));
    let run = rack.corralctl(&["apply", "-f", path]).await.failed();
    assert!(run.stderr.contains("field spec.cpus"), "{run}");
    assert!(run.stderr.contains("--force-conflicts"), "{run}");
    let run = rack
        .corralctl(&["apply", "-f", path, "--force-conflicts"])
        .await
        .ok();
    assert_eq!(run.stdout, "instance.corral.dev/web configured\n");
    let web = rack.instances("default").get("web").await.unwrap();
    assert_eq!(at(&web, "/spec/cpus"), json!(4));
}

#[tokio::test]
async fn any_served_kind_applies_and_a_set_may_create_its_own_namespace() {
    let rack = Rack::start().await;
    // The Instance comes first in the file; its namespace is created first anyway.
    let set = "apiVersion: corral.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: x\n  namespace: team-a\n\
               spec:\n  cpus: 1\n  memoryMiB: 512\n  image: debian-12\n\
               ---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n";
    let path = rack.write("team.yaml", set);
    let run = rack
        .corralctl(&["apply", "--dry-run", "-f", path.to_str().unwrap()])
        .await
        .ok();
    assert_eq!(
        run.stdout,
        "namespace/team-a created (server dry run)\n\
         instance.corral.dev/x not checked (server dry run): its namespace team-a is created by this set\n",
        "{run}"
    );
    let run = rack
        .corralctl(&["apply", "-f", path.to_str().unwrap()])
        .await
        .ok();
    assert_eq!(
        run.stdout, "namespace/team-a created\ninstance.corral.dev/x created\n",
        "{run}"
    );
    assert!(
        rack.instances("team-a")
            .get_opt("x")
            .await
            .unwrap()
            .is_some()
    );
    // A document's namespace must agree with an explicit -n.
    let run = rack
        .corralctl(&["apply", "-n", "default", "-f", path.to_str().unwrap()])
        .await
        .failed();
    assert!(
        run.stderr
            .contains("document 1 (Instance x): field metadata.namespace"),
        "{run}"
    );
}
