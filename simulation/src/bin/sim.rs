//! Runs simulation seeds: `sim --seed S` replays one, `sim --seeds N [--from
//! S]` runs many. Prints each violation with its seed and the command that
//! replays it, the number of seeds per minute and how much faster than wall
//! time simulated time ran. Exits 1 if any seed found a violation.

use std::process::ExitCode;
use std::time::Duration;

use simulation::{run, PlantedBug, SimConfig};

struct Args {
    from: u64,
    count: u64,
    duration: u64,
    faults: bool,
    planted: Option<PlantedBug>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        from: 1,
        count: 1,
        duration: 60,
        faults: true,
        planted: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse::<u64>()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--seed" => {
                args.from = value("--seed")?;
                args.count = 1;
            }
            "--from" => args.from = value("--from")?,
            "--seeds" => args.count = value("--seeds")?,
            "--duration" => args.duration = value("--duration")?,
            "--no-faults" => args.faults = false,
            "--plant" => {
                let name = it.next().ok_or("--plant needs a bug name")?;
                args.planted = Some(match name.as_str() {
                    "ack-before-commit" => PlantedBug::AckBeforeCommit,
                    "skip-epoch-check" => PlantedBug::SkipStreamEpochCheck,
                    "offset-twice" => PlantedBug::OffsetTwice,
                    "delete-referenced" => PlantedBug::DeleteReferencedObject,
                    "lso-is-hw" => PlantedBug::LsoIsHighWatermark,
                    other => return Err(format!(
                        "--plant: unknown bug {other:?} (ack-before-commit, skip-epoch-check, offset-twice, delete-referenced, lso-is-hw)"
                    )),
                });
            }
            "-h" | "--help" => return Err(
                "usage: sim [--seed S | --seeds N [--from S]] [--duration SECONDS] [--no-faults] [--plant BUG]"
                    .into(),
            ),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.duration < 30 {
        return Err("--duration must be at least 30 (seconds of simulated time)".into());
    }
    Ok(args)
}

/// Log lines carry simulated time (seconds since the run began).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:9.3}s", t.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_timer(SimTime)
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let wall = tokio::time::Instant::now();
    let mut simulated = Duration::ZERO;
    let mut failed = 0;
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for seed in args.from..args.from + args.count {
        let mut config = SimConfig::new(seed);
        config.duration = Duration::from_secs(args.duration);
        config.faults = args.faults;
        config.planted = args.planted;
        let started = tokio::time::Instant::now();
        let report = run(&config);
        simulated += report.simulated;
        for (_, f) in &report.faults {
            *kinds.entry(f.kind()).or_default() += 1;
        }
        println!(
            "seed {seed}: {} in {:.1}s wall, {:.0}s simulated; acked {} indeterminate {} failed {} polls {}; offsets committed {} read {}; {} faults, {} reassignments, {} compactions, {} trims; transactions committed {} aborted {}; {} metadata commands checked, {} objects at the end; fingerprint {:016x}",
            if report.ok() { "ok" } else { "VIOLATION" },
            started.elapsed().as_secs_f64(),
            report.simulated.as_secs_f64(),
            report.acknowledged,
            report.indeterminate,
            report.failed,
            report.polled,
            report.commits_acked,
            report.commits_read,
            report.faults.len(),
            report.reassignments,
            report.compactions,
            report.trims,
            report.txns_committed,
            report.txns_aborted,
            report.commands_checked,
            report.final_objects,
            report.fingerprint,
        );
        if !report.ok() {
            failed += 1;
            if let Some(e) = &report.sim_error {
                println!("  simulation error: {e}");
            }
            for v in &report.violations {
                println!("  {v}");
            }
            for (t, f) in &report.faults {
                println!("  fault at {t} ms: {f}");
            }
            println!("  replay: {}", config.replay_command());
        }
    }
    let elapsed = wall.elapsed().as_secs_f64().max(1e-9);
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {}", kinds.join(", "));
    println!(
        "{} seeds, {failed} with violations; {:.1} seeds/minute; simulated time ran {:.1}x faster than wall time",
        args.count,
        args.count as f64 * 60.0 / elapsed,
        simulated.as_secs_f64() / elapsed
    );
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
