"""Child processes owned by the tests: free ports, start with a log file, stop by PID.

A `ManagedProcess` is started in its own session with stdout and stderr going to
one log file, and is stopped by its PID only (SIGTERM, then SIGKILL after a
timeout). Every live one is also killed from an atexit hook, so an interrupted
run leaves no server behind.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

_LIVE: dict[int, "ManagedProcess"] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 60) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"<no log at {path}: {e}>"
    text = data[-256 * 1024 :].decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One child process with its output in `log_path`, stoppable by PID."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {' '.join(self.argv)} at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )
        _LIVE[self.proc.pid] = self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still running after `timeout` seconds."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.running():
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill9()
        _LIVE.pop(self.proc.pid, None)
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc is None:
            return
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        _LIVE.pop(self.proc.pid, None)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1, on_fail=None):
    """Polls `predicate` until it returns a true value; raises TimeoutError with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{on_fail()}" if on_fail else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@atexit.register
def kill_leftovers() -> None:
    """SIGKILL to every child still running (at interpreter exit, or before tearing down
    what they run in)."""
    for mp in list(_LIVE.values()):
        try:
            mp.kill9()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
