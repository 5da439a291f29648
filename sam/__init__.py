"""SAM: tweet sentiment (Negative / Neutral / Positive) trained, tuned and served on Ray."""

LABELS = ("Negative", "Neutral", "Positive")


class SamError(ValueError):
    """A user's mistake (a bad setting, path, file or model directory): the CLI prints its message as one line.
    Anything else is a bug and keeps its traceback."""
