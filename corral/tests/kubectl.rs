//! The real `kubectl` (1.32, on the PATH) against `corral apiserver`, on both backends: every
//! command the acceptance list names, checked by its output and by the object afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{Apiserver, Backend, wait_until};
use corral_harness::process::tail;
use corral_harness::wait_for_blocking;

struct Kubectl<'a> {
    server: &'a Apiserver,
    cache: PathBuf,
}

impl<'a> Kubectl<'a> {
    fn new(server: &'a Apiserver) -> Kubectl<'a> {
        let cache = server.dir().join("kubectl-cache");
        Kubectl { server, cache }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .env("KUBECONFIG", self.server.kubeconfig())
            .arg(format!("--cache-dir={}", self.cache.display()))
            .args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running kubectl")
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {}\nserver log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail(&self.server.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn with_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts kubectl in the background with stdout to a file.
    fn spawn(&self, args: &[&str], output: &Path) -> Child {
        let file = std::fs::File::create(output).expect("output file");
        self.command(args)
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl")
    }
}

/// Waits at most `timeout` for a background kubectl to exit.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    wait_for_blocking("kubectl to exit", timeout, || match child.try_wait() {
        Ok(Some(status)) => Ok(status),
        _ => Err("it runs"),
    })
    .ok()
    .map(|(status, _)| status)
}

const WIDGET: &str = "apiVersion: test.corral.dev/v1
kind: Widget
metadata:
  name: w1
  labels: {app: demo}
spec:
  color: red
";

fn scenario(backend: Backend) {
    let server = common::apiserver(backend);
    let k = Kubectl::new(&server);
    let dir = server.dir();

    // Discovery.
    let resources = k.ok(&["api-resources"]);
    for needle in [
        "widgets",
        "wg",
        "test.corral.dev/v1",
        "namespaces",
        "events",
        "leases",
    ] {
        assert!(
            resources.contains(needle),
            "api-resources lacks {needle}:\n{resources}"
        );
    }
    let explain = k.ok(&["explain", "widgets.spec"]);
    assert!(
        explain.contains("color") && explain.contains("What the widget should be"),
        "explain:\n{explain}"
    );

    // apply -f: create, then change.
    let file = dir.join("w1.yaml");
    std::fs::write(&file, WIDGET).unwrap();
    let out = k.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains("widget.test.corral.dev/w1 created"), "{out}");
    std::fs::write(
        &file,
        WIDGET.replace("color: red", "color: green\n  note: hello"),
    )
    .unwrap();
    let out = k.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.contains("widget.test.corral.dev/w1 configured"),
        "{out}"
    );

    // get with printer columns (defaulted size), wide adds the priority-1 column.
    let table = k.ok(&["get", "widgets"]);
    let header = table.lines().next().unwrap_or("");
    for column in ["NAME", "COLOR", "SIZE", "READY", "AGE"] {
        assert!(header.contains(column), "header {header:?} lacks {column}");
    }
    assert!(!header.contains("NOTE"));
    let row = table
        .lines()
        .find(|l| l.starts_with("w1 "))
        .expect("row for w1");
    assert!(row.contains("green") && row.contains("10"), "row: {row}");
    assert!(k.ok(&["get", "wg", "-o", "wide"]).contains("hello"));
    let yaml = k.ok(&["get", "widget", "w1", "-o", "yaml"]);
    assert!(
        yaml.contains("color: green")
            && yaml.contains("generation: 2")
            && yaml.contains("resourceVersion:"),
        "{yaml}"
    );

    // get -w sees a change.
    let watch_out = dir.join("watch.txt");
    let mut watch = k.spawn(&["get", "widgets", "-w"], &watch_out);
    wait_until("get -w to list w1", Duration::from_secs(20), || {
        std::fs::read_to_string(&watch_out)
            .unwrap_or_default()
            .contains("w1")
    });
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"color":"blue"}}"#,
    ]);
    wait_until("get -w to show blue", Duration::from_secs(20), || {
        std::fs::read_to_string(&watch_out)
            .unwrap_or_default()
            .contains("blue")
    });
    let _ = watch.kill();
    let _ = watch.wait();

    // wait --for=condition=Ready finishes once the condition is set through the status subresource.
    let wait_out = dir.join("wait.txt");
    let mut waiter = k.spawn(
        &[
            "wait",
            "--for=condition=Ready",
            "widget/w1",
            "--timeout=60s",
        ],
        &wait_out,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait finished before the condition was set"
    );
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);
    let status =
        wait_child(&mut waiter, Duration::from_secs(30)).expect("kubectl wait did not finish");
    assert!(status.success(), "kubectl wait failed");
    assert!(
        k.ok(&["get", "widgets"])
            .lines()
            .any(|l| l.starts_with("w1 ") && l.contains("True"))
    );
    // The status write did not bump generation.
    assert_eq!(
        k.ok(&[
            "get",
            "widget",
            "w1",
            "-o",
            "jsonpath={.metadata.generation}"
        ]),
        "3"
    );

    // patch --type json.
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/size","value":20}]"#,
    ]);
    assert_eq!(
        k.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"]),
        "20"
    );

    // apply --server-side (create, then a change; the status set above survives).
    let ssa = dir.join("w2.yaml");
    std::fs::write(&ssa, WIDGET.replace("name: w1", "name: w2")).unwrap();
    let out = k.ok(&["apply", "--server-side", "-f", ssa.to_str().unwrap()]);
    assert!(out.contains("serverside-applied"), "{out}");
    std::fs::write(
        &ssa,
        WIDGET
            .replace("name: w1", "name: w2")
            .replace("color: red", "color: blue\n  size: 7"),
    )
    .unwrap();
    k.ok(&["apply", "--server-side", "-f", ssa.to_str().unwrap()]);
    assert_eq!(
        k.ok(&[
            "get",
            "widget",
            "w2",
            "-o",
            "jsonpath={.spec.color}/{.spec.size}"
        ]),
        "blue/7"
    );
    let managers = k.ok(&[
        "get",
        "widget",
        "w2",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
        "--show-managed-fields",
    ]);
    assert!(managers.contains("kubectl"), "managers: {managers}");

    // diff shows the difference and changes nothing.
    let before = k.ok(&[
        "get",
        "widget",
        "w2",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    std::fs::write(
        &ssa,
        WIDGET
            .replace("name: w1", "name: w2")
            .replace("color: red", "color: red\n  size: 99"),
    )
    .unwrap();
    let diff = k.run(&["diff", "-f", ssa.to_str().unwrap()]);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "diff exit: {:?} {}",
        diff.status,
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(String::from_utf8_lossy(&diff.stdout).contains("size: 99"));
    assert_eq!(
        k.ok(&[
            "get",
            "widget",
            "w2",
            "-o",
            "jsonpath={.metadata.resourceVersion}"
        ]),
        before
    );
    assert_eq!(
        k.ok(&["get", "widget", "w2", "-o", "jsonpath={.spec.size}"]),
        "7"
    );

    // delete of an object with a finalizer waits until the finalizer is removed.
    k.with_stdin(
        &["apply", "-f", "-"],
        &WIDGET.replace(
            "name: w1",
            "name: held\n  finalizers: [test.corral.dev/hold]",
        ),
    );
    let delete_out = dir.join("delete.txt");
    let mut deleter = k.spawn(&["delete", "widget", "held", "--timeout=60s"], &delete_out);
    wait_until(
        "deletionTimestamp to be set",
        Duration::from_secs(20),
        || {
            !k.ok(&[
                "get",
                "widget",
                "held",
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ])
            .is_empty()
        },
    );
    assert!(
        deleter.try_wait().unwrap().is_none(),
        "delete returned while the finalizer was present"
    );
    k.ok(&[
        "patch",
        "widget",
        "held",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let status =
        wait_child(&mut deleter, Duration::from_secs(30)).expect("kubectl delete did not finish");
    assert!(status.success());
    assert!(!k.run(&["get", "widget", "held"]).status.success());

    // delete --cascade=foreground of an owner with dependents.
    k.with_stdin(
        &["apply", "-f", "-"],
        "apiVersion: test.corral.dev/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {any: thing}\n",
    );
    let uid = k.ok(&["get", "gadget", "g1", "-o", "jsonpath={.metadata.uid}"]);
    for name in ["dep1", "dep2"] {
        let dependent = format!(
            "apiVersion: test.corral.dev/v1\nkind: Widget\nmetadata:\n  name: {name}\n  ownerReferences:\n  - apiVersion: test.corral.dev/v1\n    kind: Gadget\n    name: g1\n    uid: {uid}\n    blockOwnerDeletion: true\nspec: {{color: red}}\n"
        );
        k.with_stdin(&["apply", "-f", "-"], &dependent);
    }
    let out = k.ok(&[
        "delete",
        "gadget",
        "g1",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert!(out.contains("deleted"), "{out}");
    assert!(!k.run(&["get", "gadget", "g1"]).status.success());
    wait_until("dependents to be gone", Duration::from_secs(20), || {
        !k.run(&["get", "widget", "dep1"]).status.success()
            && !k.run(&["get", "widget", "dep2"]).status.success()
    });

    // Namespaces and events.
    k.ok(&["create", "ns", "team-a"]);
    let namespaces = k.ok(&["get", "ns"]);
    assert!(
        namespaces.contains("team-a")
            && namespaces.contains("default")
            && namespaces.contains("Active"),
        "{namespaces}"
    );
    let w1_uid = k.ok(&["get", "widget", "w1", "-o", "jsonpath={.metadata.uid}"]);
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: w1.demo, namespace: default}}\ninvolvedObject: {{apiVersion: test.corral.dev/v1, kind: Widget, name: w1, namespace: default, uid: {w1_uid}}}\nreason: Tested\nmessage: the widget was tested\ntype: Normal\ncount: 1\nfirstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\n"
    );
    k.with_stdin(&["create", "-f", "-"], &event);
    let events = k.ok(&["get", "events"]);
    assert!(
        events.contains("Tested") && events.contains("the widget was tested"),
        "{events}"
    );
    let described = k.ok(&["describe", "widget", "w1"]);
    assert!(
        described.contains("Tested"),
        "describe shows the widget's events:\n{described}"
    );
}

#[test]
fn kubectl_works_against_sqlite() {
    scenario(Backend::Sqlite);
}

#[test]
fn kubectl_works_against_etcd() {
    scenario(Backend::Etcd);
}
