"""What production saw: each logged prediction a row (time, request id, model, text, answer, scores, latency),
buffered in the replica and written in the background as parquet under LOG_DIR/date=YYYY-MM-DD/hour=HH/, a local
path or any URI that storage writes. Never on a request's path: when storage is slow or gone, the bounded buffer
drops rows and counts them, and no request waits."""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow
import pyarrow.parquet
from pydantic import BaseModel, ConfigDict, Field

from sam import LABELS
from sam.storage import filesystem, join, redact
from sam.traffic import key_point

log = logging.getLogger("sam")

SCHEMA = pyarrow.schema([
    ("time", pyarrow.timestamp("ms", tz="UTC")),
    ("request_id", pyarrow.string()),
    ("model", pyarrow.string()),
    ("model_hash", pyarrow.string()),
    ("text", pyarrow.string()),  # null where texts are not kept: text_sha256 still joins and counts them
    ("text_sha256", pyarrow.string()),
    ("sentiment", pyarrow.string()),  # the answer; no `label` column, which training reads as the truth
    ("confidence", pyarrow.float64()),
    ("scores", pyarrow.struct([(label, pyarrow.float64()) for label in LABELS])),
    ("latency_ms", pyarrow.float64()),
    ("tokens", pyarrow.int64()),  # the model's tokens for the text, special ones included, and how many were unknown
    ("unknown_tokens", pyarrow.int64()),
    ("served", pyarrow.bool_()),  # false: a challenger's shadow answer, which no client saw
])
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WARN_EVERY_S = 60.0
CLOSE_WAIT_S = 10.0  # for a write under way as the replica stops, within Serve's graceful shutdown (20 s)


def weights_hash(directory: str | Path, digits: int = 16) -> str:
    """The first `digits` hex digits of the SHA-256 of a model directory's weights: two rows name the same model only
    if it predicted with the same weights, whatever path or version served it (a transfer set keys on all 64)."""
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = Path(directory) / name
        if path.is_file():
            with path.open("rb") as weights:
                for block in iter(lambda: weights.read(1 << 20), b""):
                    digest.update(block)
            break
    return digest.hexdigest()[:digits]


def _draw(request_id: str) -> float:
    """A number in [0, 1): the request id's hash, or a random one for a request without an id."""
    return key_point(f"log:{request_id}") if request_id else random.random()


class LogSettings(BaseModel):
    """The prediction log's knobs, as Serve takes them (`log_dir=s3://... log_share=0.1`): a share of the requests
    (drawn per request), texts kept or only their SHA-256, a flush every `log_flush_s` seconds or `log_flush_rows`
    rows, at most `log_buffer_rows` waiting. No `log_dir`: no log."""

    model_config = ConfigDict(extra="forbid")
    log_dir: Optional[str] = None
    log_share: float = Field(1.0, ge=0, le=1)
    log_text: bool = True
    log_flush_s: float = Field(10.0, gt=0)
    log_flush_rows: int = Field(1000, ge=1)
    log_buffer_rows: int = Field(100_000, ge=1)


class PredictionLog:
    """A replica's log: `add` appends to a bounded buffer (the request's only cost) and a daemon thread writes a
    parquet file per flush. `close` (a replica stopping cleanly) writes what is left."""

    def __init__(self, settings: LogSettings, model: str, model_hash: str,
                 count_tokens: Optional[Callable[[list[str]], tuple[np.ndarray, np.ndarray]]] = None, on_drop=None):
        """`count_tokens`: texts to (tokens, unknown tokens) per text, run by the writer, off the requests' path."""
        self.settings, self.model, self.model_hash = settings, model, model_hash
        self.count_tokens = count_tokens
        self.on_drop = on_drop or (lambda count: None)  # e.g. a Serve counter
        self.buffer: deque[dict] = deque()
        self.written = self.dropped = 0
        self.warned_at = -WARN_EVERY_S
        self.writer = f"{int(time.time())}-{secrets.token_hex(4)}"  # this replica's files never collide with another's
        self.files = 0
        self.lock, self.wake, self.closed = threading.Lock(), threading.Event(), False
        self.thread = threading.Thread(target=self._run, name="sam-prediction-log", daemon=True)
        self.thread.start()

    def add(self, request_id: str, texts: list[str], predictions: list[dict], latency_s: float, served: bool = True) -> None:
        """One request's predictions, if the request is in the logged share; rows beyond the buffer are dropped.
        The share is drawn from the request id where there is one, so a champion and its shadow keep the same requests."""
        if self.settings.log_share < 1.0 and _draw(request_id) >= self.settings.log_share:
            return
        now = datetime.now(timezone.utc)
        rows = [{"time": now, "request_id": request_id, "model": self.model, "model_hash": self.model_hash,
                 "text": text, "text_sha256": None,
                 "sentiment": p["sentiment"], "confidence": p["confidence"], "scores": p["scores"],
                 "latency_ms": round(latency_s * 1000, 3), "served": served} for text, p in zip(texts, predictions)]
        with self.lock:
            room = self.settings.log_buffer_rows - len(self.buffer)
            self.buffer.extend(rows[:max(room, 0)])
            dropped = len(rows) - max(min(room, len(rows)), 0)
            due = len(self.buffer) >= self.settings.log_flush_rows
        if dropped:
            self._dropped(dropped, f"the buffer is full ({self.settings.log_buffer_rows} rows)")
        if due:
            self.wake.set()

    def _dropped(self, rows: int, why: str) -> None:
        """Counted always; said at most once a minute, so an outage does not flood the replica's log."""
        with self.lock:
            self.dropped += rows
        self.on_drop(rows)
        if time.monotonic() - self.warned_at >= WARN_EVERY_S:
            self.warned_at = time.monotonic()
            log.warning("prediction log: %d rows dropped (%d in all): %s", rows, self.dropped, why)

    def _run(self) -> None:
        while not self.closed:
            self.wake.wait(self.settings.log_flush_s)
            self.wake.clear()
            try:
                self.flush()
            except Exception:  # a bug here must not end the writer: the next flush tries again
                log.exception("prediction log: flush failed")

    def flush(self) -> int:
        """Writes the buffered rows, a file per date and hour; rows a failed write held are dropped and counted.
        Returns the rows written."""
        with self.lock:
            rows, self.buffer = list(self.buffer), deque()
        if not rows:
            return 0
        texts = [row["text"] for row in rows]
        tokens, unknown = self.count_tokens(texts) if self.count_tokens else ([None] * len(rows), [None] * len(rows))
        for row, text, n, unk in zip(rows, texts, tokens, unknown):
            row.update(text=text if self.settings.log_text else None, text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                       tokens=None if n is None else int(n), unknown_tokens=None if unk is None else int(unk))
        by_hour: dict[str, list[dict]] = {}
        for row in rows:
            by_hour.setdefault(row["time"].strftime("date=%Y-%m-%d/hour=%H"), []).append(row)
        written = 0
        for partition, part in by_hour.items():
            try:
                self._write(partition, part)
                written += len(part)
            except Exception as error:  # storage slow or gone: the rows are lost, counted, and serving goes on
                self._dropped(len(part), f"writing to {redact(self.settings.log_dir)} failed: {redact(str(error))}")
        self.written += written
        return written

    def _write(self, partition: str, rows: list[dict]) -> None:
        fs, root = filesystem(join(self.settings.log_dir, partition))
        fs.create_dir(root, recursive=True)
        self.files += 1
        path = f"{root}/{self.writer}-{self.files:06d}.parquet"
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows, schema=SCHEMA), path, filesystem=fs)

    def close(self) -> None:
        """Stops the thread and writes what is buffered."""
        self.closed = True
        self.wake.set()
        self.thread.join(timeout=CLOSE_WAIT_S)
        self.flush()
