"""Where things are and how big the tests run, all overridable from the environment.

OXBOW_TEST_TARGET  oxbow (default), kafka or cluster. kafka: run the suite against Apache
                   Kafka 4.1.1 (KRaft, one node, from Maven jars) to check the tests
                   themselves. cluster: the `server` fixture is a whole Oxbow cluster (3
                   controllers, 3 brokers, s3s-fs) reached through one of its brokers.
OXBOW_BIN          the oxbow binary (default <repo>/target/debug/oxbow).
OXBOW_TOOLS        where scripts/setup.sh put s3s-fs and the Kafka jars.
OXBOW_TEST_SCALE   multiplies every message count below (default 1.0).
OXBOW_TEST_SEED    seeds what the run picks at random (kill timing, the cluster target's
                   bootstrap broker); printed in the report header so a run can be replayed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("OXBOW_TOOLS", Path.home() / ".cache" / "oxbow-tools"))
TARGET = os.environ.get("OXBOW_TEST_TARGET", "oxbow").strip().lower()
if TARGET not in ("oxbow", "kafka", "cluster"):
    raise SystemExit(f"OXBOW_TEST_TARGET must be 'oxbow', 'kafka' or 'cluster', not {TARGET!r}")
OXBOW_BIN = Path(os.environ.get("OXBOW_BIN", REPO / "target" / "debug" / "oxbow"))
S3S_FS_BIN = TOOLS / "bin" / "s3s-fs"
KAFKA_CLI_LIBS = TOOLS / "kafka-libs"
KAFKA_BROKER_LIBS = TOOLS / "kafka-broker-libs"
SEED = int(os.environ.get("OXBOW_TEST_SEED", time.time_ns() % 1_000_000))


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment, scaled by OXBOW_TEST_SCALE (never below 1)."""
    base = int(os.environ.get(name, default))
    scale = float(os.environ.get("OXBOW_TEST_SCALE", "1"))
    return max(1, int(base * scale))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))
