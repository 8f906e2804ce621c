"""How many CPUs this process may really use: its affinity mask, capped by a container's CPU quota.

``os.cpu_count()`` is the host's count: in a container limited to 2 CPUs on a 64-core host it says 64, and
64 onnxruntime threads time-sliced onto 2 CPUs' worth of quota run far slower than 2 threads.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_cpus() -> int:
    """CPUs usable by this process: ``sched_getaffinity``, capped by cgroup v2 ``cpu.max`` or v1 CFS quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The container's CPU limit in CPUs (quota / period), or None when there is none."""
    base = Path(root)
    try:
        fields = (base / "cpu.max").read_text().split()  # cgroup v2: "max 100000" or "200000 100000"
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v1
        quota = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
