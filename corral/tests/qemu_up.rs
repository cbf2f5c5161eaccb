//! `corral up --hypervisor qemu --sleds 3`, as the README's quickstart runs it: one process
//! with the API server, the controllers and three QEMU sleds. Three Instances applied run as
//! three real QEMU processes whose guests beat (read from their serial logs, not from the
//! status Corral wrote), and `kill -9` of `corral up` takes every one of them down with it
//! (its sleds' QEMU processes die with it). `qemu_e2e.rs` tells the rest of the story on a rack
//! of separate processes, where an agent can be killed on its own.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_crds::{Instance, InstanceSpec, InstanceState, Vmm};
use corral_harness::Process;
use corral_harness::wait::{Unmet, wait_for_polling};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};

const SLEDS: usize = 3;
const GUESTS: usize = 3;
/// Booting three guests under KVM takes seconds; under TCG on a busy machine, longer.
const CONVERGE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_up_runs_real_guests_and_takes_them_down_with_it() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let data = dir.path().join("rack");
    let listen = corral_harness::apiserver::free_address().expect("a free port");
    let mut up = Process::new("corral up", common::corral(), dir.path().join("up.log"));
    let data_arg = data.display().to_string();
    let listen_arg = listen.to_string();
    up.start(&[
        "up",
        "--data-dir",
        &data_arg,
        "--listen",
        &listen_arg,
        "--debug-listen",
        "127.0.0.1:0",
        "--sleds",
        "3",
        "--hypervisor",
        "qemu",
        "--cpus",
        "2",
        "--memory-mib",
        "1024",
    ])
    .expect("starting corral up");
    let kubeconfig = data.join("kubeconfig");
    let (client, _) = wait_for_polling("corral up's API server", CONVERGE, POLL, async || {
        up.check_alive()
            .map_err(|e| Unmet::Never(format!("{e}: {}", up.log_tail(20))))?;
        if !kubeconfig.exists() {
            return Err(Unmet::Yet("no kubeconfig yet".into()));
        }
        let client = corral_client::connect(Some(&kubeconfig))
            .await
            .map_err(|e| Unmet::Yet(e.to_string()))?;
        let sleds = Api::<corral_crds::Sled>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| Unmet::Yet(e.to_string()))?;
        let ready = sleds.items.iter().filter(|s| s.is_ready()).count();
        if ready == SLEDS {
            Ok(client)
        } else {
            Err(Unmet::Yet(format!("{ready} sleds Ready")))
        }
    })
    .await
    .expect("corral up serving with its sleds Ready");

    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    for index in 1..=GUESTS {
        let instance = Instance::new(
            &format!("guest-{index}"),
            InstanceSpec {
                cpus: 1,
                memory_mib: 128,
                image: "corral-guest".into(),
                ..Default::default()
            },
        );
        instances
            .create(&PostParams::default(), &instance)
            .await
            .expect("creating an instance");
    }
    // Running, each in a QEMU process of its own whose guest beats.
    let vmms: Api<Vmm> = Api::namespaced(client.clone(), "default");
    let (pids, took) = wait_for_polling(
        "three guests running and beating",
        CONVERGE,
        POLL,
        async || {
            let running = instances
                .list(&ListParams::default())
                .await
                .map_err(|e| Unmet::Yet(e.to_string()))?
                .items
                .iter()
                .filter(|i| i.status.as_ref().and_then(|s| s.state) == Some(InstanceState::Running))
                .count();
            if running < GUESTS {
                return Err(Unmet::Yet(format!("{running} Running")));
            }
            let mut pids = Vec::new();
            for vmm in vmms
                .list(&ListParams::default())
                .await
                .map_err(|e| Unmet::Yet(e.to_string()))?
            {
                let dir = vmm_dir(&data, &vmm);
                let pid = std::fs::read_to_string(dir.join("qemu.pid"))
                    .ok()
                    .and_then(|text| text.trim().parse::<u32>().ok())
                    .filter(|pid| alive(*pid))
                    .ok_or_else(|| Unmet::Yet(format!("{}: no QEMU process", vmm.name_any())))?;
                let beats = std::fs::read_to_string(dir.join("serial.log"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|line| line.starts_with("hb "))
                    .count();
                if beats == 0 {
                    return Err(Unmet::Yet(format!("{}: no heartbeat yet", vmm.name_any())));
                }
                pids.push(pid);
            }
            if pids.len() == GUESTS {
                Ok(pids)
            } else {
                Err(Unmet::Yet(format!("{} QEMU processes", pids.len())))
            }
        },
    )
    .await
    .expect("the guests run");
    println!("{GUESTS} guests beating in QEMU processes {pids:?} after {took:?}");

    // corral up gone at once: its sleds' machines go with it.
    up.kill9();
    wait_for_polling(
        "every QEMU process gone with corral up",
        Duration::from_secs(15),
        POLL,
        async || {
            let left: Vec<u32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(Unmet::Yet(format!("still running: {left:?}")))
            }
        },
    )
    .await
    .expect("no QEMU process outlives corral up");
}

/// Where a Vmm's QEMU files are: `DATA/sleds/SLED/qemu/UID`.
fn vmm_dir(data: &Path, vmm: &Vmm) -> PathBuf {
    data.join("sleds")
        .join(&vmm.spec.sled)
        .join("qemu")
        .join(vmm.uid().unwrap_or_default())
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !state.is_some_and(|state| state.starts_with('Z') || state.starts_with('X'))
}
