"""SAM: tweet sentiment (Negative / Neutral / Positive) trained, tuned and served on Ray."""

LABELS = ("Negative", "Neutral", "Positive")
