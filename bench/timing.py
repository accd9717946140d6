"""CPU time for the benchmarks: a shared machine's load moves wall time far more than it moves this."""

import os
import resource
from pathlib import Path


def _live_descendants_cpu() -> float:
    """CPU seconds so far of this process's live descendants (DataLoader workers, say), from /proc:
    utime and stime are the 14th and 15th fields of /proc/<pid>/stat, in clock ticks."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    mine, ticks, grew = {os.getpid()}, 0, True
    while grew:
        found = {pid for pid, (parent, _) in stats.items() if parent in mine} - mine
        mine |= found
        ticks += sum(stats[pid][1] for pid in found)
        grew = bool(found)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """CPU seconds of this process and its descendants, alive or ended."""
    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime + _live_descendants_cpu()
