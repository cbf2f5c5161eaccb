//! Who may reach what (docs/security.md), against the real binary:
//!
//! - `corral up`'s HTTPS API with the kubeconfig it wrote, through the real `kubectl`: no
//!   credential is a 401; `kubectl auth can-i` works; a tenant bound to `corral:tenant` in its
//!   namespace creates Instances there and is refused (403, Kubernetes' message) a cordon,
//!   another namespace and a Drain; nobody grants what they do not hold; only those allowed may
//!   impersonate.
//! - Node restriction: a sled's agent writes its own Sled's status, its own Lease and nothing
//!   of another sled's, whatever it tries.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use corral_harness::Process;
use corral_harness::tls::ClientTls;
use corral_harness::wait::{Unmet, wait_for_polling};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const START: Duration = Duration::from_secs(60);

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .arg(format!("--cache-dir={}", self.cache.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("writing stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must be refused with `message` (a 403 from the server).
    fn forbidden(&self, args: &[&str], stdin: Option<&str>, message: &str) {
        let out = self.run(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "kubectl {args:?} succeeded");
        assert!(
            // `kubectl create rolebinding` words a 403 its own way.
            (stderr.contains("Error from server (Forbidden)") || stderr.contains("is forbidden"))
                && stderr.contains(message),
            "kubectl {args:?}: expected a 403 saying {message:?}, got: {stderr}"
        );
    }
}

const ALICE: [&str; 4] = ["--as", "alice", "--as-group", "corral:tenants"];

fn as_alice<'a>(args: &[&'a str]) -> Vec<&'a str> {
    ALICE.iter().copied().chain(args.iter().copied()).collect()
}

fn instance(name: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Instance\nmetadata: {{name: {name}}}\nspec: {{cpus: 1, memoryMiB: 512, image: debian-12}}\n"
    )
}

/// One HTTPS GET as `identity` (a file stem in `pki`; none: no client certificate) with
/// `headers`: the status code and the body.
fn raw_get(
    pki: &Path,
    identity: Option<&str>,
    address: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let tls = ClientTls::from_pki(pki, identity).expect("the rack's CA");
    common::http(
        &common::Endpoint { address, tls },
        "GET",
        path,
        headers,
        b"",
    )
}

fn anonymous_get(pki: &Path, address: std::net::SocketAddr, path: &str) -> u16 {
    raw_get(pki, None, address, path, &[]).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reach_their_namespace_and_nothing_else_through_corral_up() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let data = dir.path().join("rack");
    let listen = corral_harness::apiserver::free_address().expect("a free port");
    let mut up = Process::new("corral up", common::corral(), dir.path().join("up.log"));
    let (data_arg, listen_arg) = (data.display().to_string(), listen.to_string());
    up.start(&[
        "up",
        "--data-dir",
        &data_arg,
        "--listen",
        &listen_arg,
        "--debug-listen",
        "127.0.0.1:0",
        "--sleds",
        "2",
    ])
    .expect("starting corral up");
    let kubeconfig = data.join("kubeconfig");
    wait_for_polling(
        "corral up's sleds Ready",
        START,
        Duration::from_millis(200),
        async || {
            up.check_alive()
                .map_err(|e| Unmet::Never(format!("{e}: {}", up.log_tail(20))))?;
            if !kubeconfig.exists() {
                return Err(Unmet::Yet("no kubeconfig yet".into()));
            }
            let client = corral_client::connect(Some(&kubeconfig))
                .await
                .map_err(|e| Unmet::Yet(e.to_string()))?;
            let sleds = Api::<corral_crds::Sled>::all(client)
                .list(&ListParams::default())
                .await
                .map_err(|e| Unmet::Yet(e.to_string()))?;
            let ready = sleds.items.iter().filter(|s| s.is_ready()).count();
            (ready == 2)
                .then_some(())
                .ok_or_else(|| Unmet::Yet(format!("{ready} sleds Ready")))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", up.log_tail(30)));

    let kubectl = Kubectl {
        kubeconfig: kubeconfig.clone(),
        cache: dir.path().join("kubectl-cache"),
    };
    let config = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(
        config.contains(&format!("server: https://{listen}")),
        "{config}"
    );

    // Without a credential: 401, but for the public paths.
    let pki = data.join("pki");
    assert_eq!(
        anonymous_get(&pki, listen, "/apis/corral.dev/v1alpha1/sleds"),
        401
    );
    assert_eq!(anonymous_get(&pki, listen, "/api"), 401);
    assert_eq!(anonymous_get(&pki, listen, "/readyz"), 200);

    // Everything works as admin, and `auth can-i` answers.
    assert!(kubectl.ok(&["get", "sleds"], None).contains("sled-1"));
    let rules = kubectl.ok(&["auth", "can-i", "--list"], None);
    assert!(rules.contains("*.*"), "{rules}");
    assert_eq!(
        kubectl
            .ok(&["auth", "can-i", "create", "drains"], None)
            .trim(),
        "yes"
    );

    // A tenant bound in team-a.
    kubectl.ok(&["create", "namespace", "team-a"], None);
    kubectl.ok(
        &[
            "create",
            "rolebinding",
            "t",
            "--clusterrole=corral:tenant",
            "--group=corral:tenants",
            "-n",
            "team-a",
        ],
        None,
    );
    let tenant_rules = kubectl.ok(
        &as_alice(&["auth", "can-i", "--list", "-n", "team-a"]),
        None,
    );
    assert!(
        tenant_rules.contains("instances.corral.dev"),
        "{tenant_rules}"
    );
    let can = |args: &[&str]| kubectl.run(&as_alice(args), None);
    let answer = |out: Output| String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        answer(can(&[
            "auth",
            "can-i",
            "create",
            "instances",
            "-n",
            "team-a"
        ])),
        "yes"
    );
    assert_eq!(answer(can(&["auth", "can-i", "create", "drains"])), "no");
    assert_eq!(answer(can(&["auth", "can-i", "patch", "sleds"])), "no");

    // The RBAC informs the cache of this server at once: poll the first create briefly.
    let (created, _) = wait_for_polling(
        "alice creating an Instance",
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let out = kubectl.run(
                &as_alice(&["create", "-n", "team-a", "-f", "-"]),
                Some(&instance("mine")),
            );
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(Unmet::Yet(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ))
            }
        },
    )
    .await
    .expect("a tenant creates Instances in its namespace");
    assert!(
        created.contains("instance.corral.dev/mine created"),
        "{created}"
    );
    assert!(
        kubectl
            .ok(&as_alice(&["get", "instances", "-n", "team-a"]), None)
            .contains("mine")
    );

    kubectl.forbidden(
        &as_alice(&["patch", "sled", "sled-1", "--type=merge", "-p", r#"{"spec":{"unschedulable":true}}"#]),
        None,
        // kubectl reads the Sled before it patches: the read is what is refused first.
        r#"sleds.corral.dev "sled-1" is forbidden: User "alice" cannot get resource "sleds" in API group "corral.dev" at the cluster scope"#,
    );
    kubectl.forbidden(
        &as_alice(&["get", "instances", "-n", "default"]),
        None,
        r#"instances.corral.dev is forbidden: User "alice" cannot list resource "instances" in API group "corral.dev" in the namespace "default""#,
    );
    let drain =
        "apiVersion: corral.dev/v1alpha1\nkind: Drain\nmetadata: {name: d}\nspec: {sled: sled-1}\n";
    kubectl.forbidden(
        &as_alice(&["create", "-f", "-"]),
        Some(drain),
        r#"User "alice" cannot create resource "drains" in API group "corral.dev""#,
    );
    // `kubectl auth whoami` answers for each.
    let admin_is = kubectl.ok(&["auth", "whoami"], None);
    assert!(
        admin_is.contains("admin") && admin_is.contains("system:masters"),
        "{admin_is}"
    );
    let alice_is = kubectl.ok(&as_alice(&["auth", "whoami"]), None);
    assert!(
        alice_is.contains("alice") && alice_is.contains("corral:tenants"),
        "{alice_is}"
    );
    // corral up keeps an audit trail (0600): the refused Drain is in it, sent by admin acting
    // as alice.
    let trail = data.join("audit.log");
    let mode = std::fs::metadata(&trail)
        .expect("corral up's audit log")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let (status, body) = raw_get(&pki, Some("admin"), listen, "/audit?resource=drains", &[]);
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("an EventList");
    let refused = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|event| event["impersonatedUser"]["username"] == "alice")
        .unwrap_or_else(|| panic!("alice's Drain is not in the trail: {body}"));
    assert_eq!(refused["user"]["username"], "admin");
    assert_eq!(refused["verb"], "create");
    assert_eq!(refused["responseStatus"]["code"], 403);
    assert!(
        refused["userAgent"]
            .as_str()
            .unwrap_or("")
            .starts_with("kubectl/"),
        "{refused}"
    );
    // Escalation: bob may create RoleBindings in team-a, and holds nothing else.
    let binder = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: binder, namespace: team-a}\nrules:\n- {verbs: [create, get], apiGroups: [rbac.authorization.k8s.io], resources: [rolebindings]}\n";
    kubectl.ok(&["create", "-f", "-"], Some(binder));
    kubectl.ok(
        &[
            "create",
            "rolebinding",
            "bob-binds",
            "--role=binder",
            "--user=bob",
            "-n",
            "team-a",
        ],
        None,
    );
    kubectl.forbidden(
        &[
            "--as",
            "bob",
            "create",
            "rolebinding",
            "bob-operates",
            "--clusterrole=corral:operator",
            "--user=bob",
            "-n",
            "team-a",
        ],
        None,
        "attempting to grant RBAC permissions not currently held",
    );
    // What bob holds, he may grant.
    kubectl.ok(
        &[
            "--as",
            "bob",
            "create",
            "rolebinding",
            "carol-binds",
            "--role=binder",
            "--user=carol",
            "-n",
            "team-a",
        ],
        None,
    );
    // Only those allowed may impersonate: bob, with his own certificate, may not.
    let issued = Command::new(common::corral())
        .args(["certs", "--dir"])
        .arg(&pki)
        .args(["--server", &format!("https://{listen}"), "--user", "bob"])
        .output()
        .expect("corral certs");
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let (status, body) = raw_get(
        &pki,
        Some("bob"),
        listen,
        "/apis/corral.dev/v1alpha1/namespaces/team-a/instances",
        &[
            ("Impersonate-User", "alice"),
            ("Impersonate-Group", "corral:tenants"),
        ],
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(r#"users \"alice\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"#),
        "{body}"
    );
    // With his own identity bob reads nothing he was not given.
    let (status, body) = raw_get(
        &pki,
        Some("bob"),
        listen,
        "/apis/corral.dev/v1alpha1/sleds",
        &[],
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(r#"User \"bob\" cannot list resource \"sleds\""#),
        "{body}"
    );
    // Admin may impersonate: as alice it sees team-a's Instance.
    let (status, body) = raw_get(
        &pki,
        Some("admin"),
        listen,
        "/apis/corral.dev/v1alpha1/namespaces/team-a/instances",
        &[
            ("Impersonate-User", "alice"),
            ("Impersonate-Group", "corral:tenants"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"mine\""), "{body}");
    up.kill9();
}

/// Whether `result` is the API server's 403.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected a 403, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_writes_only_what_is_its_own_sleds() {
    let server = common::start_apiserver(common::Backend::Sqlite, &[]).await;
    server
        .issue(&["sled-1".to_string(), "sled-2".to_string()])
        .expect("node identities");
    let admin = corral_client::connect(Some(&server.kubeconfig()))
        .await
        .unwrap();
    let node = corral_client::connect(Some(&server.pki().join("node-sled-1.kubeconfig")))
        .await
        .unwrap();
    let sled = |name: &str| -> corral_crds::Sled {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Sled",
            "metadata": {"name": name}, "spec": {},
        }))
        .unwrap()
    };
    let as_admin: Api<corral_crds::Sled> = Api::all(admin.clone());
    let as_node: Api<corral_crds::Sled> = Api::all(node.clone());
    let params = PostParams::default();
    as_admin.create(&params, &sled("sled-2")).await.unwrap();
    let epoch = json!({"status": {"epoch": 1}});
    as_admin
        .patch_status("sled-2", &PatchParams::default(), &Patch::Merge(&epoch))
        .await
        .unwrap();

    // Its own Sled: registered and reported.
    as_node
        .create(&params, &sled("sled-1"))
        .await
        .expect("registering its own Sled");
    as_node
        .patch_status("sled-1", &PatchParams::default(), &Patch::Merge(&epoch))
        .await
        .expect("reporting its own Sled");
    // Another sled's: neither.
    refused(
        "registering another Sled",
        as_node.create(&params, &sled("sled-3")).await,
    );
    refused(
        "reporting sled-2",
        as_node
            .patch_status("sled-2", &PatchParams::default(), &Patch::Merge(&epoch))
            .await,
    );
    refused(
        "cordoning its own Sled",
        as_node
            .patch(
                "sled-1",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"unschedulable": true}})),
            )
            .await,
    );

    // A Vmm placed on sled-2.
    let vmm: corral_crds::Vmm = serde_json::from_value(json!({
        "apiVersion": "corral.dev/v1alpha1", "kind": "Vmm",
        "metadata": {"name": "web-1-v1", "namespace": "default"},
        "spec": {"instance": "web-1", "sled": "sled-2", "sledEpoch": 1,
                 "resources": {"cpus": 1, "memoryMiB": 512}, "image": "debian-12"},
    }))
    .unwrap();
    let vmms_admin: Api<corral_crds::Vmm> = Api::namespaced(admin.clone(), "default");
    vmms_admin
        .create(&params, &vmm)
        .await
        .expect("placing a Vmm on sled-2");
    let vmms: Api<corral_crds::Vmm> = Api::namespaced(node.clone(), "default");
    refused(
        "reporting a Vmm of sled-2",
        vmms.patch_status(
            "web-1-v1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"state": "Running"}})),
        )
        .await,
    );
    refused(
        "moving a Vmm of sled-2 to itself",
        vmms.patch(
            "web-1-v1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"sled": "sled-1"}})),
        )
        .await,
    );
    refused(
        "deleting a Vmm",
        vmms.delete("web-1-v1", &Default::default()).await,
    );

    // No Instance.
    let instances: Api<corral_crds::Instance> = Api::namespaced(node.clone(), "default");
    let instance: corral_crds::Instance = serde_json::from_value(json!({
        "apiVersion": "corral.dev/v1alpha1", "kind": "Instance",
        "metadata": {"name": "sneaky"},
        "spec": {"cpus": 1, "memoryMiB": 512, "image": "debian-12"},
    }))
    .unwrap();
    refused(
        "creating an Instance",
        instances.create(&params, &instance).await,
    );

    // Its own Lease only.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(node.clone(), "kube-node-lease");
    let lease = |name: &str| -> k8s_openapi::api::coordination::v1::Lease {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"holderIdentity": "x"}}))
            .unwrap()
    };
    leases
        .create(&params, &lease("sled-1"))
        .await
        .expect("its own Lease");
    refused(
        "another sled's Lease",
        leases.create(&params, &lease("sled-2")).await,
    );
    let elsewhere: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(node.clone(), "kube-system");
    refused(
        "a Lease outside kube-node-lease",
        elsewhere.create(&params, &lease("sled-1")).await,
    );

    // Events about its own Sled, not about another's.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(node.clone(), "default");
    let event = |name: &str, sled: &str| -> k8s_openapi::api::core::v1::Event {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "involvedObject": {"kind": "Sled", "name": sled, "apiVersion": "corral.dev/v1alpha1"},
            "reason": "Test", "message": "m", "type": "Normal",
        }))
        .unwrap()
    };
    events
        .create(&params, &event("own", "sled-1"))
        .await
        .expect("an Event about its Sled");
    refused(
        "an Event about sled-2",
        events.create(&params, &event("other", "sled-2")).await,
    );

    // RBAC cannot widen it: a binding of cluster-admin to sled-1 changes nothing.
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(admin.clone());
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "sled-1-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "system:node:sled-1"}],
    }))
    .unwrap();
    bindings
        .create(&params, &binding)
        .await
        .expect("an admin binds anything");
    refused(
        "creating an Instance with cluster-admin bound",
        instances.create(&params, &instance).await,
    );
}
