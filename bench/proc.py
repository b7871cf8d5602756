"""A process tree's memory and CPU time, read from /proc (Linux), for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def family_rss_kb(pid: int) -> int:
    return rss_kb(pid) + sum(family_rss_kb(c) for c in children(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (live ones)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(c) for c in children(pid))
