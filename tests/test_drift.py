"""The profile's figures and the population stability index that compares two of them."""

import numpy as np
import pytest

from sam.drift import CONFIDENCE_EDGES, LENGTH_EDGES, data_profile, psi, token_counts


def test_psi_is_zero_for_the_same_mix_and_grows_with_the_shift():
    assert psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)
    assert 0 < psi([30, 40, 30], [35, 35, 30]) < psi([30, 40, 30], [70, 20, 10])
    assert np.isfinite(psi([50, 50, 0], [0, 50, 50]))  # a bin empty on one side counts, never divides by zero


def test_a_profile_counts_lengths_unknown_tokens_and_confidence_on_fixed_bins():
    lengths, unknown = token_counts([np.array([2, 7, 100, 3]), np.array([2, 100, 3])], unk_id=100)
    assert lengths.tolist() == [4, 3] and unknown.tolist() == [1, 1]
    profile = data_profile(lengths, unknown, np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]]), labels=np.array([0, 1]))
    assert profile["label_mix"] == {"Negative": 0.5, "Neutral": 0.0, "Positive": 0.5}
    assert profile["true_label_mix"] == {"Negative": 0.5, "Neutral": 0.5, "Positive": 0.0}
    assert profile["unknown_rate"] == pytest.approx(2 / 7)
    assert profile["token_length"] == {"edges": LENGTH_EDGES, "counts": [2] + [0] * (len(LENGTH_EDGES) - 2)}
    assert profile["confidence"]["edges"] == CONFIDENCE_EDGES and sum(profile["confidence"]["counts"]) == 2
