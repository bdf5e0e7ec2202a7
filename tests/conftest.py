"""Fixtures for Oxbow's end-to-end tests.

`server` is a running broker on fresh ports with a fresh data dir: `oxbow server`
by default, Apache Kafka 4.1.1 (KRaft, one node) when OXBOW_TEST_TARGET=kafka.
`server_factory` makes more (or differently configured) ones, `s3` runs s3s-fs,
`cluster` runs 3 controllers and 3 brokers on one s3s-fs. Every server is
stopped by PID at teardown; when a test fails, the tail of each server's log is
added to the report.
"""
from __future__ import annotations

import uuid

import pytest

from harness import env
from harness.cluster import OxbowCluster
from harness.servers import STOP_TIMEOUT, KafkaServer, OxbowServer, S3sFs

_SERVERS = pytest.StashKey[list]()


def pytest_report_header(config):
    where = env.OXBOW_BIN if env.TARGET == "oxbow" else env.KAFKA_BROKER_LIBS
    return f"oxbow e2e target: {env.TARGET} ({where}); tools: {env.TOOLS}"


def pytest_collection_modifyitems(config, items):
    if env.TARGET != "kafka":
        return
    skip = pytest.mark.skip(reason="oxbow-only behaviour; OXBOW_TEST_TARGET=kafka")
    for item in items:
        if "oxbow_only" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in item.stash.get(_SERVERS, []):
            report.sections.append((f"{srv.name} log tail ({srv.log_path})", srv.log_tail(80)))


def _register(request, srv):
    request.node.stash.setdefault(_SERVERS, []).append(srv)


@pytest.fixture
def server_factory(request, tmp_path):
    """make(kind="broker"|"oxbow"|"s3s-fs", start=True, **kwargs) -> server; all stopped at teardown."""
    made = []

    def make(kind: str = "broker", start: bool = True, **kwargs):
        workdir = tmp_path / f"{kind}-{len(made)}"
        if kind == "broker":
            kind = env.TARGET
        if kind == "oxbow":
            srv = OxbowServer(workdir, **kwargs)
        elif kind == "kafka":
            srv = KafkaServer(workdir, **kwargs)
        elif kind == "s3s-fs":
            srv = S3sFs(workdir, **kwargs)
        else:
            raise ValueError(kind)
        made.append(srv)
        _register(request, srv)
        if start:
            srv.start()
        return srv

    yield make
    problems = []
    for srv in reversed(made):
        if srv.died_unexpectedly():
            problems.append(f"{srv.name} exited on its own during the test with code "
                            f"{srv.process.returncode()} ({srv.log_path})")
        was_running = srv.running()
        code = srv.stop()
        if isinstance(srv, OxbowServer) and was_running and code != 0:
            problems.append(f"oxbow exited with code {code} after SIGTERM at teardown, expected 0 within "
                            f"{STOP_TIMEOUT:.0f}s ({srv.log_path})")
        if isinstance(srv, OxbowServer) and "panicked at" in srv.log_text():
            problems.append(f"oxbow panicked during the test (a panic is always a bug): {srv.log_path}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def server(server_factory):
    """A running broker (oxbow, or Kafka when OXBOW_TEST_TARGET=kafka) on fresh ports."""
    return server_factory()


@pytest.fixture
def s3(server_factory):
    """A running s3s-fs with an empty bucket."""
    return server_factory("s3s-fs")


@pytest.fixture
def cluster(request, server_factory, tmp_path):
    """A started OxbowCluster: 3 controllers, 3 brokers, one s3s-fs. Teardown stops every
    node by PID and fails the test if a node exited on its own, did not exit 0 on SIGTERM,
    or panicked."""
    s3 = server_factory("s3s-fs")
    c = OxbowCluster(tmp_path / "cluster", s3, on_new_node=lambda n: _register(request, n))
    try:
        c.start()
        yield c
    finally:
        crashed = {n.name: n.process.returncode() for n in c.nodes() if n.died_unexpectedly()}
        codes = c.stop()
        problems = [f"{name} exited on its own during the test with code {code}"
                    for name, code in crashed.items()]
        problems += [f"{name} exited with code {code} after SIGTERM at teardown, expected 0"
                     for name, code in codes.items() if code != 0]
        problems += [f"{n.name} panicked (a panic is always a bug): {n.log_path}"
                     for n in c.nodes() if "panicked at" in n.log_text()]
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def topic_name(request):
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:60].strip("-")
    return f"{base}-{uuid.uuid4().hex[:6]}"
