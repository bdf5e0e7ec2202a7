"""kill -9 during continuous acks=all production: nothing acknowledged is lost or moved."""
from __future__ import annotations

import pytest

from harness import crash


@pytest.mark.parametrize("partitions", [1, 4])
def test_kill9_during_produce_loses_nothing_acknowledged(server, topic_name, partitions):
    stats = crash.run_crash_check(server, topic_name, partitions)
    print(f"crash check: {stats}")
