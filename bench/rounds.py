"""Interleaved rounds for A/B benchmarks: this machine's speed drifts by 10 % and more within minutes, so one run
of each side decides nothing. Run both sides in turn, several rounds, and judge the median ratio and its range.

    result = interleaved(candidate=serve_rate, baseline=plain_rate, rounds=5)
    print(format_rounds(result, "Serve", "plain", unit="req/s"))
"""

from __future__ import annotations

import statistics
from typing import Callable, Optional

RoundHook = Callable[[int, dict], None]


def interleaved(candidate: Callable[[], float], baseline: Callable[[], float], rounds: int = 5,
                on_round: Optional[RoundHook] = None) -> dict:
    """Runs `candidate` and `baseline` (each returns a rate: higher is better) once per round, `rounds` times.

    Returns {"rounds": [{"candidate", "baseline", "ratio"}, ...], "ratios", "median_ratio", "min_ratio",
    "max_ratio"}, ratios being candidate / baseline rounded to 3 decimals. A round whose baseline is not positive
    has ratio None and is left out of the median and range (all None when every round is). `on_round(index,
    round)` is called after each round, e.g. to print it as it comes.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    results = []
    for index in range(rounds):
        # Alternate who goes first (A,B then B,A ...): neither side always gets the cooler or the warmer slot.
        order = [("candidate", candidate), ("baseline", baseline)][:: 1 if index % 2 == 0 else -1]
        figures = {side: run() for side, run in order}
        figures["ratio"] = round(figures["candidate"] / figures["baseline"], 3) if figures["baseline"] > 0 else None
        results.append(figures)
        if on_round is not None:
            on_round(index, figures)
    ratios = [r["ratio"] for r in results]
    known = [r for r in ratios if r is not None]
    return {
        "rounds": results,
        "ratios": ratios,
        "median_ratio": round(statistics.median(known), 3) if known else None,
        "min_ratio": min(known, default=None),
        "max_ratio": max(known, default=None),
    }


def format_round(index: int, figures: dict, width: int = 12) -> str:
    """One table row: round number (from 1), candidate, baseline, ratio."""
    ratio = "n/a" if figures["ratio"] is None else f"{figures['ratio']:.2f}x"
    return f"{index + 1:>5} {figures['candidate']:>{width}.1f} {figures['baseline']:>{width}.1f} {ratio:>8}"


def format_rounds(result: dict, candidate: str = "candidate", baseline: str = "baseline", unit: str = "") -> str:
    """The per-round table, then the median ratio and its range."""
    width = max(12, len(candidate), len(baseline))
    suffix = f" ({unit})" if unit else ""
    lines = [f"{'round':>5} {candidate:>{width}} {baseline:>{width}} {'ratio':>8}{suffix}"]
    lines += [format_round(i, r, width) for i, r in enumerate(result["rounds"])]
    lines.append(summary(result, candidate, baseline))
    return "\n".join(lines)


def summary(result: dict, candidate: str = "candidate", baseline: str = "baseline") -> str:
    """One line: median ratio and range over the rounds."""
    if result["median_ratio"] is None:
        return f"{candidate} / {baseline}: no round had a positive baseline"
    return (f"{candidate} / {baseline}: median {result['median_ratio']:.2f}x, range {result['min_ratio']:.2f}x"
            f"-{result['max_ratio']:.2f}x over {len(result['rounds'])} rounds")
