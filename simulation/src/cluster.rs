//! One simulated run: 3 controllers and N brokers as turmoil hosts running
//! the production code, a shared faulty object store, client workloads
//! recording a history, a seeded fault schedule, and the checks at the end.
//!
//! Timeline of a run of `duration` simulated seconds: the cluster starts;
//! faults are injected from `faults_from` until `duration - quiet`; then
//! every fault is healed and every crashed process restarted, and the
//! workload must make progress again (liveness) before the final read.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use broker::config::{BrokerConfig, StorageConfig};
use broker::controller_client::{RemoteController, RemoteControllerConfig};
use broker::Broker;
use controller::{Controller, ControllerConfig, StoreLocation};

use crate::checker::{self, CheckOptions, Op, SendOutcome};
use crate::observer::{self, ObserverLog, ObserverPlan, SharedObserver};
use crate::seams::{host_seams, splitmix64, SimDisk};
use crate::store::{FaultRates, SharedStore};
use crate::workload::{self, RunLog, Workload};

const CONTROLLER_PORT: u16 = 9093;
const BROKER_PORT: u16 = 9092;
/// The brokers' object key prefix.
const KEY_PREFIX: &str = "sim";
/// The brokers' `orphan_min_age` in the simulation.
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(15);
/// How long after the run's `duration` the observer compares the store with
/// the metadata.
const CHECK_AFTER: Duration = Duration::from_secs(20);

/// What one run does.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub brokers: u32,
    /// Brokers that start stopped; the schedule adds them to the running
    /// cluster.
    pub spare_brokers: u32,
    /// Simulated length of the run.
    pub duration: Duration,
    /// Faults are injected between `faults_from` and `duration - quiet`.
    pub faults_from: Duration,
    pub quiet: Duration,
    /// Inject faults at all (a fault-free run checks the workload itself).
    pub faults: bool,
    pub partitions: u32,
    pub producers: u32,
    pub consumers: u32,
    /// Members of a KIP-848 consumer group over the topic.
    pub group_members: u32,
    /// Mean pause of a client between operations (see [`Workload::think`]).
    pub think: Duration,
    /// Simulated time turmoil advances per step.
    pub tick: Duration,
    /// Test-only switches that plant a known bug, to show the checker
    /// catches it.
    pub planted: Option<PlantedBug>,
    /// The topic's `retention.ms`: retention trims the partitions (and GC
    /// deletes their objects) under the faults.
    pub retention_ms: Option<u64>,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            brokers: 3,
            spare_brokers: 1,
            duration: Duration::from_secs(60),
            faults_from: Duration::from_secs(5),
            quiet: Duration::from_secs(20),
            faults: true,
            partitions: 4,
            producers: 2,
            consumers: 1,
            group_members: 3,
            think: Duration::from_millis(env_ms("SIM_THINK_MS", 50)),
            tick: Duration::from_millis(env_ms("SIM_TICK_MS", 5)),
            planted: None,
            // A third of the seeds run with retention, so that trims and
            // the deletion of trimmed objects race the faults too (the other
            // seeds keep every value for the lost-write check).
            retention_ms: seed.is_multiple_of(3).then_some(20_000),
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "scripts/sim.sh --seed {} --duration {}",
            self.seed,
            self.duration.as_secs()
        )
    }
}

fn env_ms(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bugs planted in the production code, to show the checkers catch them.
pub use proto::planted::Bug as PlantedBug;

/// One fault and how it is undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    CrashBroker(u32),
    CrashController(u32),
    /// Network partition between a broker and every controller.
    IsolateBrokerFromControllers(u32),
    /// Network partition between two brokers.
    PartitionBrokers(u32, u32),
    /// A broker cannot reach the object store.
    CutBrokerFromStore(u32),
    /// Every message to and from a broker is held (as if it were paused),
    /// then delivered at once.
    PauseBroker(u32),
    /// The store answers 503, times out and loses PUT answers.
    FlakyStore,
    /// A partition of the workload topic is reassigned to a broker (done
    /// at once; nothing to undo).
    Reassign {
        partition: u32,
        to: u32,
    },
    /// A broker stops cleanly (SIGTERM: flush, hand off, exit) and later
    /// starts again.
    StopBroker(u32),
    /// A controller stops cleanly (handing off leadership if it leads) and
    /// later starts again.
    StopController(u32),
    /// A spare broker joins the running cluster (for good).
    AddBroker(u32),
}

impl Fault {
    /// The kind of fault, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::CrashBroker(_) => "crash broker",
            Fault::CrashController(_) => "crash controller",
            Fault::IsolateBrokerFromControllers(_) => "isolate broker from controllers",
            Fault::PartitionBrokers(..) => "partition broker from broker",
            Fault::CutBrokerFromStore(_) => "cut broker from store",
            Fault::PauseBroker(_) => "pause broker",
            Fault::FlakyStore => "flaky store",
            Fault::Reassign { .. } => "reassign partition",
            Fault::StopBroker(_) => "stop broker cleanly",
            Fault::StopController(_) => "stop controller cleanly",
            Fault::AddBroker(_) => "add broker",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::CrashBroker(b) => write!(f, "crash broker b{b}"),
            Fault::CrashController(c) => write!(f, "crash controller c{c}"),
            Fault::IsolateBrokerFromControllers(b) => write!(f, "isolate b{b} from controllers"),
            Fault::PartitionBrokers(a, b) => write!(f, "partition b{a} from b{b}"),
            Fault::CutBrokerFromStore(b) => write!(f, "cut b{b} from the object store"),
            Fault::PauseBroker(b) => write!(f, "pause b{b}"),
            Fault::FlakyStore => write!(f, "flaky object store"),
            Fault::Reassign { partition, to } => {
                write!(f, "reassign partition {partition} to b{to}")
            }
            Fault::StopBroker(b) => write!(f, "stop broker b{b} cleanly"),
            Fault::StopController(c) => write!(f, "stop controller c{c} cleanly"),
            Fault::AddBroker(b) => write!(f, "add broker b{b}"),
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    /// One line per violation (the checker's and liveness failures).
    pub violations: Vec<String>,
    /// Faults in the order injected, with their simulated start (ms).
    pub faults: Vec<(u64, Fault)>,
    pub acknowledged: usize,
    pub indeterminate: usize,
    pub failed: usize,
    pub polled: usize,
    /// Metadata commands the observer checked one by one, reassignments it
    /// carried out, objects in the store at the end.
    pub commands_checked: u64,
    /// Offset commits acknowledged and committed offsets read back.
    pub commits_acked: usize,
    pub commits_read: usize,
    pub reassignments: u64,
    pub final_objects: usize,
    /// Compacted objects committed during the run.
    pub compactions: u64,
    /// Times retention moved a stream's start offset.
    pub trims: u64,
    /// Transactions the transactional producer saw committed and aborted.
    pub txns_committed: usize,
    pub txns_aborted: usize,
    /// Fingerprint of the history and the fault log: the same seed must
    /// give the same fingerprint.
    pub fingerprint: u64,
    pub simulated: Duration,
    /// An error of the simulation itself (a host failed, the run did not
    /// finish in time).
    pub sim_error: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.sim_error.is_none()
    }
}

fn controller_name(i: u32) -> String {
    format!("c{i}")
}

fn broker_name(i: u32) -> String {
    format!("b{i}")
}

fn controller_addrs() -> Vec<String> {
    (1..=3)
        .map(|i| format!("{}:{CONTROLLER_PORT}", controller_name(i)))
        .collect()
}

fn broker_storage() -> StorageConfig {
    StorageConfig {
        object_delete_grace: Duration::from_secs(5),
        orphan_min_age: ORPHAN_MIN_AGE,
        orphan_scan_interval: Duration::from_secs(5),
        retention_check_interval: Duration::from_secs(5),
        // Compaction runs often and seals small objects, so that it races
        // appends, trims, moves and the faults.
        compaction_interval: Duration::from_secs(5),
        compaction_target_bytes: 64 * 1024,
        // Few attempts, so that store and controller faults fail flushes
        // and the partitions' reopen path runs.
        max_attempts: 3,
        ..StorageConfig::default()
    }
}

/// Runs one seed to the end and checks it, on a thread of its own whose
/// randomness follows the seed: std keeps its `HashMap` keys per thread and
/// moves them on with every map, so a second run on a used thread would hash
/// differently.
pub fn run(config: &SimConfig) -> Report {
    let cfg = config.clone();
    #[allow(clippy::disallowed_methods)] // The run is the simulation, not inside it.
    let thread = std::thread::Builder::new()
        .name(format!("sim-seed-{}", config.seed))
        .stack_size(64 << 20)
        .spawn(move || {
            crate::determinism::seed_this_thread(cfg.seed);
            proto::planted::plant(cfg.planted);
            run_here(&cfg)
        });
    let outcome = thread.map_err(|e| e.to_string()).and_then(|t| {
        t.join()
            .map_err(|p| crate::determinism::panic_message(p.as_ref()))
    });
    outcome.unwrap_or_else(|e| Report {
        seed: config.seed,
        violations: Vec::new(),
        faults: Vec::new(),
        acknowledged: 0,
        indeterminate: 0,
        failed: 0,
        polled: 0,
        commands_checked: 0,
        commits_acked: 0,
        commits_read: 0,
        reassignments: 0,
        final_objects: 0,
        compactions: 0,
        trims: 0,
        txns_committed: 0,
        txns_aborted: 0,
        fingerprint: 0,
        simulated: Duration::ZERO,
        sim_error: Some(format!("the simulation panicked: {e}")),
    })
}

fn run_here(config: &SimConfig) -> Report {
    let seed = config.seed;
    let total = config.duration + Duration::from_secs(60);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(total)
        .tick_duration(config.tick)
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        .rng_seed(seed)
        .build();

    let store = SharedStore::new(splitmix64(seed ^ 0x5707));
    let disks: BTreeMap<u32, Arc<SimDisk>> = (1..=3).map(|i| (i, SimDisk::new())).collect();
    let incarnations = Rc::new(RefCell::new(BTreeMap::<String, u64>::new()));

    let controls = Controls::new(config.brokers + config.spare_brokers, config.spare_brokers);
    for i in 1..=3u32 {
        let name = controller_name(i);
        let disk = disks[&i].clone();
        let incarnations = incarnations.clone();
        let controls = controls.clone();
        sim.host(name.clone(), move || {
            let incarnation = next_incarnation(&incarnations, &name);
            let seams = host_seams(seed, &name, incarnation);
            let disk = disk.clone();
            let name = name.clone();
            let control = controls.controller(i);
            let leaders = controls.leaders.clone();
            async move {
                let mut cfg = ControllerConfig::new(u64::from(i), format!("/sim/{name}"));
                cfg.rpc_addr = format!("{name}:{CONTROLLER_PORT}");
                cfg.voters = (1..=3u64)
                    .map(|j| (j, format!("c{j}:{CONTROLLER_PORT}")))
                    .collect();
                cfg.cluster_id = Some("simulated-cluster-000".into());
                cfg.seams = seams;
                cfg.store = StoreLocation::Backend(disk);
                loop {
                    control.wait_until_up().await;
                    match Controller::start(cfg.clone()).await {
                        Ok(controller) => {
                            // Runs until a clean stop is asked for, telling
                            // the schedule whether it leads.
                            while !control.down.get() {
                                let leads = controller.status().leader == Some(u64::from(i));
                                leaders.borrow_mut().insert(i, leads);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            leaders.borrow_mut().insert(i, false);
                            controller.shutdown().await;
                        }
                        Err(e) => {
                            tracing::info!(%name, error = %e, "controller start failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        });
    }

    for i in 1..=config.brokers + config.spare_brokers {
        let name = broker_name(i);
        let store = store.clone();
        let incarnations = incarnations.clone();
        let controls = controls.clone();
        sim.host(name.clone(), move || {
            let incarnation = next_incarnation(&incarnations, &name);
            let seams = host_seams(seed, &name, incarnation);
            let objects = store.handle(&name);
            let name = name.clone();
            let control = controls.broker(i);
            async move {
                let remote = match RemoteController::new(
                    controller_addrs(),
                    RemoteControllerConfig::default(),
                    seams.net.clone(),
                ) {
                    Ok(r) => Arc::new(r),
                    Err(e) => return Err(e.to_string().into()),
                };
                let bcfg = BrokerConfig {
                    node_id: i32::try_from(i).unwrap_or(i32::MAX),
                    advertised_host: name.clone(),
                    advertised_port: BROKER_PORT,
                    auto_create_topics: false,
                    storage: broker_storage(),
                    groups: broker::group::GroupConfig {
                        consumer_session_timeout_ms: 6_000,
                        consumer_heartbeat_interval_ms: 500,
                        ..broker::group::GroupConfig::default()
                    },
                    // Short, so that an id idle through a fault expires and
                    // its producer meets INVALID_PRODUCER_ID_MAPPING.
                    transactional_id_expiration_ms: 3_000,
                    ..BrokerConfig::default()
                };
                loop {
                    control.wait_until_up().await;
                    let broker = match Broker::start(
                        bcfg.clone(),
                        remote.clone(),
                        objects.clone(),
                        KEY_PREFIX.into(),
                        seams.clone(),
                    )
                    .await
                    {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::info!(%name, error = %e, "broker start failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    let listener = seams.net.bind(&format!("{name}:{BROKER_PORT}")).await?;
                    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                    let heartbeat = tokio::spawn(broker::broker::heartbeat_loop(
                        broker.clone(),
                        remote.clone(),
                        stop_rx.clone(),
                    ));
                    let serving = tokio::spawn(broker::kafka::run_listener(
                        listener,
                        broker.clone(),
                        stop_rx,
                    ));
                    // Serves until a clean stop (SIGTERM) is asked for: then
                    // flushes, hands its partitions off and stops, as
                    // `oxbow broker` does.
                    while !control.down.get() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tracing::info!(%name, "stopping cleanly");
                    let _ = stop_tx.send(true);
                    let _ = tokio::time::timeout(Duration::from_secs(20), broker.shutdown()).await;
                    let _ = serving.await;
                    let _ = heartbeat.await;
                }
            }
        });
    }

    let history = Rc::new(RefCell::new(RunLog::default()));
    let workload = Workload {
        seed,
        bootstrap: (1..=config.brokers)
            .map(|i| format!("{}:{BROKER_PORT}", broker_name(i)))
            .collect(),
        topic: "sim".into(),
        partitions: config.partitions,
        produce_until: config.duration - Duration::from_secs(8),
        final_read_by: config.duration + Duration::from_secs(40),
        heal_at: config.duration - config.quiet,
        think: config.think,
        retention_ms: config.retention_ms,
    };
    for p in 0..config.producers {
        let w = workload.clone();
        let h = history.clone();
        sim.client(format!("producer{p}"), async move {
            workload::produce(w, p, h).await;
            Ok(())
        });
    }
    for c in 0..config.consumers {
        let w = workload.clone();
        let h = history.clone();
        sim.client(format!("consumer{c}"), async move {
            workload::consume(w, 100 + c, h).await;
            Ok(())
        });
    }
    // Members heartbeat until 10 s after the end: the quiet period and this
    // let every member hear the group settle.
    let members_stop = config.duration + Duration::from_secs(10);
    for m in 0..config.group_members {
        let w = workload.clone();
        let h = history.clone();
        sim.client(format!("member{m}"), async move {
            workload::member(w, m, members_stop, h).await;
            Ok(())
        });
    }
    {
        let w = workload.clone();
        let h = history.clone();
        sim.client("final-reader", async move {
            workload::final_read(w, 200, h).await;
            Ok(())
        });
    }
    {
        let w = workload.clone();
        let h = history.clone();
        sim.client("txn-producer", async move {
            crate::txn::produce(w, h).await;
            Ok(())
        });
        let w = workload.clone();
        let h = history.clone();
        sim.client("txn-final-reader", async move {
            crate::txn::final_read(w, h).await;
            Ok(())
        });
    }

    let observed = Rc::new(RefCell::new(ObserverLog::default()));
    {
        let plan = ObserverPlan {
            controllers: controller_addrs(),
            topic: workload.topic.clone(),
            key_prefix: KEY_PREFIX.into(),
            check_at: config.duration + CHECK_AFTER,
            // Age, two scans, a lifecycle tick and slack.
            orphan_bound: ORPHAN_MIN_AGE + Duration::from_secs(15),
            marked_bound: Duration::from_secs(15),
        };
        let store = store.clone();
        let log = observed.clone();
        sim.client("observer", async move {
            observer::observe(plan, store, log).await;
            Ok(())
        });
    }

    let mut schedule = Schedule::new(seed, config, observed.clone(), controls.clone());
    let mut sim_error = None;
    loop {
        let now = sim.elapsed();
        schedule.tick(&mut sim, now, &store, &disks);
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                sim_error = Some(e.to_string());
                break;
            }
        }
    }
    let simulated = sim.elapsed();

    let log = history.borrow();
    let history = &log.history;
    let mut violations: Vec<String> = checker::check(history, &CheckOptions::default())
        .iter()
        .map(ToString::to_string)
        .collect();
    violations.extend(log.liveness.iter().cloned());
    violations.extend(log.offsets.iter().cloned());
    violations.extend(workload::check_members(
        &log,
        config.group_members,
        config.partitions,
        members_stop - Duration::from_secs(3),
    ));
    violations.extend(crate::txn::check(&log.txn));
    let txns_committed = log
        .txn
        .txns
        .iter()
        .filter(|t| t.outcome == crate::txn::TxnOutcome::Committed)
        .count();
    let txns_aborted = log
        .txn
        .txns
        .iter()
        .filter(|t| t.outcome == crate::txn::TxnOutcome::Aborted)
        .count();
    let observed = observed.borrow();
    violations.extend(observed.violations.iter().cloned());
    let (acknowledged, indeterminate, failed, polled) = counts(history);
    let mut fp = seed;
    for b in format!("{:?}{:?}", history.ops(), log.txn.txns)
        .into_bytes()
        .into_iter()
        .chain(
            schedule
                .log
                .iter()
                .flat_map(|(t, f)| format!("{t}:{f};").into_bytes()),
        )
    {
        fp = splitmix64(fp ^ u64::from(b));
    }
    Report {
        seed,
        violations,
        faults: schedule.log.clone(),
        acknowledged,
        indeterminate,
        failed,
        polled,
        commands_checked: observed.commands,
        commits_acked: log.commits_acked,
        commits_read: log.commits_read,
        reassignments: observed.moves_done,
        final_objects: observed.final_objects,
        compactions: observed.compactions,
        trims: observed.trims,
        txns_committed,
        txns_aborted,
        fingerprint: fp,
        simulated,
        sim_error,
    }
}

/// (acknowledged, indeterminate, failed) sends and polls.
fn counts(history: &checker::History) -> (usize, usize, usize, usize) {
    let mut c = (0, 0, 0, 0);
    for op in history.ops() {
        match op {
            Op::Send { outcome, .. } => match outcome {
                SendOutcome::Ok(_) => c.0 += 1,
                SendOutcome::Info => c.1 += 1,
                SendOutcome::Fail => c.2 += 1,
            },
            Op::Poll { .. } => c.3 += 1,
            Op::FinalRead { .. } => {}
        }
    }
    c
}

/// Clean stop switches of every host, and which controller leads.
#[derive(Clone)]
struct Controls {
    brokers: Rc<BTreeMap<u32, Rc<HostControl>>>,
    controllers: Rc<BTreeMap<u32, Rc<HostControl>>>,
    leaders: Rc<RefCell<BTreeMap<u32, bool>>>,
}

/// `down` asks the host's process to stop cleanly and stay stopped.
#[derive(Default)]
struct HostControl {
    down: std::cell::Cell<bool>,
}

impl HostControl {
    async fn wait_until_up(&self) {
        while self.down.get() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Controls {
    /// Brokers `1..=brokers`; `spare` of them (the last) start stopped.
    fn new(brokers: u32, spare: u32) -> Self {
        let control = |down: bool| {
            let c = HostControl::default();
            c.down.set(down);
            Rc::new(c)
        };
        Controls {
            brokers: Rc::new(
                (1..=brokers)
                    .map(|i| (i, control(i > brokers - spare)))
                    .collect(),
            ),
            controllers: Rc::new((1..=3).map(|i| (i, control(false))).collect()),
            leaders: Rc::default(),
        }
    }

    fn broker(&self, i: u32) -> Rc<HostControl> {
        self.brokers[&i].clone()
    }

    fn controller(&self, i: u32) -> Rc<HostControl> {
        self.controllers[&i].clone()
    }

    fn leader(&self) -> Option<u32> {
        self.leaders
            .borrow()
            .iter()
            .find(|(_, leads)| **leads)
            .map(|(i, _)| *i)
    }
}

fn next_incarnation(incarnations: &Rc<RefCell<BTreeMap<String, u64>>>, name: &str) -> u64 {
    let mut map = incarnations.borrow_mut();
    let n = map.entry(name.to_string()).or_insert(0);
    *n += 1;
    *n
}

/// The seeded fault schedule: at most two faults at once, at most one
/// controller down, every fault undone after a while, everything healed at
/// `heal_at`.
struct Schedule {
    rng: u64,
    enabled: bool,
    brokers: u32,
    faults_from: Duration,
    heal_at: Duration,
    next_at: Duration,
    /// Active faults and when they end.
    active: Vec<(Duration, Fault)>,
    log: Vec<(u64, Fault)>,
    healed: bool,
    partitions: u32,
    observer: SharedObserver,
    controls: Controls,
}

impl Schedule {
    fn new(seed: u64, config: &SimConfig, observer: SharedObserver, controls: Controls) -> Self {
        Schedule {
            rng: splitmix64(seed ^ 0xFA17),
            enabled: config.faults,
            brokers: config.brokers + config.spare_brokers,
            faults_from: config.faults_from,
            heal_at: config.duration - config.quiet,
            next_at: config.faults_from,
            active: Vec::new(),
            log: Vec::new(),
            healed: false,
            partitions: config.partitions,
            observer,
            controls,
        }
    }

    fn draw(&mut self, n: u64) -> u64 {
        self.rng = splitmix64(self.rng);
        self.rng % n.max(1)
    }

    fn tick(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        now: Duration,
        store: &Arc<SharedStore>,
        disks: &BTreeMap<u32, Arc<SimDisk>>,
    ) {
        if !self.enabled || now < self.faults_from {
            return;
        }
        // Undo what is due (everything at heal time).
        let heal_all = now >= self.heal_at;
        let mut i = 0;
        while i < self.active.len() {
            if heal_all || self.active[i].0 <= now {
                let (_, fault) = self.active.remove(i);
                undo(sim, &fault, store, self.brokers, &self.controls);
            } else {
                i += 1;
            }
        }
        if heal_all {
            self.healed = true;
            return;
        }
        if now < self.next_at || self.active.len() >= 2 {
            return;
        }
        self.next_at = now + Duration::from_millis(1000 + self.draw(3000));
        let brokers = u64::from(self.brokers);
        let fault = match self.draw(13) {
            0 => Fault::CrashBroker(1 + self.draw(brokers) as u32),
            1 => Fault::CrashController(1 + self.draw(3) as u32),
            2 => Fault::IsolateBrokerFromControllers(1 + self.draw(brokers) as u32),
            3 => {
                let a = 1 + self.draw(brokers) as u32;
                let b = 1 + (a + self.draw(brokers - 1) as u32) % self.brokers;
                Fault::PartitionBrokers(a, b)
            }
            4 => Fault::CutBrokerFromStore(1 + self.draw(brokers) as u32),
            5 => Fault::PauseBroker(1 + self.draw(brokers) as u32),
            6 => Fault::FlakyStore,
            7 | 8 => Fault::Reassign {
                partition: self.draw(u64::from(self.partitions)) as u32,
                to: 1 + self.draw(brokers) as u32,
            },
            9 => match self.controls.leader() {
                Some(c) => Fault::CrashController(c),
                None => return,
            },
            10 => Fault::StopBroker(1 + self.draw(brokers) as u32),
            11 => Fault::StopController(1 + self.draw(3) as u32),
            _ => match self.controls.brokers.iter().find(|(_, c)| c.down.get()) {
                Some((b, _)) if !self.active.iter().any(|(_, f)| f == &Fault::StopBroker(*b)) => {
                    Fault::AddBroker(*b)
                }
                _ => return,
            },
        };
        match fault {
            Fault::Reassign { partition, to } => {
                self.observer.borrow_mut().moves.push_back((partition, to));
            }
            Fault::AddBroker(b) => self.controls.broker(b).down.set(false),
            _ => {}
        }
        if matches!(fault, Fault::Reassign { .. } | Fault::AddBroker(_)) {
            self.log.push((now.as_millis() as u64, fault));
            return;
        }
        let controllers_down = self
            .active
            .iter()
            .filter(|(_, f)| matches!(f, Fault::CrashController(_) | Fault::StopController(_)))
            .count();
        let same_host = |a: &Fault, b: &Fault| match (a, b) {
            (
                Fault::CrashBroker(x) | Fault::StopBroker(x),
                Fault::CrashBroker(y) | Fault::StopBroker(y),
            )
            | (
                Fault::CrashController(x) | Fault::StopController(x),
                Fault::CrashController(y) | Fault::StopController(y),
            ) => x == y,
            (a, b) => a == b,
        };
        if self.active.iter().any(|(_, f)| same_host(f, &fault))
            || (matches!(fault, Fault::CrashController(_) | Fault::StopController(_))
                && controllers_down > 0)
            || matches!(fault, Fault::PartitionBrokers(a, b) if a == b)
        {
            return;
        }
        let length = Duration::from_millis(500 + self.draw(8000));
        apply(sim, &fault, store, disks, self.brokers, &self.controls);
        self.log.push((now.as_millis() as u64, fault.clone()));
        self.active.push((now + length, fault));
    }
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    fault: &Fault,
    store: &Arc<SharedStore>,
    disks: &BTreeMap<u32, Arc<SimDisk>>,
    brokers: u32,
    controls: &Controls,
) {
    tracing::info!(%fault, "injecting");
    match fault {
        Fault::StopBroker(b) => controls.broker(*b).down.set(true),
        Fault::StopController(c) => controls.controller(*c).down.set(true),
        Fault::CrashBroker(b) => sim.crash(broker_name(*b)),
        Fault::CrashController(c) => {
            sim.crash(controller_name(*c));
            if let Some(disk) = disks.get(c) {
                disk.crash();
            }
        }
        Fault::IsolateBrokerFromControllers(b) => {
            for c in 1..=3 {
                sim.partition(broker_name(*b), controller_name(c));
            }
        }
        Fault::PartitionBrokers(a, b) => sim.partition(broker_name(*a), broker_name(*b)),
        Fault::CutBrokerFromStore(b) => store.cut_off(&broker_name(*b), true),
        Fault::PauseBroker(b) => {
            for other in peers_of(*b, brokers) {
                sim.hold(broker_name(*b), other);
            }
        }
        Fault::Reassign { .. } | Fault::AddBroker(_) => {}
        Fault::FlakyStore => store.set_rates(FaultRates {
            slow_down: 0.05,
            timeout: 0.01,
            lost_put_response: 0.05,
            latency_ms: (5, 80),
        }),
    }
}

fn undo(
    sim: &mut turmoil::Sim<'_>,
    fault: &Fault,
    store: &Arc<SharedStore>,
    brokers: u32,
    controls: &Controls,
) {
    tracing::info!(%fault, "healing");
    match fault {
        Fault::StopBroker(b) => controls.broker(*b).down.set(false),
        Fault::StopController(c) => controls.controller(*c).down.set(false),
        Fault::CrashBroker(b) => sim.bounce(broker_name(*b)),
        Fault::CrashController(c) => sim.bounce(controller_name(*c)),
        Fault::IsolateBrokerFromControllers(b) => {
            for c in 1..=3 {
                sim.repair(broker_name(*b), controller_name(c));
            }
        }
        Fault::PartitionBrokers(a, b) => sim.repair(broker_name(*a), broker_name(*b)),
        Fault::CutBrokerFromStore(b) => store.cut_off(&broker_name(*b), false),
        Fault::PauseBroker(b) => {
            for other in peers_of(*b, brokers) {
                sim.release(broker_name(*b), other);
            }
        }
        Fault::FlakyStore => store.set_rates(FaultRates::default()),
        Fault::Reassign { .. } | Fault::AddBroker(_) => {}
    }
}

/// Every other host a broker talks to.
fn peers_of(b: u32, brokers: u32) -> Vec<String> {
    let mut out: BTreeSet<String> = (1..=3).map(controller_name).collect();
    out.extend((1..=brokers).filter(|x| *x != b).map(broker_name));
    out.into_iter().collect()
}
