use super::*;

fn launch(id: &str, cpus: u32) -> VmmLaunch {
    VmmLaunch {
        id: VmmId::from(id),
        namespace: "default".into(),
        name: format!("vmm-{id}"),
        instance: format!("inst-{id}"),
        resources: Resources {
            cpus,
            memory_mib: 512,
        },
        image: "debian".into(),
        dirty_rate: None,
    }
}

fn capacity() -> Resources {
    Resources {
        cpus: 8,
        memory_mib: 8192,
    }
}

fn machine(dir: &Path) -> Arc<SimHypervisor> {
    let sim = SimHypervisor::open(dir, SimTiming::default(), capacity()).unwrap();
    sim.power_on().unwrap();
    sim
}

async fn state(sim: &SimHypervisor, id: &str) -> Option<VmmRunState> {
    sim.inspect(&VmmId::from(id))
        .await
        .unwrap()
        .map(|info| info.state)
}

#[tokio::test(start_paused = true)]
async fn a_vmm_boots_for_the_boot_time_and_stops_for_the_stop_time() {
    let dir = tempfile::tempdir().unwrap();
    let sim = machine(dir.path());
    sim.create(&launch("a", 2)).await.unwrap();
    assert_eq!(state(&sim, "a").await, Some(VmmRunState::Starting));
    let info = sim.inspect(&VmmId::from("a")).await.unwrap().unwrap();
    assert_eq!(info.settles_in, Some(Duration::from_secs(1)));
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(state(&sim, "a").await, Some(VmmRunState::Starting));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(state(&sim, "a").await, Some(VmmRunState::Running));

    sim.stop(&VmmId::from("a")).await.unwrap();
    assert_eq!(state(&sim, "a").await, Some(VmmRunState::Stopping));
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(
        state(&sim, "a").await,
        Some(VmmRunState::Exited(ExitReason::Stopped))
    );
    sim.destroy(&VmmId::from("a")).await.unwrap();
    sim.destroy(&VmmId::from("a")).await.unwrap();
    assert_eq!(state(&sim, "a").await, None);
}

#[tokio::test(start_paused = true)]
async fn create_is_idempotent_and_refuses_beyond_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let sim = machine(dir.path());
    sim.create(&launch("a", 6)).await.unwrap();
    sim.create(&launch("a", 6)).await.unwrap();
    assert_eq!(sim.list().await.unwrap().len(), 1);
    let refused = sim.create(&launch("b", 4)).await;
    assert!(matches!(refused, Err(HypervisorError::NoCapacity { .. })));
}

#[tokio::test(start_paused = true)]
async fn the_machine_outlives_the_process_until_it_is_powered_off() {
    let dir = tempfile::tempdir().unwrap();
    let boot_id = {
        let sim = machine(dir.path());
        sim.create(&launch("a", 2)).await.unwrap();
        sim.create(&launch("b", 2)).await.unwrap();
        sim.crash(&VmmId::from("b")).unwrap();
        sim.boot_id().await.unwrap()
    };
    // A new process: the boot under way has completed, the crash is remembered.
    let sim = SimHypervisor::open(dir.path(), SimTiming::default(), capacity()).unwrap();
    assert!(sim.is_on());
    assert_eq!(sim.boot_id().await.unwrap(), boot_id);
    assert_eq!(state(&sim, "a").await, Some(VmmRunState::Running));
    assert_eq!(
        state(&sim, "b").await,
        Some(VmmRunState::Exited(ExitReason::GuestCrashed))
    );

    sim.power_off().unwrap();
    assert!(matches!(sim.list().await, Err(HypervisorError::PoweredOff)));
    let new_boot = sim.power_on().unwrap();
    assert_ne!(new_boot, boot_id);
    assert!(sim.list().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn faults_are_announced_and_a_hung_vmm_ignores_stop() {
    let dir = tempfile::tempdir().unwrap();
    let sim = machine(dir.path());
    let mut changes = sim.changes();
    sim.create(&launch("a", 1)).await.unwrap();
    sim.create(&launch("b", 1)).await.unwrap();
    sim.create(&launch("c", 1)).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;

    sim.guest_shutdown(&VmmId::from("a")).unwrap();
    assert_eq!(changes.recv().await.unwrap(), VmmId::from("a"));
    assert_eq!(
        state(&sim, "a").await,
        Some(VmmRunState::Exited(ExitReason::GuestShutdown))
    );
    sim.kill(&VmmId::from("b")).unwrap();
    assert_eq!(changes.recv().await.unwrap(), VmmId::from("b"));
    assert_eq!(state(&sim, "b").await, None);

    sim.hang(&VmmId::from("c")).unwrap();
    sim.stop(&VmmId::from("c")).await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(state(&sim, "c").await, Some(VmmRunState::Running));
    sim.destroy(&VmmId::from("c")).await.unwrap();
    assert_eq!(state(&sim, "c").await, None);

    let unknown = sim
        .spawn_unknown(UnknownVmm {
            namespace: Some("default".into()),
            instance: Some("web".into()),
            resources: Resources::default(),
        })
        .unwrap();
    assert_eq!(changes.recv().await.unwrap(), unknown);
    assert_eq!(sim.find("default", "vmm-a"), Some(VmmId::from("a")));
}

#[tokio::test(start_paused = true)]
async fn reboot_boots_again_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let sim = machine(dir.path());
    sim.create(&launch("a", 1)).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    sim.reboot(&VmmId::from("a")).await.unwrap();
    assert_eq!(state(&sim, "a").await, Some(VmmRunState::Starting));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(state(&sim, "a").await, Some(VmmRunState::Running));
    sim.crash(&VmmId::from("a")).unwrap();
    assert!(matches!(
        sim.reboot(&VmmId::from("a")).await,
        Err(HypervisorError::Ended(_))
    ));
}
