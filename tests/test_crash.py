"""kill -9 during continuous acks=all production: nothing acknowledged is lost or moved."""
from __future__ import annotations

from harness import crash


def test_kill9_during_produce_loses_nothing_acknowledged(server, topic_name):
    stats = crash.run_crash_check(server, topic_name)
    print(f"crash check: {stats}")
