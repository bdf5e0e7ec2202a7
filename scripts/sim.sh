#!/usr/bin/env bash
# Runs the deterministic simulation over many seeds (release build):
#   scripts/sim.sh --seeds 200            seeds 1..200, 60 s of simulated time each
#   scripts/sim.sh --seeds 50 --from 1000
#   scripts/sim.sh --seed 17              replays one seed (RUST_LOG=info for a trace)
# Prints one line per seed, every violation with the command that replays
# it, seeds per minute, and how much faster than wall time simulated time ran.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --quiet --release -p simulation --bin sim
exec "$root/target/release/sim" "$@"
