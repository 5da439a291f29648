"""The prediction log on its own: rows as parquet partitioned by date and hour, texts or their hashes, the logged
share, a bounded buffer that drops and counts rather than block, and a clean close that writes what is left."""

import hashlib
import time

import numpy as np
import pyarrow.dataset
import pyarrow.parquet
import pytest
from pydantic import ValidationError

from sam import LABELS
from sam.prediction_log import SCHEMA, LogSettings, PredictionLog, weights_hash

PREDICTION = {"sentiment": "Positive", "label": 2, "confidence": 0.9, "scores": {"Negative": 0.05, "Neutral": 0.05, "Positive": 0.9}}


def logged(log_dir) -> list[dict]:
    return pyarrow.dataset.dataset(str(log_dir), format="parquet", partitioning="hive").to_table().to_pylist()


def words(texts):  # a stand-in for the model's tokenizer: a token per word, and none unknown
    return np.array([len(text.split()) + 2 for text in texts]), np.zeros(len(texts), dtype=int)


def a_log(tmp_path, on_drop=None, **knobs) -> PredictionLog:
    settings = LogSettings(log_dir=str(tmp_path / "log"), **{"log_flush_s": 3600, **knobs})  # flushed by the test
    return PredictionLog(settings, model="models/latest", model_hash="abc", count_tokens=words, on_drop=on_drop)


def test_rows_land_as_parquet_by_date_and_hour_with_every_field(tmp_path):
    log = a_log(tmp_path)
    log.add("req-1", ["I love it", "so sad"], [PREDICTION, PREDICTION | {"sentiment": "Negative", "label": 0}], 0.0123)
    assert log.flush() == 2
    (partition,) = [path for path in (tmp_path / "log").glob("date=*/hour=*") if path.is_dir()]
    assert len(list(partition.glob("*.parquet"))) == 1
    rows = logged(tmp_path / "log")
    assert [row["text"] for row in rows] == ["I love it", "so sad"] and [row["sentiment"] for row in rows] == ["Positive", "Negative"]
    first = rows[0]
    assert set(first) == set(SCHEMA.names) | {"date", "hour"}
    assert (first["request_id"], first["model"], first["model_hash"], first["latency_ms"]) == ("req-1", "models/latest", "abc", 12.3)
    assert first["text_sha256"] == hashlib.sha256(b"I love it").hexdigest()
    assert (first["tokens"], first["unknown_tokens"]) == (5, 0)  # counted by the writer, off the request's path
    assert list(first["scores"]) == list(LABELS) and first["confidence"] == 0.9
    assert first["time"].strftime("%Y-%m-%d") == str(first["date"]) and first["time"].hour == int(first["hour"])


def test_texts_can_be_kept_as_hashes_only_and_a_share_of_requests_logged(tmp_path):
    hashed = a_log(tmp_path / "hashed", log_text=False)
    hashed.add("r", ["private words"], [PREDICTION], 0.01)
    hashed.flush()
    (row,) = logged(tmp_path / "hashed" / "log")
    assert row["text"] is None and row["text_sha256"] == hashlib.sha256(b"private words").hexdigest()

    sampled = a_log(tmp_path / "sampled", log_share=0.25)
    for i in range(400):
        sampled.add(f"r{i}", ["a tweet"], [PREDICTION], 0.01)
    assert 50 <= sampled.flush() <= 150  # about a quarter of 400 requests
    none = a_log(tmp_path / "none", log_share=0.0)
    none.add("r", ["a tweet"], [PREDICTION], 0.01)
    assert none.flush() == 0


def test_a_full_buffer_drops_and_counts_rows_and_a_failing_store_loses_only_its_rows(tmp_path):
    drops = []
    log = a_log(tmp_path, log_buffer_rows=5, on_drop=drops.append)
    log.add("r1", ["a"] * 4, [PREDICTION] * 4, 0.01)
    log.add("r2", ["b"] * 4, [PREDICTION] * 4, 0.01)  # one fits
    assert (len(log.buffer), log.dropped, drops) == (5, 3, [3])

    (tmp_path / "log").write_text("a file where the log's directory should be")  # every write fails
    assert log.flush() == 0 and log.dropped == 8 and drops == [3, 5]
    (tmp_path / "log").unlink()
    log.add("r3", ["c"], [PREDICTION], 0.01)  # storage back: the next flush writes
    assert log.flush() == 1 and [row["request_id"] for row in logged(tmp_path / "log")] == ["r3"]


def test_a_flush_comes_by_rows_and_a_clean_close_writes_the_rest(tmp_path):
    log = a_log(tmp_path, log_flush_rows=3)
    log.add("r1", ["a", "b", "c"], [PREDICTION] * 3, 0.01)  # wakes the writer, though its hour is not up
    deadline = time.monotonic() + 30
    while log.written < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.written == 3
    log.add("r2", ["d"], [PREDICTION], 0.01)
    log.close()
    assert sorted(row["text"] for row in logged(tmp_path / "log")) == ["a", "b", "c", "d"]
    assert not log.thread.is_alive()


def test_settings_are_checked_and_the_weights_hash_follows_the_weights(tmp_path):
    with pytest.raises(ValidationError):
        LogSettings(log_share=1.5)
    with pytest.raises(ValidationError):
        LogSettings(log_flush_rows=0)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.safetensors").write_bytes(b"other weights")
    assert weights_hash(tmp_path / "a") == hashlib.sha256(b"weights").hexdigest()[:16] != weights_hash(tmp_path / "b")


@pytest.mark.slow
def test_a_served_log_outlives_its_bucket_and_a_clean_shutdown_writes_the_rest(ray_session, s3, tiny_model_dir):
    """Storage gone (the bucket deleted mid-run): every request still answers, the rows are dropped and counted;
    back, rows land again; `serve.delete` (a clean stop) writes what the replica held."""
    import boto3
    import requests
    from ray import serve

    from sam.serve import ServeArgs, build_app
    from sam.storage import filesystem, listing
    from tests.helpers import free_port

    bucket = boto3.resource("s3").Bucket("sam-log-outage")
    bucket.create()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(ServeArgs(model_dir=str(tiny_model_dir), log_dir="s3://sam-log-outage/log", log_flush_rows=10,
                                      log_flush_s=3600)), name="logged", route_prefix="/logged")

        def post(count: int, tag: str) -> None:
            for i in range(count):
                answer = requests.post(f"http://127.0.0.1:{port}/logged/predict", json={"text": f"{tag} {i}"}, timeout=60)
                assert answer.status_code == 200, answer.text

        def log_state(until) -> dict:
            deadline = time.monotonic() + 30
            while True:
                state = requests.get(f"http://127.0.0.1:{port}/logged/model", timeout=30).json()["log"]
                if until(state) or time.monotonic() > deadline:
                    return state
                time.sleep(0.2)

        post(10, "before")  # a flush by rows
        assert log_state(lambda s: s["written"] == 10)["written"] == 10
        bucket.objects.all().delete()
        bucket.delete()
        post(30, "outage")  # three flushes, each failing
        state = log_state(lambda s: s["dropped"] == 30)
        assert (state["written"], state["dropped"]) == (10, 30)
        bucket.create()
        post(5, "after")  # fewer than a flush: only a clean stop writes them
        serve.delete("logged")
        fs, _ = filesystem("s3://sam-log-outage/log")
        files = [info.path for info in listing("s3://sam-log-outage/log") if info.path.endswith(".parquet")]
        rows = sum(pyarrow.parquet.read_metadata(path, filesystem=fs).num_rows for path in files)
        assert rows == 5  # the bucket came back empty: the 5 held at the stop, written by it
    finally:
        serve.shutdown()
