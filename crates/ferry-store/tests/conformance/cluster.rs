//! Typed records: ownership moves by compare-and-swap, membership by lease.

use std::sync::Arc;
use std::time::Duration;

use ferry_store::cluster::{
    Capacity, ClusterError, ClusterStore, CpuFeatures, HostName, HostRecord, HostReport, HostState,
    Keys, Load, MemberEvent, MigrationId, Stored, Timestamp, TransitionError, VmId, VmRecord,
    VmState,
};
use ferry_store::{Election, LeaseKeeper, Store};

use super::{EXPIRY_SLACK, TTL};

fn h(s: &str) -> HostName {
    HostName::new(s).unwrap()
}

fn cluster<S: Store>(s: &S) -> ClusterStore<S> {
    ClusterStore::with_keys(s.clone(), Keys::new("/t/ferry/"))
}

fn vm_on(id: &str, owner: &str) -> VmRecord {
    VmRecord {
        id: VmId::new(id).unwrap(),
        owner: h(owner),
        state: VmState::Running,
        epoch: 1,
        vcpus: 2,
        memory_bytes: 1 << 30,
        cpu: None,
    }
}

fn host(name: &str, port: u16) -> HostRecord {
    HostRecord {
        name: h(name),
        address: format!("127.0.0.1:{port}").parse().unwrap(),
        capacity: Capacity {
            cpus: 8,
            memory_bytes: 16 << 30,
        },
        cpu_features: CpuFeatures::from_cpuid(&[(1, 0, [0, 0, 1 << 20, 0])]),
        state: HostState::Active,
    }
}

fn report(cpu: f64) -> HostReport {
    HostReport {
        load: Load {
            cpu_used: cpu,
            memory_used_bytes: 1 << 30,
        },
        symptoms: vec![],
        reported_at: Timestamp::now(),
        vm_cpu: Default::default(),
    }
}

pub async fn switch_over_race_has_exactly_one_winner<S: Store>(s: &S) {
    const TASKS: usize = 16;
    let c = cluster(s);
    let vm = c.create_vm(&vm_on("vm-1", "a")).await.unwrap();
    assert!(matches!(
        c.create_vm(&vm_on("vm-1", "b")).await,
        Err(ClusterError::AlreadyExists { .. })
    ));

    // Many planners race to start a migration of the same VM to different hosts.
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (c, vm, barrier) = (c.clone(), vm.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let to = h(&format!("dest{t}"));
            c.begin_migration(&vm, &to, &MigrationId::new(format!("m{t}")).unwrap())
                .await
        }));
    }
    let mut started = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => started.push(s),
            Err(ClusterError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(started.len(), 1, "exactly one migration starts");
    let (migrating, migration) = started.pop().unwrap();
    assert_eq!(
        c.migrations().await.unwrap().items.len(),
        1,
        "one migration in flight"
    );
    assert_eq!(c.migrations().await.unwrap().items[0].record, migration);

    // Many attempts race to switch over (from the same read): exactly one wins.
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (c, m, barrier) = (c.clone(), migrating.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            c.switch_over(&m).await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => won.push(s),
            Err(ClusterError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one switch-over wins");
    let now = c.vm(&vm.record.id).await.unwrap().unwrap();
    assert_eq!(now, won[0]);
    assert_eq!(
        (now.record.owner.clone(), now.record.state.clone()),
        (migration.to.clone(), VmState::Running)
    );
    assert_eq!(now.record.epoch, vm.record.epoch + 1);
    assert!(
        c.migrations().await.unwrap().items.is_empty(),
        "switch-over ends the migration"
    );
    // A late abort of the finished migration (the losing side's reaction) changes nothing.
    assert!(matches!(
        c.abort_migration(&migrating).await,
        Err(ClusterError::Conflict { .. })
    ));
    assert!(matches!(
        c.switch_over(&now).await,
        Err(ClusterError::Transition(
            TransitionError::NotInMigration { .. }
        ))
    ));
    assert_eq!(c.vm(&vm.record.id).await.unwrap().unwrap(), now);
}

/// Rounds of contention: in each, every task reads the VM and tries to move it to its own
/// host (begin + switch-over). Every committed version of the record (seen by a watch) has one
/// owner; ownership changes exactly once per round; the epoch counts the changes.
pub async fn ownership_moves_under_contention_one_winner_per_round<S: Store>(s: &S) {
    const TASKS: usize = 8;
    const ROUNDS: u64 = 6;
    let c = cluster(s);
    let id = VmId::new("vm-hot").unwrap();
    let first = c.create_vm(&vm_on("vm-hot", "h0")).await.unwrap();
    let mut watch = s
        .watch_prefix(&c.keys().vm(&id), Some(first.revision.next()))
        .await
        .unwrap();
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (c, id, barrier) = (c.clone(), id.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let vm = c.vm(&id).await.unwrap().unwrap();
                barrier.wait().await;
                let me = h(&format!("r{round}t{t}"));
                let mid = MigrationId::new(format!("r{round}t{t}")).unwrap();
                let (m, _) = match c.begin_migration(&vm, &me, &mid).await {
                    Ok(x) => x,
                    Err(ClusterError::Conflict { .. }) => return false,
                    Err(e) => panic!("{e}"),
                };
                tokio::task::yield_now().await;
                match c.switch_over(&m).await {
                    Ok(done) => {
                        assert_eq!(done.record.owner, me);
                        true
                    }
                    Err(ClusterError::Conflict { .. }) => false,
                    Err(e) => panic!("{e}"),
                }
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1, "round {round}: one move wins");
    }
    let last = c.vm(&id).await.unwrap().unwrap();
    assert_eq!(last.record.epoch, 1 + ROUNDS);
    // Replay every version of the record: begin, switch-over, begin, switch-over...
    let mut epoch = 1;
    let mut owner = h("h0");
    for _ in 0..ROUNDS * 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let ferry_store::WatchEvent::Put(kv) = ev else {
            panic!("VM record deleted")
        };
        let rec: VmRecord = serde_json::from_slice(&kv.value).unwrap();
        match &rec.state {
            VmState::Migrating { from, .. } => {
                assert_eq!(
                    (from, &rec.owner, rec.epoch),
                    (&owner, &owner, epoch),
                    "migration starts from the owner"
                );
            }
            VmState::Running => {
                assert_eq!(
                    rec.epoch,
                    epoch + 1,
                    "each switch-over raises the epoch by one"
                );
                assert_ne!(rec.owner, owner);
                epoch = rec.epoch;
                owner = rec.owner.clone();
            }
            other => panic!("unexpected state {other:?}"),
        }
    }
    assert_eq!(owner, last.record.owner);
}

pub async fn a_migration_costs_two_writes<S: Store>(s: &S) {
    let c = cluster(s);
    let vm = c.create_vm(&vm_on("vm-c", "a")).await.unwrap();
    let before = c.write_counts();
    let (m, _) = c
        .begin_migration(&vm, &h("b"), &MigrationId::new("mc").unwrap())
        .await
        .unwrap();
    c.switch_over(&m).await.unwrap();
    let cost = c.write_counts() - before;
    assert_eq!(cost.txns, 2, "{cost:?}");
    assert_eq!(cost.replicated(), 2, "{cost:?}");
    assert_eq!(cost.keep_alives, 0);
}

pub async fn expired_host_lease_marks_its_vms_lost<S: Store>(s: &S) {
    let c = cluster(s);
    for (i, n) in ["a", "b"].iter().enumerate() {
        c.put_host(&host(n, 7000 + i as u16)).await.unwrap();
    }
    let a = c.join(&h("a"), TTL, &report(1.0)).await.unwrap();
    let b = c.join(&h("b"), TTL * 10, &report(2.0)).await.unwrap();
    assert!(matches!(
        c.join(&h("a"), TTL, &report(0.0)).await,
        Err(ClusterError::AlreadyExists { .. })
    ));
    let members = c.members().await.unwrap();
    let names: Vec<&str> = members.items.iter().map(|m| m.host.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(members.items[0].report.load.cpu_used, 1.0);
    let mut watch = c
        .watch_members(Some(members.revision.next()))
        .await
        .unwrap();
    a.report(&report(3.0)).await.unwrap();
    match watch.next().await.unwrap().unwrap() {
        MemberEvent::Up(m) => assert_eq!((m.host.as_str(), m.report.load.cpu_used), ("a", 3.0)),
        other => panic!("{other:?}"),
    }

    // vm-1 runs on a; vm-2 migrates b -> a; vm-3 migrates a -> b; vm-4 runs on b.
    let v1 = c.create_vm(&vm_on("vm-1", "a")).await.unwrap();
    let v2 = c.create_vm(&vm_on("vm-2", "b")).await.unwrap();
    c.begin_migration(&v2, &h("a"), &MigrationId::new("m2").unwrap())
        .await
        .unwrap();
    let v3 = c.create_vm(&vm_on("vm-3", "a")).await.unwrap();
    c.begin_migration(&v3, &h("b"), &MigrationId::new("m3").unwrap())
        .await
        .unwrap();
    c.create_vm(&vm_on("vm-4", "b")).await.unwrap();

    // A live host cannot be declared dead.
    assert!(matches!(
        c.host_died(&h("a")).await,
        Err(ClusterError::HostAlive { .. })
    ));
    assert_eq!(c.vm(&v1.record.id).await.unwrap().unwrap(), v1);

    // a crashes: its lease expires, membership says so.
    a.abandon();
    let down = tokio::time::timeout(TTL + EXPIRY_SLACK, watch.next())
        .await
        .expect("no membership event after a's lease expired")
        .unwrap()
        .unwrap();
    assert!(
        matches!(down, MemberEvent::Down { ref host, .. } if host.as_str() == "a"),
        "{down:?}"
    );
    let report = c.host_died(&h("a")).await.unwrap();
    let ids = |v: &[VmId]| v.iter().map(|i| i.as_str().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&report.lost), ["vm-1", "vm-3"]);
    assert_eq!(ids(&report.aborted), ["vm-2"]);
    let state = |id: &str| {
        let c = c.clone();
        let id = VmId::new(id).unwrap();
        async move {
            let r = c.vm(&id).await.unwrap().unwrap().record;
            (r.owner.as_str().to_string(), r.state)
        }
    };
    assert_eq!(state("vm-1").await, ("a".into(), VmState::Lost));
    assert_eq!(
        state("vm-2").await,
        ("b".into(), VmState::Running),
        "the source keeps its VM"
    );
    assert_eq!(
        state("vm-3").await,
        ("a".into(), VmState::Lost),
        "the destination never won the switch-over"
    );
    assert_eq!(state("vm-4").await, ("b".into(), VmState::Running));
    assert!(c.migrations().await.unwrap().items.is_empty());
    assert_eq!(
        c.host(&h("a")).await.unwrap().unwrap().record.state,
        HostState::Failed
    );
    // Applying the death again changes nothing.
    let before = c.store().list("/t/ferry/").await.unwrap().revision;
    assert_eq!(c.host_died(&h("a")).await.unwrap(), Default::default());
    assert_eq!(c.store().list("/t/ferry/").await.unwrap().revision, before);

    // a's daemon comes back and finds vm-1 still running: only a can recover it.
    let a = c.join(&h("a"), TTL * 10, &report_default()).await.unwrap();
    let lost = c.vm(&VmId::new("vm-1").unwrap()).await.unwrap().unwrap();
    assert!(matches!(
        c.recover_vm(&lost, &h("b")).await,
        Err(ClusterError::Transition(TransitionError::NotOwner { .. }))
    ));
    let back = c.recover_vm(&lost, &h("a")).await.unwrap();
    assert_eq!(
        (back.record.state, back.record.epoch),
        (VmState::Running, 2)
    );
    assert!(matches!(
        c.recover_vm(&lost, &h("a")).await,
        Err(ClusterError::Conflict { .. })
    ));
    a.leave().await.unwrap();
    b.leave().await.unwrap();
    assert!(
        c.members().await.unwrap().items.is_empty(),
        "leaving deletes the membership at once"
    );
}

fn report_default() -> HostReport {
    report(0.0)
}

pub async fn guarded_changes_stop_when_leadership_ends<S: Store>(s: &S) {
    let c = cluster(s);
    let keeper = LeaseKeeper::grant(s.clone(), TTL * 10).await.unwrap();
    let leadership = Election::new(s.clone(), c.keys().planner_leader())
        .campaign("planner-a", keeper.id())
        .await
        .unwrap();
    let planner = c.guarded_by(leadership.condition());
    let hr = planner.put_host(&host("a", 7000)).await.unwrap();
    planner
        .set_host_state(
            &h("a"),
            HostState::Draining {
                deadline: Timestamp(42),
            },
        )
        .await
        .unwrap();
    let vm = planner.create_vm(&vm_on("vm-g", "a")).await.unwrap();
    assert!(leadership.clone().resign().await.unwrap());

    let before = s.list("/t/").await.unwrap().revision;
    assert!(matches!(
        planner
            .begin_migration(&vm, &h("b"), &MigrationId::new("mg").unwrap())
            .await,
        Err(ClusterError::NotLeader { .. })
    ));
    assert!(matches!(
        planner.put_host(&hr.record).await,
        Err(ClusterError::NotLeader { .. })
    ));
    assert!(matches!(
        planner.set_host_state(&h("a"), HostState::Active).await,
        Err(ClusterError::NotLeader { .. })
    ));
    assert_eq!(
        s.list("/t/").await.unwrap().revision,
        before,
        "a deposed leader changed nothing"
    );
    assert_eq!(
        c.host(&h("a")).await.unwrap().unwrap().record.state,
        HostState::Draining {
            deadline: Timestamp(42)
        }
    );
    // Unguarded access still works.
    assert!(c
        .begin_migration(&vm, &h("b"), &MigrationId::new("mg").unwrap())
        .await
        .is_ok());
}

pub async fn records_of_another_schema_are_refused<S: Store>(s: &S) {
    let c = cluster(s);
    let v: Stored<VmRecord> = c.create_vm(&vm_on("vm-s", "a")).await.unwrap();
    let key = c.keys().vm(&v.record.id);
    let raw = s.get(&key).await.unwrap().unwrap().value;
    let newer = String::from_utf8(raw)
        .unwrap()
        .replace("\"schema\":1", "\"schema\":99");
    s.put(&key, newer.into_bytes(), None).await.unwrap();
    assert!(matches!(
        c.vm(&v.record.id).await,
        Err(ClusterError::UnsupportedSchema { found: 99, .. })
    ));
    s.put(&key, b"not json".to_vec(), None).await.unwrap();
    assert!(matches!(c.vms().await, Err(ClusterError::Decode { .. })));
}
