"""bench/steal.py: the CPU steal that the benchmarks print beside their figures."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import steal  # noqa: E402
from steal import cpu_times, steal_percent  # noqa: E402


def test_steal_is_the_stolen_share_of_cpu_time_since_the_mark(monkeypatch):
    assert steal_percent(None) is None
    # user nice system idle iowait irq softirq steal (guest times after them are already counted in user)
    monkeypatch.setattr(steal, "cpu_times", lambda: [110, 0, 30, 570, 0, 0, 0, 20, 99])
    assert steal_percent([100, 0, 20, 500, 0, 0, 0, 10, 0]) == 10.0  # 10 stolen of 100 ticks
    monkeypatch.setattr(steal, "cpu_times", lambda: None)
    assert steal_percent([0] * 8) is None


def test_cpu_times_reads_this_machines_counters():
    mark = cpu_times()
    if mark is None:
        pytest.skip("no /proc/stat here")
    assert len(mark) >= 8 and all(value >= 0 for value in mark)
