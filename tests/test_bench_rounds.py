"""bench/rounds.py: interleaved A/B rounds, on scripted fake sides (no timing); and the plan serve_bench.py
makes with them for a GPU, which no test machine runs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from rounds import format_rounds, interleaved  # noqa: E402


def scripted(name: str, rates: list[float], calls: list[str]):
    """A fake side: returns the next scripted rate and records that it ran."""
    figures = iter(rates)

    def run() -> float:
        calls.append(name)
        return next(figures)

    return run


def test_sides_alternate_who_goes_first_and_ratios_are_candidate_over_baseline():
    calls, seen = [], []
    result = interleaved(scripted("A", [20, 30, 10, 40, 25], calls), scripted("B", [10, 10, 10, 20, 10], calls),
                         rounds=5, on_round=lambda index, figures: seen.append((index, figures["ratio"])))
    assert calls == ["A", "B", "B", "A", "A", "B", "B", "A", "A", "B"]
    assert result["ratios"] == [2.0, 3.0, 1.0, 2.0, 2.5]
    assert [r["candidate"] for r in result["rounds"]] == [20, 30, 10, 40, 25]
    assert [r["baseline"] for r in result["rounds"]] == [10, 10, 10, 20, 10]
    assert (result["median_ratio"], result["min_ratio"], result["max_ratio"]) == (2.0, 1.0, 3.0)
    assert seen == [(0, 2.0), (1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5)]
    assert {"ratios", "median_ratio", "min_ratio", "max_ratio", "rounds"} <= set(json.loads(json.dumps(result)))


def test_a_zero_baseline_round_is_left_out_of_median_and_range():
    calls = []
    result = interleaved(scripted("A", [9, 9, 9], calls), scripted("B", [3, 0, 9], calls), rounds=3)
    assert result["ratios"] == [3.0, None, 1.0]
    assert (result["median_ratio"], result["min_ratio"], result["max_ratio"]) == (2.0, 1.0, 3.0)
    dead = interleaved(lambda: 1.0, lambda: 0.0, rounds=2)
    assert (dead["median_ratio"], dead["min_ratio"], dead["max_ratio"]) == (None, None, None)
    assert "no round" in format_rounds(dead)


def test_default_is_five_rounds_and_zero_rounds_is_refused():
    assert len(interleaved(lambda: 2.0, lambda: 1.0)["rounds"]) == 5
    with pytest.raises(ValueError):
        interleaved(lambda: 2.0, lambda: 1.0, rounds=0)


def test_table_has_a_row_per_round_and_the_median_with_its_range():
    calls = []
    result = interleaved(scripted("A", [300, 200], calls), scripted("B", [100, 200], calls), rounds=2)
    lines = format_rounds(result, "Serve", "plain", unit="req/s").splitlines()
    assert "Serve" in lines[0] and "plain" in lines[0] and "req/s" in lines[0]
    assert lines[1].split() == ["1", "300.0", "100.0", "3.00x"]
    assert lines[2].split() == ["2", "200.0", "200.0", "1.00x"]
    assert lines[3] == "Serve / plain: median 2.00x, range 1.00x-3.00x over 2 rounds"


def test_serve_bench_on_cuda_puts_both_servers_and_the_raw_model_on_the_gpu():
    import serve_bench

    gpu = serve_bench.plan(serve_bench.parse_args(["--model", "m", "--device", "cuda", "--quantize"]))
    assert gpu["serve"]["num_gpus"] == 1 and gpu["concurrency"] == [1, 32, 128] and gpu["raw_batch_sizes"] == [1, 32, 256]
    assert gpu["plain_server"][gpu["plain_server"].index("--device") + 1] == "cuda"
    assert gpu["runtime"] is None and "--runtime" not in gpu["plain_server"]  # int8 is CPU only: the device's default
    cpu = serve_bench.plan(serve_bench.parse_args(["--model", "m", "--device", "cpu", "--quantize"]))
    assert cpu["serve"]["num_gpus"] == 0 and cpu["concurrency"] == [32] and cpu["raw_batch_sizes"] == [1, 32]
    assert cpu["runtime"] == "onnx-int8" and cpu["plain_server"][-2:] == ["--runtime", "onnx-int8"]
    with pytest.raises(SystemExit):  # a GPU replica against a CPU plain server would compare devices, not servers
        serve_bench.parse_args(["--model", "m", "--device", "cpu", "--num-gpus", "0.5"])
