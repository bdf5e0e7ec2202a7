"""The files in deploy/ say only what the binary accepts: every OXBOW_* variable
in the example env files is one the matching command reads, the example
controller env parses (the process gets past its configuration checks and
fails only to bind the example's address), the example broker TOML runs a
real server, and the systemd units start the commands and files the examples
name.
"""
from __future__ import annotations

import configparser
import os
import re
import subprocess

import pytest

from harness import env

pytestmark = pytest.mark.oxbow_only

DEPLOY = env.REPO / "deploy"
EXAMPLES = DEPLOY / "examples"
HOSTS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir())


def read_env_file(path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (no quotes used here)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def env_vars_of(command: str) -> set[str]:
    help_text = subprocess.run([str(env.OXBOW_BIN), command, "--help"], capture_output=True, text=True,
                               timeout=30, check=True).stdout
    return set(re.findall(r"\[env: (OXBOW_[A-Z_]+)=", help_text))


def test_three_hosts_with_both_roles():
    assert [h.name for h in HOSTS] == ["oxbow-1", "oxbow-2", "oxbow-3"]
    for h in HOSTS:
        assert {p.name for p in h.iterdir()} == {"controller.env", "broker.env"}, h


@pytest.mark.parametrize("command", ["controller", "broker"])
def test_example_env_files_use_only_variables_the_command_reads(command):
    known = env_vars_of(command)
    for h in HOSTS:
        used = {k for k in read_env_file(h / f"{command}.env") if k.startswith("OXBOW_")}
        assert used and used <= known, f"{h.name}/{command}.env: unknown {sorted(used - known)}; known {sorted(known)}"


def test_example_ids_and_addresses_agree():
    voters = {read_env_file(h / "controller.env")["OXBOW_VOTERS"] for h in HOSTS}
    assert len(voters) == 1, f"OXBOW_VOTERS differs between hosts: {voters}"
    listed = dict(v.split("=", 1) for v in voters.pop().split(","))
    for h in HOSTS:
        c, b = read_env_file(h / "controller.env"), read_env_file(h / "broker.env")
        assert listed[c["OXBOW_NODE_ID"]] == c["OXBOW_CONTROLLER_LISTEN"], h.name
        assert b["OXBOW_CONTROLLERS"].split(",") == list(listed.values()), h.name
    broker_ids = [read_env_file(h / "broker.env")["OXBOW_NODE_ID"] for h in HOSTS]
    assert len(set(broker_ids)) == len(broker_ids), f"broker ids not unique: {broker_ids}"


def test_example_controller_env_passes_the_configuration_checks(tmp_path):
    """Configuration errors exit 2 before anything starts; with the example env the
    controller gets as far as binding 10.0.0.1:9093, which this machine does not have."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("OXBOW_")}
    e.update(read_env_file(HOSTS[0] / "controller.env"))
    e["OXBOW_DATA_DIR"] = str(tmp_path / "controller")
    p = subprocess.run([str(env.OXBOW_BIN), "controller"], env=e, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "10.0.0.1:9093" in p.stderr, f"exit {p.returncode}\n{p.stderr[-2000:]}"


def test_example_broker_toml_runs_a_server(server_factory, tmp_path):
    """The same TOML schema serves `oxbow server` and `oxbow broker`; flags given by the
    harness (listeners, data dir, object store) override the file's host-specific values."""
    srv = server_factory("oxbow", object_store=f"file://{tmp_path / 'objects'}",
                         extra_args=["--config", str(EXAMPLES / "broker.toml")])
    assert "oxbow ready" in srv.log_text()


@pytest.mark.parametrize("unit, command, files", [
    ("oxbow-controller.service", "controller", ["/etc/oxbow/controller.env"]),
    ("oxbow-broker.service", "broker", ["/etc/oxbow/broker.env", "/etc/oxbow/broker.toml"]),
])
def test_systemd_units(unit, command, files):
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string((DEPLOY / unit).read_text())
    svc = cp["Service"]
    argv = svc["ExecStart"].split()
    assert argv[1] == command, argv
    for f in files:
        assert f in svc["ExecStart"] or f == svc.get("EnvironmentFile"), f"{unit} does not use {f}"
    assert svc["Restart"] == "on-failure" and svc["KillSignal"] == "SIGTERM"
    # Longer than oxbow's own bound on a clean stop (a broker flushes for at most 20 s).
    assert int(svc["TimeoutStopSec"].rstrip("s")) > 20
    assert svc["User"] != "root" and svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
