"""Ray Data: sources of every shape read as one data set, bad rows located and counted, a split that is the
same on every run and balanced by class, a bounded tokenizer sample, streamed tokenization."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from sam.config import Config
from sam.data import (
    DataError, class_weights, load_frame, read_rows, split_edges, survey_rows, text_sample, train_and_validation,
    validate_batch,
)
from sam.prepare import tokenize
from sam.tokenizer import train_wordpiece
from tests.helpers import tiny_config, tweet_rows, write_jsonl


def numbered_rows(n):
    """`n` distinct tweets (the fixture's, numbered), labels in the fixture's proportions."""
    rows = tweet_rows()
    return [{"text": f"{rows[i % len(rows)]['text']} #{i}", "label": rows[i % len(rows)]["label"], "id": f"t{i}"} for i in range(n)]


def test_validate_batch_keeps_good_rows_and_names_the_problem_of_bad_ones():
    batch = pd.DataFrame({
        "text": ["fine", "  ", None, "x", "y", "z", "w" * 10_001, "ok"],
        "label": [2, 1, 1, 7, None, "neutral", 0, 1.0],
        "label_text": [None, None, None, None, "Negative", None, None, None],
        "id": [1, None, None, None, None, None, None, "a"],
    })
    checked = validate_batch(batch)
    assert checked["problem"].tolist() == [
        "", "blank text", "missing text", "unknown label", "", "", "text over 10000 characters", "",
    ]
    assert checked.loc[checked["problem"] == "", "label"].tolist() == [2, 0, 1, 1]
    assert checked["id"].tolist()[::7] == ["1", "a"]
    unlabelled = validate_batch(batch, require_label=False)  # scoring: a bad label is no reason to drop a text
    assert unlabelled["problem"].tolist()[3:6] == ["", "", ""]


def test_jsonl_bad_lines_are_dropped_counted_and_located(ray_session, tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = [{"text": "love it", "label": 2}, {"text": "meh", "label_text": "neutral"}]
    lines = [json.dumps(good[0]), json.dumps({"text": "", "label": 0}), "[1, 2]", json.dumps(good[1]), '{"text": "cut']
    path.write_bytes("\n".join(lines).encode() + b'\n{"text": "bad \xff", "label": 0}\n')
    frame, report = load_frame(str(path))
    assert frame.to_dict("records") == [{"text": "love it", "label": 2}, {"text": "meh", "label": 1}]
    assert dict(report.dropped) == {"blank text": 1, "not a JSON object": 1, "not JSON": 1, "not UTF-8": 1}
    assert "mixed.jsonl:2 blank text" in str(report)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_directory_with_csv_or_parquet(ray_session, tmp_path, suffix):
    frame = pd.DataFrame(tweet_rows())
    getattr(frame, f"to_{suffix}")(tmp_path / f"train.{suffix}", index=False)
    loaded, report = load_frame(str(tmp_path), "train", limit=10)
    assert report.kept == len(frame) and len(loaded) == 10 and set(loaded["text"]) <= set(frame["text"])


def test_an_odd_csv_value_past_the_first_block_drops_one_row_not_the_file(ray_session, tmp_path):
    rows = numbered_rows(40_000) + [{"text": "odd label", "label": "somewhat", "id": "odd"}]  # about 2 MB of integers first
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    _, report = load_frame(str(tmp_path), limit=1)
    assert report.kept == 40_000 and dict(report.dropped) == {"unknown label": 1}


def test_shards_of_mixed_formats_and_sizes_read_as_one_data_set(ray_session, tmp_path):
    rows = numbered_rows(200)
    shards = tmp_path / "shards"
    (shards / "more").mkdir(parents=True)
    write_jsonl(shards / "a.jsonl", rows[:10])
    (shards / "b.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows[10:90]).encode()))
    pd.DataFrame(rows[90:150]).to_parquet(shards / "more" / "c.parquet", index=False)
    pd.DataFrame(rows[150:]).to_csv(shards / "more" / "d.csv", index=False)
    (shards / "notes.txt").write_text("not data")
    everything = read_rows(str(shards)).to_pandas()
    assert sorted(everything["id"]) == sorted(r["id"] for r in rows) and set(everything["problem"]) == {""}
    write_jsonl(shards / "more" / "e.jsonl", rows[:5])  # deeper than the glob's level: not matched
    globbed = read_rows(str(shards / "*.jsonl*")).to_pandas()
    assert sorted(globbed["id"]) == sorted(r["id"] for r in rows[:90])
    (shards / "more" / "e.jsonl").unlink()
    assert set(read_rows(f"file://{shards}/more").to_pandas()["id"]) == {r["id"] for r in rows[90:]}  # a URI


def test_other_splits_folders_are_not_training_data(ray_session, tmp_path):
    rows = numbered_rows(20)
    write_jsonl(tmp_path / "part-0.jsonl", rows[:10])
    (tmp_path / "test").mkdir()
    write_jsonl(tmp_path / "test" / "part-0.jsonl", rows[10:])
    assert sorted(read_rows(str(tmp_path)).to_pandas()["id"]) == sorted(r["id"] for r in rows[:10])
    assert sorted(read_rows(str(tmp_path), "test").to_pandas()["id"]) == sorted(r["id"] for r in rows[10:])


def test_no_valid_rows_is_an_error_naming_the_file(ray_session, tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"text": " ", "label": 1}, {"text": "x", "label": 9}])
    with pytest.raises(DataError, match="empty.jsonl: no valid rows"):
        load_frame(str(path))
    with pytest.raises(DataError, match="no such file"):
        load_frame(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no test data files"):
        load_frame(str(tmp_path), "test")


def test_split_is_the_same_on_every_run_disjoint_and_balanced_by_class(ray_session, tmp_path):
    rows = numbered_rows(600)
    write_jsonl(tmp_path / "train.jsonl", rows)
    config = Config().with_flat(source=str(tmp_path), val_fraction=0.1, seed=3)
    runs = [train_and_validation(config) for _ in range(2)]
    val, again = (sorted(run.val.to_pandas()["text"]) for run in runs)
    train = runs[0].train.to_pandas()
    assert val == again and not set(val) & set(train["text"]) and len(val) + len(train) == 600
    assert 60 <= len(val) <= 63  # a tenth of each class, give or take the rows sharing a class's boundary bin
    overall = np.bincount([r["label"] for r in rows]) / len(rows)
    in_val = runs[0].val_counts / runs[0].val_counts.sum()
    assert np.abs(in_val - overall).max() <= 0.01  # each class's share within one point
    assert runs[0].train_counts.tolist() == np.bincount(train["label"], minlength=3).tolist()
    other_seed = sorted(train_and_validation(config.with_flat(seed=4)).val.to_pandas()["text"])
    assert other_seed != val


def test_held_out_part_is_disjoint_and_leaves_validation_as_it_was(ray_session, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", numbered_rows(600))
    config = Config().with_flat(source=str(tmp_path), val_fraction=0.1, seed=3)
    plain, held = train_and_validation(config), train_and_validation(config.with_flat(holdout_fraction=0.2))
    texts = {name: set(getattr(held, name).to_pandas()["text"]) for name in ("train", "val", "holdout")}
    assert texts["val"] == set(plain.val.to_pandas()["text"])  # adding a held-out part moves no validation row
    assert not texts["holdout"] & texts["train"] and not texts["holdout"] & texts["val"]
    assert texts["train"] | texts["holdout"] == set(plain.train.to_pandas()["text"])
    assert 118 <= len(texts["holdout"]) == held.holdout_counts.sum() <= 123  # a fifth of each class
    assert held.train_counts.sum() == len(texts["train"]) and len(plain.holdout.to_pandas()) == 0


def test_a_fold_leaves_out_exactly_its_training_rows_and_the_counts_follow(ray_session, tmp_path):
    from sam.data import SPLIT_BINS, fold_of, split_bins

    write_jsonl(tmp_path / "train.jsonl", numbered_rows(600))
    config = Config().with_flat(source=str(tmp_path), val_fraction=0.1, holdout_fraction=0.1, seed=3)
    whole = train_and_validation(config).train.to_pandas()
    fold_of_row = dict(zip(whole["text"], fold_of(split_bins(whole["text"], 3), 3)))
    for fold in range(3):
        split = train_and_validation(config.with_flat(folds=3, fold=fold))
        train = split.train.to_pandas()
        assert set(train["text"]) == {text for text, its in fold_of_row.items() if its != fold}
        assert split.train_counts.tolist() == np.bincount(train["label"], minlength=3).tolist()
        assert sorted(split.val.to_pandas()["text"]) == sorted(train_and_validation(config).val.to_pandas()["text"])
    assert 150 <= sum(its == 0 for its in fold_of_row.values()) <= 170  # about a third of the 480 training rows
    empty = next(fold for fold in range(SPLIT_BINS) if fold not in set(split_bins(whole["text"], 3)))
    with pytest.raises(DataError, match=f"fold {empty} of {SPLIT_BINS} holds none of the 48. training rows: give fewer folds"):
        train_and_validation(config.with_flat(folds=SPLIT_BINS, fold=empty))


def test_limit_keeps_the_same_sample_whatever_the_shard_layout(ray_session, tmp_path):
    rows = numbered_rows(600)
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    write_jsonl(tmp_path / "one" / "train.jsonl", rows)
    for i in range(6):
        write_jsonl(tmp_path / "many" / f"part-{i}.jsonl", rows[i::6])
    sides = []
    for layout in ("one", "many"):
        split = train_and_validation(Config().with_flat(source=str(tmp_path / layout), limit_train=200, val_fraction=0.2))
        train, val = split.train.to_pandas(), split.val.to_pandas()
        assert (len(train), len(val)) == (split.train_counts.sum(), split.val_counts.sum())
        sides.append((sorted(train["text"]), sorted(val["text"])))
    assert sides[0] == sides[1] and 190 <= len(sides[0][0]) + len(sides[0][1]) <= 210


def test_split_edges_give_each_class_its_fraction():
    histogram = np.array([[1] * 100, [0, 5, 0, 5] * 25, [0] * 100])
    assert split_edges(histogram, 0.1) == [10, 10, 0]  # 10 of 100; 25 of 250 (every other bin holds 5); none of none


def test_class_weights_are_inverse_frequency():
    assert np.allclose(class_weights(np.array([3, 1, 2])), [6 / 9, 2.0, 1.0])


def test_tokenizer_sample_is_bounded(ray_session, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", numbered_rows(300))
    rows = read_rows(str(tmp_path))
    assert len(list(text_sample(rows, limit=50))) == 50
    report, histogram = survey_rows(rows, str(tmp_path), seed=0)
    assert report.kept == histogram.sum() == 300


def test_tokenized_dataset_streams_ids_and_labels(ray_session):
    import ray

    frame = pd.DataFrame(tweet_rows())
    tokenizer = train_wordpiece(frame["text"], 300)
    rows = tokenize(ray.data.from_pandas(frame), tokenizer, max_length=32).take_all()
    assert len(rows) == len(frame)
    assert list(rows[0]["input_ids"]) == tokenizer(frame["text"][0])["input_ids"]


def test_data_stages_run_as_many_tasks_as_the_cluster_has_cpus(ray_session, tmp_path):
    import ray.data

    from sam.data import data_tasks, light_tasks

    def record_span(batch: dict, log_dir: str) -> dict:  # defined here: Ray ships it by value
        """A data task that takes a second and leaves its start and end where the test reads them."""
        import time
        import uuid
        from pathlib import Path

        start = time.time()
        time.sleep(1.0)
        Path(log_dir, uuid.uuid4().hex).write_text(f"{start} {time.time()}")
        return batch

    assert data_tasks() == 4  # the session's Ray: 4 CPUs
    ray.data.range(8, override_num_blocks=8).map_batches(
        record_span, batch_size=None, fn_kwargs={"log_dir": str(tmp_path)}, **light_tasks()).materialize()
    spans = [tuple(map(float, path.read_text().split())) for path in tmp_path.iterdir()]
    at_once = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert len(spans) == 8 and 2 < at_once <= 4


def test_a_mistyped_relative_file_is_no_such_file_not_a_hub_name(tmp_path, monkeypatch):
    from sam.data import DataError, _is_hub_name, list_files

    monkeypatch.chdir(tmp_path)
    assert _is_hub_name("mteb/tweet_sentiment_extraction") and not _is_hub_name("data/tweets.jsonl")
    with pytest.raises(DataError, match="data/tweets.jsonl: no such file or directory"):
        list_files("data/tweets.jsonl")


def test_the_splits_are_materialized_within_the_budget_and_streamed_over_it(ray_session):
    import ray.data

    from ray.data.dataset import MaterializedDataset

    from sam.data import LoadReport
    from sam.prepare import PreparedData, materialize_if_small, tokenized_mb

    def prepared():
        return PreparedData(ray.data.range(100), ray.data.range(20), None, [1.0] * 3, 100, 20, LoadReport("x"))

    size = tokenized_mb(120, max_length=32)
    for setting, expected in ((size * 1.01, True), (size * 0.99, False), (0, False), (1024, True)):
        data = materialize_if_small(prepared(), 32, setting)
        assert data.materialized is expected
        assert isinstance(data.train, MaterializedDataset) is expected and data.train.count() == 100


def label_sorted_corpus(directory, n=8000):
    rows = sorted(numbered_rows(n), key=lambda row: row["label"])
    write_jsonl(directory / "train.jsonl", rows)
    return rows


def epochs_of(data, config, epochs=2):
    from sam.batching import epoch_batches

    return [list(epoch_batches(data.train, config.train, epoch, data.tokenizer.pad_token_id)) for epoch in range(epochs)]


def test_materialized_and_streamed_epochs_give_the_same_batches(ray_session, tmp_path):
    import ray.data

    from sam.prepare import materialize_if_small, prepare

    label_sorted_corpus(tmp_path, 2000)
    config = tiny_config(tmp_path, shuffle_buffer=500)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # Ray's tasks may finish in any order; the batches follow it
    try:
        streamed = prepare(config.with_flat(materialize_mb=0))
        materialized = materialize_if_small(streamed, config.model.max_length, 1024)
        assert not streamed.materialized and materialized.materialized
        a, b = epochs_of(streamed, config), epochs_of(materialized, config)
    finally:
        context.execution_options.preserve_order = False
    assert [len(epoch) for epoch in a] == [len(epoch) for epoch in b] and a[0][0]["labels"].tolist() != a[1][0]["labels"].tolist()
    for epoch_a, epoch_b in zip(a, b):
        for x, y in zip(epoch_a, epoch_b):
            assert x["labels"].tolist() == y["labels"].tolist() and x["input_ids"].equal(y["input_ids"])


def test_a_file_sorted_by_label_gives_batches_of_every_class(ray_session, tmp_path):
    from sam.prepare import prepare

    rows = label_sorted_corpus(tmp_path)
    config = tiny_config(tmp_path)
    (epoch,) = epochs_of(prepare(config), config, epochs=1)
    overall = np.bincount([row["label"] for row in rows], minlength=3) / len(rows)
    first_fifth = np.concatenate([batch["labels"].numpy() for batch in epoch[: len(epoch) // 5]])
    assert np.abs(np.bincount(first_fifth, minlength=3) / len(first_fifth) - overall).max() < 0.05
    first_window = np.concatenate([batch["labels"].numpy() for batch in epoch[: config.train.bucket_batches]])
    assert (np.bincount(first_window, minlength=3) / len(first_window)).max() < 0.6  # sorted, it would be all one class


def test_a_hub_name_is_read_through_datasets_offline_from_its_cache(ray_session, tmp_path, monkeypatch):
    """What an earlier online `load_dataset("owner/tweets")` leaves in the datasets cache, which it reads offline."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    from sam.data import read_rows, survey_rows

    source = write_jsonl(tmp_path / "test.jsonl", tweet_rows() + [{"text": " ", "label": 1}, {"text": "who knows", "label": 7}])
    cache = tmp_path / "datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    Json(data_files={"test": str(source)}, dataset_name="owner___tweets", hash="0" * 16, cache_dir=str(cache)).download_and_prepare()
    (built,) = (cache / "owner___tweets").glob("default-*")
    built = built.rename(cache / "owner___tweets" / "default")  # the hub's config name
    for arrow in built.rglob("owner___tweets-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("owner___tweets-", "tweets-")))
    report, histogram = survey_rows(read_rows("owner/tweets", "test"), "owner/tweets", seed=0)
    assert report.kept == len(tweet_rows()) and dict(report.dropped) == {"blank text": 1, "unknown label": 1}
    assert histogram.sum(1).tolist() == [15, 15, 15]
    with pytest.raises(DataError, match="owner/absent: cannot load split 'test' from the hub"):
        read_rows("owner/absent", "test")
