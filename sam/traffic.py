"""What a rollout judges a challenger on: each ingress replica counts, per model, its requests, errors and a
latency histogram, and in shadow mode how often the two models agreed. The counts only grow, so a reader takes a
snapshot from every replica (`/model`'s `traffic`) before and after a hold and judges the difference, as
Prometheus does with counters. Imports no Ray."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import secrets
from typing import Optional

# Upper bounds of the latency bins: 1 ms to about 33 s in steps of 2^(1/4) (19 %), so a p99 read from them is
# at most a fifth above the true one.
LATENCY_BOUNDS_MS = tuple(round(2 ** (i / 4), 2) for i in range(61))


def key_point(key: str) -> float:
    """A request key as a number in [0, 1), the same on any replica or process (SHA-256, not Python's salted
    `hash`): a share of keys is the keys below it."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def routes_to_challenger(key: str, share: float) -> bool:
    """The same request key goes to the same model while the share is unchanged; raising the share only moves
    keys from the champion to the challenger."""
    return share > 0 and key_point(key) < share


class Traffic:
    """One replica's counters."""

    def __init__(self):
        self.replica = secrets.token_hex(6)
        self.models: dict[str, dict] = {}
        self.shadow = {"compared": 0, "agreed": 0, "failed": 0, "skipped": 0}

    def _model(self, model: str) -> dict:
        return self.models.setdefault(model, {"requests": 0, "errors": 0, "latency_ms": [0] * (len(LATENCY_BOUNDS_MS) + 1)})

    def record(self, model: str, latency_s: float, error: bool = False) -> None:
        counts = self._model(model)
        counts["requests"] += 1
        counts["errors"] += error
        counts["latency_ms"][bisect.bisect_left(LATENCY_BOUNDS_MS, latency_s * 1000)] += 1  # on every request: no numpy

    def compared(self, champion: list[str], challenger: list[str]) -> None:
        """A shadow request's two answers, text by text."""
        self.shadow["compared"] += len(champion)
        self.shadow["agreed"] += sum(a == b for a, b in zip(champion, challenger))

    def snapshot(self) -> dict:
        return {"replica": self.replica, "models": {name: {**c, "latency_ms": list(c["latency_ms"])} for name, c in self.models.items()},
                "shadow": dict(self.shadow)}


def _delta(before: Optional[dict], after: dict) -> dict:
    """`after` less `before` for one replica; a replica that restarted (or is new) counts from zero."""
    if before is None:
        return after
    models = {}
    for name, counts in after["models"].items():
        old = before["models"].get(name, {"requests": 0, "errors": 0, "latency_ms": [0] * len(counts["latency_ms"])})
        models[name] = {"requests": counts["requests"] - old["requests"], "errors": counts["errors"] - old["errors"],
                        "latency_ms": [a - b for a, b in zip(counts["latency_ms"], old["latency_ms"])]}
    return {"models": models, "shadow": {k: v - before["shadow"].get(k, 0) for k, v in after["shadow"].items()}}


def percentile_ms(bins: list[int], q: float) -> Optional[float]:
    """The upper bound of the bin holding the q-th percentile; None without requests (the last bin: infinity)."""
    total = sum(bins)
    if not total:
        return None
    index = bisect.bisect_left(list(itertools.accumulate(bins)), q / 100 * total)
    return LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else float("inf")


def window(before: dict[str, dict], after: dict[str, dict], model: str) -> dict:
    """What `model` did between two readings of every replica (each a replica id to its snapshot): requests,
    error rate, p50 and p99 latency, and shadow agreement where shadow requests were compared."""
    requests = errors = 0
    bins = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    shadow = {"compared": 0, "agreed": 0, "failed": 0, "skipped": 0}
    for replica, snapshot in after.items():
        delta = _delta(before.get(replica), snapshot)
        counts = delta["models"].get(model)
        if counts:
            requests, errors = requests + counts["requests"], errors + counts["errors"]
            bins = [a + b for a, b in zip(bins, counts["latency_ms"])]
        for key in shadow:
            shadow[key] += delta["shadow"].get(key, 0)
    return {"requests": requests, "errors": errors, "error_rate": errors / requests if requests else 0.0,
            "p50_ms": percentile_ms(bins, 50), "p99_ms": percentile_ms(bins, 99),
            "shadow_compared": shadow["compared"], "shadow_failed": shadow["failed"], "shadow_skipped": shadow["skipped"],
            "agreement": shadow["agreed"] / shadow["compared"] if shadow["compared"] else None}
