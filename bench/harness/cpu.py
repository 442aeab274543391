"""Where the CPU and memory went, from Linux /proc (silently nothing elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.harness.processes import Processes

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Server processes whose CPU is summed machine-wide (other users' backends included).
SERVERS = ("postgres", "redis-server")


def proc_cpu_s(pid: int) -> tuple[str, float] | None:
    """(command name, user+system CPU seconds) of one process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, (int(fields[11]) + int(fields[12])) / TICK


def cpu_snapshot(procs: Processes) -> dict[str, float]:
    """CPU seconds so far: of our children by name, of server processes by 'name*:pid', and of the machine."""
    out: dict[str, float] = {}
    for name, proc, _ in procs.procs:
        got = proc_cpu_s(proc.pid)
        if got is not None:
            out[name] = got[1]
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return out
    for pid in pids:
        got = proc_cpu_s(pid)
        if got is not None and got[0] in SERVERS:
            out[f"{got[0]}*:{pid}"] = got[1]
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
    out["machine busy*"] = (sum(cpu[:8]) - idle) / TICK
    return out


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds used between two snapshots; server processes summed by name (new ones counted whole)."""
    used: dict[str, float] = {}
    for key, value in after.items():
        if "*:" in key:
            name = key.split(":", 1)[0]
            used[name] = used.get(name, 0.0) + value - before.get(key, 0.0)
        elif key in before:
            used[key] = value - before[key]
    return used


def cpu_report(before: dict[str, float], after: dict[str, float], elapsed_s: float) -> str:
    """'worker0 61.2 s (95%), ...': what each process used over the interval, in % of one core."""
    if elapsed_s <= 0:
        return ""
    return ", ".join(f"{name} {v:.1f} s ({v / elapsed_s * 100:.0f}%)" for name, v in cpu_used(before, after).items())


def rss_kb(pid: int) -> int:
    """A process's resident memory in KiB (0 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
