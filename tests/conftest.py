"""Fixtures for Oxbow's end-to-end tests.

`server` is a running broker on fresh ports with a fresh data dir: `oxbow server`
by default, Apache Kafka 4.1.1 (KRaft, one node) when OXBOW_TEST_TARGET=kafka, a
whole cluster (3 controllers, 3 brokers, s3s-fs) entered through one broker
picked per test when OXBOW_TEST_TARGET=cluster (`harness.cluster_target`).
`server_factory` makes more (or differently configured) ones, `s3` runs s3s-fs,
`cluster` runs 3 controllers and 3 brokers on one s3s-fs, `netns_cluster` the
same with every node in its own network namespace (`harness.netns`). Every
server is stopped by PID at teardown; when a test fails, the tail of each
server's log is added to the report.

Markers: `oxbow_only` tests are skipped when OXBOW_TEST_TARGET=kafka;
`single_process("why")` tests (they need the one `oxbow server` process) are
skipped when OXBOW_TEST_TARGET=cluster.
"""
from __future__ import annotations

import uuid

import pytest

from harness import env
from harness.cluster import OxbowCluster
from harness.cluster_target import ClusterTarget, pick_bootstrap
from harness.netns import NetnsTopology, NetnsUnavailable
from harness.servers import STOP_TIMEOUT, KafkaServer, OxbowServer, S3sFs

_SERVERS = pytest.StashKey[list]()


def pytest_report_header(config):
    where = env.KAFKA_BROKER_LIBS if env.TARGET == "kafka" else env.OXBOW_BIN
    return f"oxbow e2e target: {env.TARGET} ({where}); seed {env.SEED} (OXBOW_TEST_SEED); tools: {env.TOOLS}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if env.TARGET == "kafka" and "oxbow_only" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="oxbow-only behaviour; OXBOW_TEST_TARGET=kafka"))
        mark = item.get_closest_marker("single_process")
        if env.TARGET == "cluster" and mark is not None:
            why = mark.args[0] if mark.args else "needs the one oxbow server process"
            item.add_marker(pytest.mark.skip(reason=f"single oxbow server only ({why}); "
                                                    "OXBOW_TEST_TARGET=cluster"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in item.stash.get(_SERVERS, []):
            report.sections.append((f"{srv.name} log tail ({srv.log_path})", srv.log_tail(80)))


def _register(request, srv):
    request.node.stash.setdefault(_SERVERS, []).append(srv)


def _stop_cluster(c: OxbowCluster, stop=None) -> list[str]:
    """Stops every node by PID (with `stop`, default `c.stop`); what went wrong: a node that
    exited on its own, did not exit 0 on SIGTERM, or panicked."""
    crashed = {n.name: n.process.returncode() for n in c.nodes() if n.died_unexpectedly()}
    codes = (stop or c.stop)()
    problems = [f"{name} exited on its own during the test with code {code}"
                for name, code in crashed.items()]
    problems += [f"{name} exited with code {code} after SIGTERM at teardown, expected 0"
                 for name, code in codes.items() if code != 0]
    problems += [f"{n.name} panicked (a panic is always a bug): {n.log_path}"
                 for n in c.nodes() if "panicked at" in n.log_text()]
    return problems


@pytest.fixture
def server_factory(request, tmp_path):
    """make(kind="broker"|"oxbow"|"cluster"|"s3s-fs", start=True, **kwargs) -> server; all
    stopped at teardown. "broker" is the target's: oxbow, kafka or cluster."""
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
        elif kind == "cluster":
            s3 = make("s3s-fs")
            via = pick_bootstrap(env.SEED, request.node.nodeid)
            srv = ClusterTarget(tmp_path / f"cluster-{len(made)}", s3, via,
                                on_new_node=lambda n: _register(request, n), **kwargs)
            print(f"cluster target: bootstrap via {srv.via.name} ({srv.bootstrap}), "
                  f"OXBOW_TEST_SEED={env.SEED}")
        else:
            raise ValueError(kind)
        made.append(srv)
        if not isinstance(srv, ClusterTarget):  # its nodes registered themselves
            _register(request, srv)
        if start:
            srv.start()
        return srv

    yield make
    problems = []
    for srv in reversed(made):
        if isinstance(srv, ClusterTarget):
            problems += _stop_cluster(srv.cluster, srv.stop_nodes)
            continue
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
    """A running broker (oxbow, Kafka when OXBOW_TEST_TARGET=kafka, a cluster entered through
    one of its brokers when OXBOW_TEST_TARGET=cluster) on fresh ports."""
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
        problems = _stop_cluster(c)
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def netns_cluster(request, server_factory, tmp_path):
    """(OxbowCluster, NetnsTopology): the `cluster` above with each controller and broker
    alone in its own network namespace (harness/netns.py); s3s-fs and the test's clients
    stay in the root namespace, on the data bridge. Fails (never skips) where namespaces
    cannot be made. Teardown stops every process by PID, then deletes namespaces, veths
    and bridges, and fails the test if a node misbehaved or anything was left."""
    topology = NetnsTopology()
    problems: list[str] = []
    try:
        unavailable = None
        try:
            topology.create()
        except NetnsUnavailable as e:
            unavailable = str(e)
        if unavailable:
            pytest.fail(f"cannot build the network namespaces this test needs: {unavailable}", pytrace=False)
        s3 = server_factory("s3s-fs", start=False)
        s3.host = topology.root_data_ip  # so that the brokers reach it over the data bridge
        s3.start()
        c = OxbowCluster(tmp_path / "cluster", s3, on_new_node=lambda n: _register(request, n),
                         placement=topology.placement)
        try:
            c.start()
            yield c, topology
        finally:
            topology.heal_all()  # a test that failed mid-cut: let the nodes stop cleanly
            problems += _stop_cluster(c)
            s3.stop()
    finally:
        topology.teardown()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def topic_name(request):
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:60].strip("-")
    return f"{base}-{uuid.uuid4().hex[:6]}"
