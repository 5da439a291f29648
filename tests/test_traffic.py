"""The counters a rollout judges by: a request key always goes to the same model, raising the share only moves
keys to the challenger, and two readings of every replica give a window's requests, errors, p99 and agreement,
a restarted replica included."""

import pytest

from sam.traffic import LATENCY_BOUNDS_MS, Traffic, percentile_ms, routes_to_challenger, window

KEYS = [f"request-{i}" for i in range(10_000)]


def test_a_key_keeps_its_model_and_a_larger_share_only_adds_keys():
    at = {share: {key for key in KEYS if routes_to_challenger(key, share)} for share in (0.0, 0.05, 0.25, 1.0)}
    assert at[0.0] == set() and at[1.0] == set(KEYS)
    assert at[0.05] <= at[0.25]
    assert abs(len(at[0.25]) / len(KEYS) - 0.25) < 0.02  # SHA-256 spreads keys evenly; the figure never changes
    assert at[0.25] == {key for key in KEYS if routes_to_challenger(key, 0.25)}


def test_a_window_is_the_difference_of_two_readings_of_every_replica():
    steady, restarted = Traffic(), Traffic()
    for _ in range(50):
        steady.record("champion", 0.010)
    before = {steady.replica: steady.snapshot()}
    for _ in range(98):
        steady.record("challenger", 0.003)
    steady.record("challenger", 0.9, error=True)
    steady.record("challenger", 2.0)
    restarted.record("challenger", 0.003)  # a replica that started mid-window counts from zero
    steady.compared(["Neutral", "Positive"], ["Neutral", "Negative"])
    after = {steady.replica: steady.snapshot(), restarted.replica: restarted.snapshot()}

    figures = window(before, after, "challenger")
    assert (figures["requests"], figures["errors"]) == (101, 1)
    assert figures["error_rate"] == pytest.approx(1 / 101)
    assert 3 <= figures["p50_ms"] < 3 * 1.2 and 900 <= figures["p99_ms"] < 900 * 1.2
    assert (figures["shadow_compared"], figures["agreement"]) == (2, 0.5)
    assert window(before, after, "champion")["requests"] == 0  # its 50 came before the window


def test_percentiles_read_the_bin_that_holds_them():
    bins = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    assert percentile_ms(bins, 99) is None
    bins[-1] = 1  # beyond the last bound
    assert percentile_ms(bins, 99) == float("inf")
