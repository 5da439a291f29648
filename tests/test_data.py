import json

import pandas as pd
import pytest

from sam.data import DataError, load_frame, split_frame, to_token_dataset, validate_batch
from sam.tokenizer import train_wordpiece
from tests.conftest import tweet_rows, write_jsonl


def test_validate_batch_keeps_good_rows_and_names_the_problem_of_bad_ones():
    batch = pd.DataFrame({
        "text": ["fine", "  ", None, "x", "y", "z", "w" * 10_001, "ok"],
        "label": [2, 1, 1, 7, None, "neutral", 0, 1.0],
        "label_text": [None, None, None, None, "Negative", None, None, None],
    })
    checked = validate_batch(batch)
    assert checked["problem"].tolist() == [
        "", "blank text", "missing text", "unknown label", "", "", "text over 10000 characters", "",
    ]
    assert checked.loc[checked["problem"] == "", "label"].tolist() == [2, 0, 1, 1]


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
    assert report.kept == 10 and loaded["text"].tolist() == frame["text"].tolist()[:10]


def test_no_valid_rows_is_an_error_naming_the_file(ray_session, tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"text": " ", "label": 1}, {"text": "x", "label": 9}])
    with pytest.raises(DataError, match="empty.jsonl: no valid rows"):
        load_frame(str(path))
    with pytest.raises(DataError, match="no such file"):
        load_frame(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no test.jsonl"):
        load_frame(str(tmp_path), "test")


def test_split_is_seeded_and_stratified():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(300)], "label": [0] * 60 + [1] * 150 + [2] * 90})
    train, val = split_frame(frame, 0.1, seed=1)
    again, _ = split_frame(frame, 0.1, seed=1)
    assert train.equals(again) and len(val) == 30
    assert val["label"].value_counts().to_dict() == {1: 15, 2: 9, 0: 6}
    assert not set(train["text"]) & set(val["text"])


def test_tokenized_dataset_streams_ids_and_labels(ray_session):
    frame = pd.DataFrame(tweet_rows())
    tokenizer = train_wordpiece(frame["text"], 300)
    rows = to_token_dataset(frame, tokenizer, max_length=32, rows_per_block=10).take_all()
    assert len(rows) == len(frame)
    assert list(rows[0]["input_ids"]) == tokenizer(frame["text"][0])["input_ids"]
