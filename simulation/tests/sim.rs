//! The simulation in CI: a fixed set of seeds with faults must hold every
//! invariant, a seed must replay identically, and planted bugs must be caught.
//!
//! `SIM_SEEDS` (default 4) and `SIM_DURATION` (simulated seconds, default 60)
//! size the fixed-seed run; `scripts/sim.sh` runs many more.

use std::time::Duration;

use simulation::{run, PlantedBug, Report, SimConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_seeded(config: &SimConfig) -> Report {
    run(config)
}

fn describe(config: &SimConfig, report: &Report) -> String {
    let mut out = format!(
        "seed {} ({}): acked {} indeterminate {} failed {} polls {}\n",
        report.seed,
        config.replay_command(),
        report.acknowledged,
        report.indeterminate,
        report.failed,
        report.polled
    );
    if let Some(e) = &report.sim_error {
        out.push_str(&format!("  simulation error: {e}\n"));
    }
    for v in &report.violations {
        out.push_str(&format!("  {v}\n"));
    }
    for (t, f) in &report.faults {
        out.push_str(&format!("  fault at {t} ms: {f}\n"));
    }
    out
}

/// Runs `seeds` on as many threads as the machine has cores.
fn run_many(seeds: Vec<u64>, duration: Duration) -> Vec<(SimConfig, Report)> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queue = std::sync::Mutex::new(seeds.into_iter());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(seed) = queue.lock().unwrap().next() else {
                    return;
                };
                let mut config = SimConfig::new(seed);
                config.duration = duration;
                let report = run_seeded(&config);
                results.lock().unwrap().push((config, report));
            });
        }
    });
    let mut out = results.into_inner().unwrap();
    out.sort_by_key(|(c, _)| c.seed);
    out
}

#[test]
fn fixed_seeds_hold_every_invariant_under_faults() {
    let seeds = env_u64("SIM_SEEDS", 200);
    let duration = Duration::from_secs(env_u64("SIM_DURATION", 60));
    let mut failures = Vec::new();
    let mut faults = 0;
    let mut compactions = 0;
    let mut trims = 0;
    let mut trimmed_seeds = 0;
    let (mut committed, mut aborted) = (0, 0);
    for (config, report) in run_many((1..=seeds).collect(), duration) {
        committed += report.txns_committed;
        aborted += report.txns_aborted;
        faults += report.faults.len();
        compactions += report.compactions;
        trims += report.trims;
        trimmed_seeds += u64::from(report.trims > 0);
        assert!(
            config.retention_ms.is_some() || report.trims == 0,
            "seed {}: trimmed without retention",
            config.seed
        );
        assert!(
            report.acknowledged > 0,
            "seed {}: the workload got no acknowledgement at all",
            config.seed
        );
        assert!(
            report.simulated >= duration,
            "seed {}: ran {:?} of simulated time, less than {duration:?}",
            config.seed,
            report.simulated
        );
        if !report.ok() {
            failures.push(describe(&config, &report));
        }
    }
    println!(
        "{seeds} seeds of {duration:?}, {faults} faults injected, {compactions} compactions, \
         {trims} trims in {trimmed_seeds} seeds, {committed} transactions committed and \
         {aborted} aborted"
    );
    assert!(
        committed as u64 >= seeds && aborted as u64 >= seeds / 2,
        "the transactional workload barely ran: {committed} committed, {aborted} aborted"
    );
    assert!(faults as u64 >= seeds, "too few faults injected: {faults}");
    assert!(
        compactions >= seeds,
        "compaction barely ran under the faults: {compactions} compacted objects"
    );
    // A third of the seeds have retention; most of those must have trimmed.
    assert!(
        trimmed_seeds >= seeds / 4,
        "retention barely ran under the faults: {trims} trims in {trimmed_seeds} seeds"
    );
    assert!(failures.is_empty(), "violations:\n{}", failures.join("\n"));
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let mut config = SimConfig::new(4242);
    config.duration = Duration::from_secs(30);
    config.quiet = Duration::from_secs(12);
    // One run after another, and three side by side on parallel threads
    // (process-wide state shared between runs must not leak into them).
    let first = run_seeded(&config);
    let mut others = vec![run_seeded(&config)];
    others.extend(std::thread::scope(|s| {
        let runs: Vec<_> = (0..3).map(|_| s.spawn(|| run_seeded(&config))).collect();
        runs.into_iter()
            .map(|r| r.join().expect("run thread"))
            .collect::<Vec<_>>()
    }));
    assert!(first.acknowledged > 0, "{}", describe(&config, &first));
    for other in &others {
        assert_eq!(
            first.faults, other.faults,
            "the fault schedule differs between two runs of one seed"
        );
        assert_eq!(
            (first.fingerprint, first.acknowledged, first.polled),
            (other.fingerprint, other.acknowledged, other.polled),
            "two runs of seed {} differ:\n{}\n{}",
            config.seed,
            describe(&config, &first),
            describe(&config, other)
        );
    }
}

/// Each bug planted in the production code must be reported, with its
/// seed, within a bounded number of seeds of the normal faulted run.
#[test]
fn planted_bugs_are_caught() {
    const WITHIN: u64 = 20;
    for (bug, expect) in [
        (PlantedBug::AckBeforeCommit, "lost write"),
        (
            PlantedBug::SkipStreamEpochCheck,
            "was accepted while the stream stood at",
        ),
        (PlantedBug::OffsetTwice, "offset"),
        (PlantedBug::DeleteReferencedObject, "missing from the store"),
        (PlantedBug::LsoIsHighWatermark, "aborted read"),
    ] {
        let mut caught = None;
        for seed in 1..=WITHIN {
            let mut config = SimConfig::new(seed);
            config.planted = Some(bug);
            let report = run_seeded(&config);
            if !report.ok() {
                caught = Some(describe(&config, &report));
                break;
            }
        }
        let Some(found) = caught else {
            panic!("planted bug {bug:?} went unnoticed in {WITHIN} seeds");
        };
        println!(
            "{bug:?} caught: {}",
            found.lines().take(4).collect::<Vec<_>>().join("\n")
        );
        assert!(
            found.contains(expect),
            "{bug:?} was reported as something else: {found}"
        );
    }
}

/// Seeds that found bugs, kept as regression tests, each with what it found.
const REGRESSIONS: &[(u64, &str)] = &[
    (
        1,
        "the orphan collector, on a broker with a stale view, deleted an upload whose commit \
         was still on its way; it was committed afterwards and its data was gone",
    ),
    (
        183,
        "the writer's commit loop panicked (JoinHandle polled after completion) when an \
         object whose upload had failed was put back in the queue and awaited again",
    ),
];

#[test]
fn seeds_that_found_bugs_stay_fixed() {
    for &(seed, found) in REGRESSIONS {
        let config = SimConfig::new(seed);
        let report = run_seeded(&config);
        assert!(
            report.ok(),
            "seed {seed} (once found: {found}) fails again:\n{}",
            describe(&config, &report)
        );
    }
}
