"""oxbow as a process: start-up errors, the data-dir lock, SIGTERM, metrics, env config.

The contract: a bad flag or config, an unreachable store or a data dir locked by
another oxbow gives a one-line error on stderr and a non-zero exit, never a
panic; SIGTERM flushes and exits 0 within seconds; the Kafka port opens only
when the server is ready, which it logs as "oxbow ready"; /metrics serves
Prometheus text with oxbow_ metrics.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from harness import clients, env, wire
from harness.procs import ManagedProcess, free_port, port_accepts, wait_until

pytestmark = [pytest.mark.oxbow_only,
              pytest.mark.single_process("the `oxbow server` process itself: its flags, exit codes, "
                                         "data-dir lock, SIGTERM, /metrics, environment")]

EXIT_WAIT = 60.0


def run_oxbow(args: list[str], tmp_path, extra_env: dict | None = None, timeout: float = EXIT_WAIT):
    """Runs oxbow expecting it to exit on its own; kills it (and fails) if it does not."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("OXBOW_")}
    e.update(extra_env or {})
    try:
        return subprocess.run([str(env.OXBOW_BIN), *args], capture_output=True, text=True, timeout=timeout,
                              env=e, cwd=tmp_path, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as ex:
        raise AssertionError(f"oxbow {' '.join(args)} did not exit within {timeout}s; stderr so far:\n"
                             f"{ex.stderr!r:.2000}") from None


ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"^\s*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")  # a tracing log line, not the error


def assert_one_line_error(p: subprocess.CompletedProcess, *mentions: str, only_line: bool = False) -> str:
    """Non-zero exit, no panic, and the error is one line: the last line of stderr, with at
    most log lines before it (none at all when `only_line`, e.g. for argument errors)."""
    assert p.returncode != 0, f"exit code 0; stderr:\n{p.stderr}"
    assert "panicked" not in p.stderr and "RUST_BACKTRACE" not in p.stderr, f"panic:\n{p.stderr}"
    lines = [ANSI.sub("", line) for line in p.stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    error, before = lines[-1], lines[:-1]
    if only_line:
        assert not before, f"expected exactly one line on stderr, got {len(lines)}:\n{p.stderr}"
    else:
        stray = [line for line in before if not LOG_LINE.match(line)]
        assert not stray, "the error is not one line; extra non-log lines before it:\n" + "\n".join(stray)
    assert not LOG_LINE.match(error), (f"exit code {p.returncode} but stderr ends with a log line, not an"
                                       f" error; last lines:\n" + "\n".join(lines[-4:]))
    for m in mentions:
        assert m.lower() in error.lower(), f"error does not mention {m!r}: {error}"
    return error


def base_args(tmp_path) -> list[str]:
    return ["server", "--data-dir", str(tmp_path / "data"),
            "--kafka-listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{free_port()}"]


def test_bad_flag(tmp_path):
    p = run_oxbow([*base_args(tmp_path), "--no-such-flag"], tmp_path)
    assert_one_line_error(p, "--no-such-flag", only_line=True)


def test_bad_listen_address(tmp_path):
    p = run_oxbow(["server", "--data-dir", str(tmp_path / "data"), "--kafka-listen", "not-an-address",
                   "--metrics-listen", f"127.0.0.1:{free_port()}"], tmp_path)
    assert_one_line_error(p, "not-an-address")


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text("this is = = not toml [\n")
    p = run_oxbow([*base_args(tmp_path), "--config", str(cfg)], tmp_path)
    assert_one_line_error(p)
    p = run_oxbow([*base_args(tmp_path), "--config", str(tmp_path / "missing.toml")], tmp_path)
    assert_one_line_error(p, "missing.toml")


@pytest.mark.parametrize("groups, mention", [
    ("offsets_retention_minutes = 0", "offsets_retention_minutes"),
    ("consumer_session_timeout_ms = 1000\nconsumer_heartbeat_interval_ms = 5000", "heartbeat"),
    ("no_such_setting = 1", "no_such_setting"),
])
def test_bad_groups_settings(tmp_path, groups, mention):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(f"[groups]\n{groups}\n")
    p = run_oxbow([*base_args(tmp_path), "--config", str(cfg)], tmp_path)
    assert_one_line_error(p, mention)


@pytest.mark.parametrize("text, mention", [
    ("snapshot_every_entries = 0", "snapshot_every_entries"),
    ("[storage]\nseal_when_idle = 3", "seal_when_idle"),
    ("[transactions]\ntransactional_id_expiration_ms = 0", "transactional_id_expiration_ms"),
    ("[transactions]\ntransaction_max_timeout_ms = 1000", "transaction_max_timeout_ms"),
])
def test_bad_top_level_and_storage_settings(tmp_path, text, mention):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(text + "\n")
    p = run_oxbow([*base_args(tmp_path), "--config", str(cfg)], tmp_path)
    assert_one_line_error(p, mention)


def test_unreachable_object_store(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    p = run_oxbow([*base_args(tmp_path), "--object-store", "s3://no-bucket/prefix"], tmp_path,
                  extra_env={"AWS_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                             "AWS_REGION": "us-east-1"})
    assert_one_line_error(p)


def test_kafka_port_in_use_fails_cleanly(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = run_oxbow(["server", "--data-dir", str(tmp_path / "data"), "--kafka-listen", f"127.0.0.1:{port}",
                       "--metrics-listen", f"127.0.0.1:{free_port()}"], tmp_path)
    assert p.returncode != 0 and "panicked" not in p.stderr, p.stderr


def test_second_server_on_same_data_dir_is_refused(server_factory, tmp_path):
    first = server_factory("oxbow")
    p = run_oxbow(["server", "--data-dir", str(first.data_dir), "--kafka-listen", f"127.0.0.1:{free_port()}",
                   "--metrics-listen", f"127.0.0.1:{free_port()}"], tmp_path)
    assert p.returncode != 0, f"second oxbow on {first.data_dir} exited 0:\n{p.stderr}"
    assert "panicked" not in p.stderr, p.stderr
    err = p.stderr.lower()
    assert "lock" in err or str(first.data_dir).lower() in err, f"no mention of the lock or data dir:\n{p.stderr}"
    assert first.running()
    wire.api_versions_ok(first.host, first.port)


def test_ready_log_line_and_port(server_factory):
    srv = server_factory("oxbow")
    assert "oxbow ready" in srv.log_text(), srv.log_tail()
    wire.api_versions_ok(srv.host, srv.port)


def test_sigterm_exits_zero_and_keeps_acknowledged_data(server_factory, topic_name):
    srv = server_factory("oxbow")
    clients.create_topic(srv.bootstrap, topic_name, 1)
    msgs = clients.make_messages(2_000, 1, "sigterm")
    clients.produce_confluent(srv.bootstrap, topic_name, msgs)
    started = time.monotonic()
    srv.process.signal(signal.SIGTERM)
    code = srv.process.wait(10.0)
    assert code is not None, "oxbow still running 10s after SIGTERM"
    assert code == 0, f"exit code {code} after SIGTERM"
    print(f"SIGTERM to exit: {time.monotonic() - started:.2f}s")
    assert not port_accepts(srv.host, srv.port)
    srv.restart()
    clients.check_exactly_once_in_order(msgs, clients.consume_confluent(srv.bootstrap, topic_name, [0]))


def test_metrics_endpoint(server_factory, topic_name):
    srv = server_factory("oxbow")
    clients.produce_confluent(srv.bootstrap, topic_name, [clients.Msg(0, b"k", b"v")] * 10)
    with urllib.request.urlopen(srv.metrics_url, timeout=10) as resp:
        assert resp.status == 200
        ctype = resp.headers.get("Content-Type", "")
        text = resp.read().decode()
    assert ctype.startswith("text/plain"), ctype
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert any(line.startswith("oxbow_") for line in samples), f"no oxbow_ metrics in:\n{text[:2000]}"
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?\s+([-+0-9.eE]+|NaN|[+-]?Inf)(\s+-?\d+)?$')
    bad = [line for line in samples if not sample.match(line)]
    assert not bad, f"lines that are not Prometheus samples: {bad[:5]}"


def test_configured_from_environment(tmp_path):
    port, mport = free_port(), free_port()
    e = {k: v for k, v in os.environ.items() if not k.startswith("OXBOW_")}
    e.update({"OXBOW_DATA_DIR": str(tmp_path / "data"), "OXBOW_KAFKA_LISTEN": f"127.0.0.1:{port}",
              "OXBOW_ADVERTISED_LISTENER": f"127.0.0.1:{port}", "OXBOW_METRICS_LISTEN": f"127.0.0.1:{mport}"})
    proc = ManagedProcess("oxbow-env", [str(env.OXBOW_BIN), "server"], tmp_path / "oxbow-env.log", env=e,
                          cwd=tmp_path)
    proc.start()
    try:
        wait_until(lambda: port_accepts("127.0.0.1", port) or not proc.running(), 30,
                   "oxbow configured from OXBOW_* to listen", on_fail=proc.log_tail)
        assert proc.running(), proc.log_tail()
        wire.api_versions_ok("127.0.0.1", port)
        assert (tmp_path / "data").is_dir()
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as resp:
            assert resp.status == 200
    finally:
        code = proc.stop(10)
    assert code == 0, f"exit code {code} after SIGTERM; log:\n{proc.log_tail()}"
