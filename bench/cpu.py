"""CPU time per acknowledged order for every process of the pipeline, from the kernel's own
accounting (/proc/PID/stat: utime + stime, plus cutime + cstime for children already reaped).

A process is counted with all its live descendants (PostgreSQL's backends are children of the
postmaster; a backend that exited is in the postmaster's cutime once reaped, never twice).
CPU seconds, unlike wall time, stay meaningful when other work shares the cores.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds incl. reaped children) of one process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: fields start after the last ')'
    fields = raw[raw.rindex(")") + 2:].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / _TICK


def tree_cpu(root: int) -> float:
    """CPU seconds of root and every live descendant."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s is not None:
                stats[int(entry)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children.get(pid, []))
    return total


class CpuMeter:
    """CPU seconds per named process tree between two snapshots."""

    def __init__(self, roots: dict[str, int]):
        self.roots = {name: pid for name, pid in roots.items() if pid}
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: tree_cpu(pid) for name, pid in self.roots.items()}

    def stop(self) -> dict[str, float]:
        return {name: tree_cpu(pid) - self._start[name] for name, pid in self.roots.items()}


def per_order_table(cpu_s: dict[str, float], acked: int) -> tuple[list[str], float]:
    """Markdown rows `| process | CPU s | us per acked order |` and the total us per order."""
    rows, total = [], 0.0
    for name, seconds in sorted(cpu_s.items(), key=lambda kv: -kv[1]):
        us = seconds * 1e6 / acked if acked else float("nan")
        total += us
        rows.append(f"| {name} | {seconds:.2f} | {us:,.0f} |")
    return rows, total
