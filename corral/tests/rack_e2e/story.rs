//! The story itself: the test, one function per step (see the crate docs).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_end_to_end() {
    story(Layout::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_end_to_end_on_a_three_member_etcd() {
    story(Layout::EtcdCluster).await;
}

async fn story(layout: Layout) {
    println!("store: {layout:?}");
    let seed = common::seed("RACK_E2E_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    // Declared before the rack, so dropped after it: the store outlives its users.
    let etcd = layout.start_etcd().await;
    let mut rack = start_rack(etcd.as_ref()).await;
    tokio::time::timeout(STORY_BOUND, async {
        many_instances_run(&mut rack).await;
        cordon_keeps_new_vmms_off(&mut rack, &mut rng).await;
        stop_and_start(&mut rack, &mut rng).await;
        delete_frees_capacity(&mut rack, &mut rng).await;
        agent_restart_keeps_vmms(&mut rack, &mut rng).await;
        apiserver_outage(&mut rack).await;
        cold_start_of_the_whole_rack(&mut rack, &mut rng).await;
        leader_failover(&mut rack).await;
    })
    .await
    .unwrap_or_else(|_| panic!("the story ran longer than {STORY_BOUND:?}"));
    rack.print_summary().await;
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// Step 1: 200 Instances → all Running, each on exactly one machine.
async fn many_instances_run(rack: &mut Rack) {
    let started = Instant::now();
    let names: Vec<String> = (0..INSTANCES).map(|i| format!("vm-{i:03}")).collect();
    create_instances(rack, &names).await;
    let created = started.elapsed();
    rack.wait_for("200 Instances Running", CONVERGE_MANY, async || {
        all_running(rack, INSTANCES).await
    })
    .await;
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    rack.record("1. 200 instances created (API calls)", created);
    rack.record("1. 200 instances created → all Running", started.elapsed());
}

/// Step 2: Instances created after a cordon get no Vmm on the cordoned sled, whose VMMs stay.
async fn cordon_keeps_new_vmms_off(rack: &mut Rack, rng: &mut StdRng) {
    let cordoned = sled_name(rng.random_range(1..=SLEDS));
    let vmms_before: BTreeSet<String> = vmm_names_on(rack, &cordoned).await;
    assert!(
        !vmms_before.is_empty(),
        "{cordoned} should run some of the first 200 instances"
    );
    set_unschedulable(rack, &cordoned, true).await;
    rack.fault(format!(
        "cordon {cordoned} (it runs {} Vmms)",
        vmms_before.len()
    ));
    let started = Instant::now();
    let late: Vec<String> = (0..16).map(|i| format!("late-{i:02}")).collect();
    create_instances(rack, &late).await;
    let expected = INSTANCES + late.len();
    rack.wait_for("the late Instances Running", CONVERGE_FEW, async || {
        all_running(rack, expected).await
    })
    .await;
    rack.record(
        "2. 16 instances after a cordon → Running",
        started.elapsed(),
    );

    let instances = list_instances(rack).await.expect("listing instances");
    for instance in instances.iter().filter(|i| late.contains(&i.name_any())) {
        let sled = instance.status.as_ref().and_then(|s| s.sled.clone());
        assert_ne!(
            sled.as_deref(),
            Some(cordoned.as_str()),
            "{} was placed on the cordoned {cordoned}",
            instance.name_any()
        );
    }
    let vmms_after = vmm_names_on(rack, &cordoned).await;
    let new_on_cordoned: Vec<&String> = vmms_after.difference(&vmms_before).collect();
    assert!(
        new_on_cordoned.is_empty(),
        "Vmms created on {cordoned} after its cordon: {new_on_cordoned:?}"
    );
    assert_eq!(
        vmms_after, vmms_before,
        "a cordon keeps the VMMs that run on the sled"
    );
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    set_unschedulable(rack, &cordoned, false).await;
    rack.fault(format!("uncordon {cordoned}"));
}

/// Step 3: Halted → Stopped with no Vmm; Always → Running again.
async fn stop_and_start(rack: &mut Rack, rng: &mut StdRng) {
    let names = pick_running(rack, rng, 20).await;
    let started = Instant::now();
    for name in &names {
        set_run_strategy(rack, name, RunStrategy::Halted).await;
    }
    rack.fault(format!("runStrategy Halted on {} instances", names.len()));
    rack.wait_for(
        "the halted Instances Stopped, their Vmms gone",
        CONVERGE_FEW,
        async || stopped_without_vmms(rack, &names).await,
    )
    .await;
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    rack.record(
        "3. 20 instances Halted → Stopped, Vmms gone",
        started.elapsed(),
    );

    let started = Instant::now();
    for name in &names {
        set_run_strategy(rack, name, RunStrategy::Always).await;
    }
    rack.fault(format!("runStrategy Always on the same {}", names.len()));
    let expected = list_instances(rack).await.expect("listing instances").len();
    rack.wait_for(
        "the restarted Instances Running",
        CONVERGE_FEW,
        async || all_running(rack, expected).await,
    )
    .await;
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    rack.record("3. 20 instances Always again → Running", started.elapsed());
}

/// Step 4: deleting Instances removes their Vmms and gives their resources back to the sleds.
async fn delete_frees_capacity(rack: &mut Rack, rng: &mut StdRng) {
    let (before, _) = rack
        .wait_for(
            "the sleds' allocation to match the instances",
            CONVERGE_FEW,
            async || check_allocation(rack).await,
        )
        .await;
    let doomed = pick_running(rack, rng, 40).await;
    let instances = list_instances(rack).await.expect("listing instances");
    let freed_cpus: u32 = instances
        .iter()
        .filter(|i| doomed.contains(&i.name_any()))
        .map(|i| i.spec.cpus)
        .sum();
    let started = Instant::now();
    let api = instance_api(rack);
    for name in &doomed {
        api.delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|error| panic!("deleting instance {name}: {error}"));
    }
    rack.fault(format!(
        "delete {} instances ({freed_cpus} CPUs)",
        doomed.len()
    ));
    rack.wait_for(
        "the deleted Instances and their Vmms gone",
        CONVERGE_FEW,
        async || gone_with_their_vmms(rack, &doomed).await,
    )
    .await;
    let (after, _) = rack
        .wait_for(
            "the sleds' allocation to go down",
            CONVERGE_FEW,
            async || check_allocation(rack).await,
        )
        .await;
    println!("allocated CPUs across the rack: {before} before, {after} after the deletions");
    assert_eq!(
        after,
        before - freed_cpus,
        "deleting instances of {freed_cpus} CPUs should free exactly that"
    );
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    rack.record(
        "4. 40 instances deleted → Vmms gone, allocation down",
        started.elapsed(),
    );
}

/// Step 5: `kill -9` of a busy node-agent and a restart on the same machine: what it ran stays,
/// what it was starting and what changed while it was away are carried out, nothing is
/// duplicated or leaked.
async fn agent_restart_keeps_vmms(rack: &mut Rack, rng: &mut StdRng) {
    let index = rng.random_range(0..SLEDS);
    let sled = rack.agents[index].sled.clone();
    let instances = list_instances(rack).await.expect("listing instances");
    let before: BTreeMap<String, (Option<String>, u32)> = instances
        .iter()
        .map(|i| {
            let status = i.status.clone().unwrap_or_default();
            (i.name_any(), (status.active_vmm, status.restarts))
        })
        .collect();
    let victim = instances
        .iter()
        .find(|i| i.status.as_ref().and_then(|s| s.sled.as_deref()) == Some(sled.as_str()))
        .map(|i| i.name_any())
        .unwrap_or_else(|| panic!("no instance runs on {sled}"));
    let epoch_before = sled_epoch(rack, &sled).await;

    // Kill the agent while it is busy: a burst of new Instances, some placed on its sled, and
    // the kill as soon as one of its Vmms is seen on its way up (its VMM booting, or not yet
    // created).
    let burst: Vec<String> = (0..BURST).map(|i| format!("burst-{i:02}")).collect();
    create_instances(rack, &burst).await;
    rack.fault(format!("create {BURST} more instances"));
    let on_the_way_up = vmms_on_their_way_up(rack, &sled).await;
    let pid = rack.agents[index].process.pid();
    rack.agents[index].process.kill9();
    rack.fault(format!(
        "kill -9 node-agent {sled} (pid {pid:?}), {on_the_way_up} of its Vmms on their way up"
    ));
    let down = Instant::now();
    set_run_strategy(rack, &victim, RunStrategy::Halted).await;
    rack.fault(format!(
        "runStrategy Halted on {victim} (on {sled}) while its agent is down"
    ));
    rack.wait_for(
        "the controller to ask for the victim's Vmm to go",
        CONVERGE_FEW,
        async || vmm_deletion_requested(rack, &victim).await,
    )
    .await;

    rack.restart_agent(index)
        .expect("restarting the node-agent");
    rack.fault(format!(
        "restart node-agent {sled} without --cold-start (down {:.1?})",
        down.elapsed()
    ));
    let restarted = Instant::now();
    rack.wait_for(
        "the victim Stopped and its Vmm gone",
        CONVERGE_FEW,
        async || stopped_without_vmms(rack, std::slice::from_ref(&victim)).await,
    )
    .await;
    let expected = before.len() + burst.len();
    rack.wait_for("every other Instance Running", CONVERGE_FEW, async || {
        all_running(rack, expected).await
    })
    .await;
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    rack.record(
        "5. busy node-agent restarted → burst Running, change carried out",
        restarted.elapsed(),
    );

    let after = list_instances(rack).await.expect("listing instances");
    let moved: Vec<String> = after
        .iter()
        .filter(|i| i.name_any() != victim)
        .filter_map(|i| {
            let status = i.status.clone().unwrap_or_default();
            let was = before.get(&i.name_any())?;
            (*was != (status.active_vmm.clone(), status.restarts)).then(|| {
                format!(
                    "{}: {was:?} → {:?}",
                    i.name_any(),
                    (status.active_vmm, status.restarts)
                )
            })
        })
        .collect();
    assert!(
        moved.is_empty(),
        "an agent restart should not restart or move any instance: {moved:?}"
    );
    assert_eq!(
        sled_epoch(rack, &sled).await,
        epoch_before,
        "an agent restart on the same boot keeps the sled's epoch"
    );
}

/// Step 6: the API server is `kill -9`'d and stays down for [`OUTAGE`] while everything else
/// runs; once it is back, Instances created then run within [`AFTER_OUTAGE`]: every watch
/// failed again and again meanwhile, and none of that may keep a controller waiting.
async fn apiserver_outage(rack: &mut Rack) {
    let what = rack.kill9(Victim::Apiserver);
    rack.fault(format!("kill -9 {what}"));
    // The outage itself: a fault that lasts, not a wait for a condition.
    tokio::time::sleep(OUTAGE).await;
    rack.restart_apiserver()
        .await
        .expect("restarting the apiserver");
    rack.fault("restart the apiserver");
    let started = Instant::now();
    let names: Vec<String> = (0..5).map(|i| format!("after-outage-{i}")).collect();
    create_instances(rack, &names).await;
    rack.wait_for(
        "the Instances created after the outage Running",
        AFTER_OUTAGE,
        async || {
            for name in &names {
                instance_in_state(rack, name, InstanceState::Running).await?;
            }
            Ok(())
        },
    )
    .await;
    rack.record(
        "6. API server down 3 s → new Instances Running",
        started.elapsed(),
    );
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
}

/// Step 7: `kill -9` of everything, then a cold start: every Instance that should run runs again,
/// exactly once, on its sled's new epoch.
async fn cold_start_of_the_whole_rack(rack: &mut Rack, rng: &mut StdRng) {
    let epochs_before = sled_epochs(rack).await;
    let serials_before = vmm_serials(rack).await;
    let mut order: Vec<Victim> = (0..rack.controllers.len())
        .map(Victim::Controllers)
        .chain((0..SLEDS).map(Victim::Agent))
        .chain([Victim::Apiserver])
        .collect();
    order.shuffle(rng);
    for victim in order {
        let what = rack.kill9(victim);
        rack.fault(format!("kill -9 {what}"));
    }

    let started = Instant::now();
    rack.restart_apiserver()
        .await
        .expect("restarting the apiserver");
    rack.fault("restart the apiserver");
    for index in 0..rack.controllers.len() {
        rack.start_controllers(index, &[])
            .expect("starting controllers");
    }
    rack.fault("restart both controllers");
    for index in 0..SLEDS {
        rack.cold_start_agent(index)
            .expect("cold-starting a node-agent");
    }
    rack.fault("restart every node-agent with --cold-start (a power cycle)");
    let expected = list_instances(rack).await.expect("listing instances").len();
    rack.wait_for(
        "every Instance Running after the cold start",
        CONVERGE_MANY,
        async || all_running(rack, expected).await,
    )
    .await;
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    rack.record(
        "7. whole rack kill -9 + cold start → all Running",
        started.elapsed(),
    );

    let serials = vmm_serials(rack).await;
    let mut vmms_per_instance: BTreeMap<u64, usize> = BTreeMap::new();
    for (name, serial) in &serials {
        *vmms_per_instance
            .entry(serial - serials_before.get(name).copied().unwrap_or(0))
            .or_default() += 1;
    }
    println!(
        "Vmms each instance went through in the cold start (count: instances): {vmms_per_instance:?}"
    );
    let epochs = sled_epochs(rack).await;
    for (sled, before) in &epochs_before {
        assert!(
            epochs[sled] > *before,
            "a power cycle bumps the epoch of {sled}: {before} → {}",
            epochs[sled]
        );
    }
    let vmms: BTreeMap<String, Vmm> = list_vmms(rack)
        .await
        .expect("listing vmms")
        .into_iter()
        .map(|vmm| (vmm.name_any(), vmm))
        .collect();
    for instance in list_instances(rack).await.expect("listing instances") {
        let Some(active) = instance.status.as_ref().and_then(|s| s.active_vmm.clone()) else {
            continue;
        };
        let vmm = &vmms[&active];
        assert_eq!(
            vmm.spec.sled_epoch,
            epochs[&vmm.spec.sled],
            "{active} of {} runs on an earlier life of {}",
            instance.name_any(),
            vmm.spec.sled
        );
    }
}

/// Step 8: `kill -9` of the leader: the other controllers process takes the Lease within its
/// duration plus a margin, and a new Instance then runs.
async fn leader_failover(rack: &mut Rack) {
    let (leader, _) = rack
        .wait_for("a leader", START_BOUND, async || rack.leader_index().await)
        .await;
    let survivor = 1 - leader;
    let pid = rack.controllers[leader].pid();
    rack.controllers[leader].kill9();
    rack.fault(format!(
        "kill -9 the leading controllers-{} (pid {pid:?})",
        leader + 1
    ));
    // Polled faster than the other waits: the time is the measurement.
    let bound = LEADER_LEASE + FAILOVER_MARGIN + Duration::from_secs(10);
    let what = format!("controllers-{} to take the Lease", survivor + 1);
    let (_, takeover) =
        wait_for_polling(&what, bound, Duration::from_millis(50), async || match rack
            .leader_index()
            .await?
        {
            index if index == survivor => Ok(()),
            index => Err(format!("controllers-{} leads", index + 1)),
        })
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    rack.record("8. leader killed → survivor holds the Lease", takeover);
    assert!(
        takeover <= LEADER_LEASE + FAILOVER_MARGIN,
        "the survivor took {takeover:?} to lead; the Lease lasts {LEADER_LEASE:?} (margin {FAILOVER_MARGIN:?})"
    );

    let started = Instant::now();
    let name = "after-failover".to_string();
    create_instances(rack, std::slice::from_ref(&name)).await;
    rack.wait_for("the new Instance Running", CONVERGE_FEW, async || {
        instance_in_state(rack, &name, InstanceState::Running).await
    })
    .await;
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    rack.record(
        "8. new instance under the new leader → Running",
        started.elapsed(),
    );
}
