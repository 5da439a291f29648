"""bench/steal.py: the CPU steal that the benchmarks print beside their figures."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from steal import cpu_times, steal_percent  # noqa: E402


def test_steal_is_a_share_of_cpu_time_or_unknown():
    assert steal_percent(None) is None
    mark = cpu_times()
    if mark is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(200_000))  # some CPU time to share out
    assert 0.0 <= steal_percent(mark) <= 100.0
