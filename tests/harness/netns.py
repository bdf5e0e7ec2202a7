"""Hosts made of Linux network namespaces, so that a network cut is real:
each cluster node runs alone in its own namespace with its own addresses,
joined to the others by veth pairs on two bridges in the root namespace.

    control bridge oxc<sfx>, 10.213.C.0/24, no address in the root namespace:
        controller-N  at .1N  (controller RPC: Raft between controllers, brokers' calls)
        broker-N      at .2N  (a broker's calls to the controllers)
    data bridge oxd<sfx>, 10.213.D.0/24:
        root namespace at .1  (s3s-fs and the Kafka clients of the test)
        broker-N      at .2N  (Kafka and metrics listeners, advertised to clients)

Brokers never connect to each other (broker/src opens connections only to the
controllers and the object store), and the data bridge does not let them try:
every broker port on it is `isolated` (bridge(8)), so it reaches only the root
namespace. A broker's one way to any peer is thus its control link, and `cut`
takes that link down at the bridge: nothing gets through in either direction,
with no reset or ICMP error, so open connections just time out (a new one may
fail with "no route to host" once ARP gives up); `heal` brings it up again.
The broker stays reachable by the test's clients and the store meanwhile.

Names carry a suffix made from the test process's PID, and the subnets (a
pair of /24s in 10.213.0.0/16) are chosen among those no root-namespace address
or route uses yet (each run's data subnet has an address there), so runs side
by side cannot collide. `teardown` deletes the namespaces (which deletes their
veth ends and so the peers), any veth left, and the bridges; the processes in
the namespaces must be stopped first, by PID, by their owner. For a topology an
interrupted run left behind, an atexit hook kills the harness's processes and
then tears it down.

Needs root and iproute2 (`ip`, `bridge`); without them `create` raises
`NetnsUnavailable` with the reason.
"""
from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from . import procs
from .cluster import Placement

SUBNET_PREFIX = "10.213"
_COUNTER = itertools.count()
_LIVE: list["NetnsTopology"] = []


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, ...)."""


@dataclass
class Host:
    """One node's namespace: its addresses and the root-namespace ends of its veths."""
    name: str                 # the cluster node's name, e.g. "broker-1"
    netns: str
    control_ip: str
    control_veth: str         # root-namespace end, a port of the control bridge
    data_ip: str | None = None
    data_veth: str | None = None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r


class NetnsTopology:
    """`controllers` controller hosts and `brokers` broker hosts, as described above."""

    def __init__(self, controllers: int = 3, brokers: int = 3):
        # The PID in hex (at most 6 digits: pid_max is 2**22) and a per-process counter.
        self.suffix = f"{os.getpid():x}{next(_COUNTER) % 16:x}"
        self.control_bridge = f"oxc{self.suffix}"
        self.data_bridge = f"oxd{self.suffix}"
        self.n_controllers, self.n_brokers = controllers, brokers
        self.hosts: dict[str, Host] = {}
        self.root_data_ip = ""
        self._namespaces: list[str] = []
        self._links: list[str] = []   # bridges and root-namespace veth ends, in creation order

    # --- set-up
    def create(self) -> "NetnsTopology":
        self._check_possible()
        control, data = self._free_subnets()
        self.root_data_ip = f"{data}.1"
        _LIVE.append(self)
        for bridge, addr in ((self.control_bridge, None), (self.data_bridge, f"{self.root_data_ip}/24")):
            _run("ip", "link", "add", self._name(bridge), "type", "bridge")
            self._links.append(bridge)
            if addr:
                _run("ip", "addr", "add", addr, "dev", bridge)
            _run("ip", "link", "set", bridge, "up")
        for i in range(1, self.n_controllers + 1):
            self._add_host(f"controller-{i}", f"c{i}", f"{control}.{10 + i}", None)
        for i in range(1, self.n_brokers + 1):
            self._add_host(f"broker-{i}", f"b{i}", f"{control}.{20 + i}", f"{data}.{20 + i}")
        return self

    def _check_possible(self) -> None:
        missing = [tool for tool in ("ip", "bridge") if shutil.which(tool) is None]
        if missing:
            raise NetnsUnavailable(f"iproute2 tools not found: {missing}")
        if os.geteuid() != 0:
            raise NetnsUnavailable(f"network namespaces need root; running as uid {os.geteuid()}")
        assert self.n_controllers < 10 and self.n_brokers < 10, "one digit per node in interface names"

    @staticmethod
    def _name(name: str) -> str:
        assert len(name) <= 15, f"interface name {name!r} is longer than Linux's 15 characters"
        return name

    def _free_subnets(self) -> tuple[str, str]:
        """Two unused /24s of 10.213.0.0/16 (control, data), starting at a PID-based pair."""
        used = _run("ip", "-4", "-o", "addr", "show").stdout + _run("ip", "-4", "route", "show", "table", "all").stdout
        start = os.getpid() % 127
        for k in range(127):
            pair = 2 * ((start + k) % 127)
            nets = (f"{SUBNET_PREFIX}.{pair}", f"{SUBNET_PREFIX}.{pair + 1}")
            if not any(f"{net}." in used for net in nets):
                return nets
        raise NetnsUnavailable(f"no two free /24 subnets left in {SUBNET_PREFIX}.0.0/16")

    def _add_host(self, name: str, tag: str, control_ip: str, data_ip: str | None) -> None:
        netns = f"oxbow-{self.suffix}-{tag}"
        _run("ip", "netns", "add", netns)
        self._namespaces.append(netns)
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        host = Host(name, netns, control_ip, self._name(f"o{self.suffix}{tag}c"))
        self._veth(host.control_veth, netns, "ctl", control_ip, self.control_bridge, isolated=False)
        if data_ip:
            host.data_ip, host.data_veth = data_ip, self._name(f"o{self.suffix}{tag}d")
            self._veth(host.data_veth, netns, "data", data_ip, self.data_bridge, isolated=True)
        self.hosts[name] = host

    def _veth(self, outer: str, netns: str, inner: str, ip: str, bridge: str, isolated: bool) -> None:
        """A veth pair: `outer` a port of `bridge`, `inner` (with `ip`) created directly in `netns`."""
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", netns)
        self._links.append(outer)
        _run("ip", "link", "set", outer, "master", bridge)
        if isolated:
            _run("bridge", "link", "set", "dev", outer, "isolated", "on")
        _run("ip", "link", "set", outer, "up")
        _run("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", inner)
        _run("ip", "-n", netns, "link", "set", inner, "up")

    # --- use
    def placement(self, node: str) -> Placement:
        """Where cluster node `node` runs (for `OxbowCluster(placement=...)`)."""
        h = self.hosts[node]
        return Placement(peer_host=h.control_ip, client_host=h.data_ip or h.control_ip,
                         prefix=("ip", "netns", "exec", h.netns))

    def cut(self, node: str) -> None:
        """Cuts `node` off from every peer: its control link goes down at the bridge."""
        _run("ip", "link", "set", self.hosts[node].control_veth, "down")

    def heal(self, node: str) -> None:
        _run("ip", "link", "set", self.hosts[node].control_veth, "up")

    def heal_all(self) -> None:
        """Heals every cut (e.g. before stopping the nodes, so that they can hand off)."""
        for node in self.hosts:
            self.heal(node)

    def can_connect(self, node: str, host: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from inside `node`'s namespace to host:port succeeds."""
        probe = ("import socket, sys\n"
                 f"try: socket.create_connection(({host!r}, {port}), timeout={timeout}).close()\n"
                 "except OSError: sys.exit(1)\n")
        r = subprocess.run(["ip", "netns", "exec", self.hosts[node].netns, sys.executable, "-c", probe],
                           capture_output=True, text=True, timeout=timeout + 20)
        return r.returncode == 0

    def runs_in(self, node: str, pid: int) -> bool:
        """Whether process `pid` is in `node`'s namespace (`ip netns exec` execs the command,
        so a node's PID is the node itself, and signals reach it)."""
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{self.hosts[node].netns}").st_ino

    def leftovers(self) -> list[str]:
        """Namespaces and links of this topology that still exist."""
        names = set(_run("ip", "netns", "list").stdout.split())
        left = [ns for ns in self._namespaces if ns in names]
        links = _run("ip", "-o", "link", "show").stdout
        left += [link for link in self._links if f": {link}:" in links or f": {link}@" in links]
        return left

    # --- tear-down
    def teardown(self) -> None:
        """Deletes namespaces, then leftover veths, then bridges; raises if anything stays
        (the atexit hook then tries again)."""
        if self._namespaces or self._links:
            errors = []
            for ns in reversed(self._namespaces):
                r = _run("ip", "netns", "delete", ns, check=False)
                if r.returncode != 0 and "No such file" not in r.stderr:
                    errors.append(f"ip netns delete {ns}: {r.stderr.strip()}")
            for link in reversed(self._links):  # veth ends went with their namespaces; bridges last
                _run("ip", "link", "delete", link, check=False)
            left = self.leftovers()
            if left or errors:
                raise RuntimeError(f"network namespace teardown left {left}; errors: {errors}")
        if self in _LIVE:
            _LIVE.remove(self)


@atexit.register
def _teardown_leftovers() -> None:
    if _LIVE:
        procs.kill_leftovers()  # the processes in the namespaces first
    for topology in list(_LIVE):
        try:
            topology.teardown()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
