//! The harness: a real API server serving Corral's kinds (no controllers), the real
//! `corralctl` binary run against it with `KUBECONFIG` set, and a kube-rs client for the test's
//! own reads and status writes. Every wait is bounded.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use corral_apiserver::testing::TestServer;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long one corralctl run may take before the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Rack {
    pub server: TestServer,
    pub client: kube::Client,
}

/// What a finished corralctl run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the output unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "corralctl failed:\n{self}");
        self
    }

    /// Panics with the output unless the run failed.
    pub fn failed(self) -> Run {
        assert_ne!(self.code, 0, "corralctl should have failed:\n{self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Rack {
    pub async fn start() -> Rack {
        Rack::start_with_users(&[]).await
    }

    /// A rack with Corral's default policy and, besides `admin`, `users` (name, groups), each
    /// with a bearer token ([`Rack::corralctl_as`]).
    pub async fn start_with_users(users: &[(&str, &[&str])]) -> Rack {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = corral_apiserver::testing::TestOptions {
            policy: corral_crds::POLICY.to_vec(),
            users: users
                .iter()
                .map(|(name, groups)| {
                    (
                        name.to_string(),
                        groups.iter().map(|g| g.to_string()).collect(),
                    )
                })
                .collect(),
        };
        let server = TestServer::start_with(corral_crds::MANIFESTS, options).await;
        let client = corral_client::connect(Some(&server.kubeconfig))
            .await
            .expect("a client for the test server");
        Rack { server, client }
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_with(&self.server.kubeconfig, args)
    }

    fn command_with(&self, kubeconfig: &std::path::Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_corralctl"));
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs corralctl to completion.
    pub async fn corralctl(&self, args: &[&str]) -> Run {
        self.corralctl_with_stdin(args, None).await
    }

    /// Runs corralctl to completion as `user` (one of [`Rack::start_with_users`]).
    pub async fn corralctl_as(&self, user: &str, args: &[&str]) -> Run {
        let kubeconfig = self.server.kubeconfig_of(user);
        self.finish(self.command_with(&kubeconfig, args), args, None)
            .await
    }

    /// Runs corralctl with `stdin` as its standard input.
    pub async fn corralctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        self.finish(self.command(args), args, stdin).await
    }

    async fn finish(&self, mut command: Command, args: &[&str], stdin: Option<&str>) -> Run {
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().expect("starting corralctl");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("a stdin pipe");
            pipe.write_all(text.as_bytes())
                .await
                .expect("writing stdin");
            drop(pipe);
        }
        let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("corralctl {args:?} did not finish in {RUN_TIMEOUT:?}"))
            .expect("corralctl's output");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Starts corralctl and leaves it running (a watch, a wait).
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self.command(args).spawn().expect("starting corralctl");
        let stdout = BufReader::new(child.stdout.take().expect("a stdout pipe"));
        Running {
            child,
            lines: stdout.lines(),
            seen: Vec::new(),
        }
    }

    /// Writes a file in the server's temporary directory and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.server.dir().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating a directory");
        }
        std::fs::write(&path, content).expect("writing a manifest");
        path
    }

    fn api(&self, plural: &str, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = ApiResource {
            group: "corral.dev".into(),
            version: "v1alpha1".into(),
            api_version: "corral.dev/v1alpha1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    pub fn instances(&self, namespace: &str) -> Api<DynamicObject> {
        self.api("instances", "Instance", Some(namespace))
    }

    pub fn vmms(&self, namespace: &str) -> Api<DynamicObject> {
        self.api("vmms", "Vmm", Some(namespace))
    }

    pub fn sleds(&self) -> Api<DynamicObject> {
        self.api("sleds", "Sled", None)
    }

    pub fn drains(&self) -> Api<DynamicObject> {
        self.api("drains", "Drain", None)
    }

    pub fn migrations(&self, namespace: &str) -> Api<DynamicObject> {
        self.api("migrations", "Migration", Some(namespace))
    }

    /// Creates an object from its JSON.
    pub async fn create(&self, api: &Api<DynamicObject>, object: Value) -> DynamicObject {
        let object: DynamicObject = serde_json::from_value(object).expect("an object");
        api.create(&PostParams::default(), &object)
            .await
            .expect("creating an object")
    }

    /// Merges `status` into the object's status through the /status subresource, as its
    /// controller or node-agent would.
    pub async fn set_status(&self, api: &Api<DynamicObject>, name: &str, status: Value) {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .expect("writing a status");
    }

    /// Creates a namespace.
    pub async fn namespace(&self, name: &str) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &namespace)
            .await
            .expect("creating a namespace");
    }
}

/// A corralctl process still running.
pub struct Running {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Reads lines until one satisfies `predicate`, failing the test after `within`.
    pub async fn line_matching(
        &mut self,
        within: Duration,
        predicate: impl Fn(&str) -> bool,
    ) -> String {
        let reading = async {
            loop {
                match self
                    .lines
                    .next_line()
                    .await
                    .expect("reading corralctl's output")
                {
                    Some(line) => {
                        self.seen.push(line.clone());
                        if predicate(&line) {
                            return line;
                        }
                    }
                    None => panic!("corralctl ended; it printed:\n{}", self.seen.join("\n")),
                }
            }
        };
        match tokio::time::timeout(within, reading).await {
            Ok(line) => line,
            Err(_) => panic!(
                "no matching line within {within:?}; corralctl printed:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Waits (bounded) for the process to end and returns its exit code and remaining output.
    pub async fn finish(mut self) -> Run {
        let mut rest = Vec::new();
        let ending = async {
            while let Some(line) = self.lines.next_line().await.expect("reading output") {
                rest.push(line);
            }
            self.child
                .wait_with_output()
                .await
                .expect("waiting for corralctl")
        };
        let output = tokio::time::timeout(RUN_TIMEOUT, ending)
            .await
            .expect("corralctl did not finish in time");
        let mut lines = self.seen;
        lines.extend(rest);
        let stdout = lines.join("\n");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Stops a process that would not end by itself (a watch).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An Instance manifest.
pub fn instance_yaml(name: &str, cpus: &str, labels: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  cpus: {cpus}\n  memoryMiB: 1024\n  image: debian-12\n"
    )
}

/// An Instance object for direct creation.
pub fn instance_json(name: &str, run_strategy: &str) -> Value {
    json!({
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": name},
        "spec": {"cpus": 2, "memoryMiB": 2048, "image": "debian-12", "runStrategy": run_strategy},
    })
}

/// A Sled object for direct creation.
pub fn sled_json(name: &str) -> Value {
    json!({
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Sled",
        "metadata": {"name": name},
        "spec": {},
    })
}

/// A condition as its writer would set it.
pub fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

/// The value at `pointer` of `object`.
pub fn at(object: &DynamicObject, pointer: &str) -> Value {
    let value = serde_json::to_value(object).expect("an object as JSON");
    value.pointer(pointer).cloned().unwrap_or(Value::Null)
}
