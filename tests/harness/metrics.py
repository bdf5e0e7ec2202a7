"""Reading Oxbow's Prometheus endpoint from a test."""
from __future__ import annotations

import urllib.request


def metric(url: str, name: str) -> float:
    """Sum of every sample of `name` on a Prometheus text endpoint (0 if absent)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))
