"""CPU time the hypervisor gave to other machines (steal), for benchmarks on shared VMs: a run with much steal
measured the neighbours as much as the code. Linux only; elsewhere it reads as unknown."""

from __future__ import annotations

from pathlib import Path


def cpu_times() -> list[int] | None:
    """The machine-wide `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None


def steal_percent(since: list[int] | None) -> float | None:
    """Share of all CPU time since `since` (a `cpu_times()` reading) that was stolen, in percent."""
    now = cpu_times()
    if since is None or now is None or len(now) < 8:
        return None
    spent = [b - a for a, b in zip(since, now)]
    return round(100 * spent[7] / max(1, sum(spent[:8])), 1)
