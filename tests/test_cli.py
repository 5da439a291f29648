"""The `sam` command as a user runs it: evaluate, predict, tokenizer train, and clear errors."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import sam.cli
from sam import LABELS, SamError
from sam.cli import main
from sam.config import Config
from sam.data import train_and_validation
from sam.predict import Predictor
from tests.helpers import ROOT, tweet_rows, without_modules, write_jsonl


def run_sam(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sam.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_evaluate_prints_a_table_json_and_a_plot(ray_session, tiny_model_dir, tweets_dir, tmp_path, capsys):
    plot = tmp_path / "cm.png"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tweets_dir), "--json", "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = json.loads(lines[-1])
    expected = Predictor(tiny_model_dir).predict([row["text"] for row in tweet_rows()])  # test.jsonl, scored here
    assert results["n"] == 45 and "macro_f1" in results
    assert results["accuracy"] == pytest.approx(np.mean([p["label"] == row["label"] for p, row in zip(expected, tweet_rows())]))
    assert sum(map(sum, results["confusion_matrix"])) == 45
    assert any(line.startswith("Positive") for line in lines)
    assert plot.stat().st_size > 0


def test_evaluate_on_the_models_own_validation_rows(ray_session, tiny_model_dir, tweets_dir, capsys):
    trained = json.loads((tiny_model_dir / "metrics.json").read_text())
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tweets_dir), "--split", "validation", "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["n"] == trained["n_val"]
    # The same rows as training validated on; only a near-tie could flip, as batches differ.
    assert abs(results["accuracy"] - trained["val_accuracy"]) <= 1 / results["n"]
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tweets_dir), "--split", "validation", "--quantize", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == trained["n_val"]


def test_evaluate_on_the_models_held_out_part(ray_session, tiny_model_dir, tweets_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tweets_dir), "--split", "holdout"]) == 2
    assert "trained without a held-out part (--holdout-fraction)" in capsys.readouterr().err
    held = tmp_path / "held"
    shutil.copytree(tiny_model_dir, held)
    config = Config.load(held).with_flat(holdout_fraction=0.2)
    config.save(held)
    assert main(["evaluate", "--model", str(held), "--data", str(tweets_dir), "--split", "holdout", "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["n"] == train_and_validation(config.with_flat(source=str(tweets_dir))).holdout_counts.sum() > 0


def test_predict_prints_one_json_line_per_text(tiny_model_dir, capsys):
    assert main(["predict", "--model", str(tiny_model_dir), "I love it", "   ", "so sad"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["I love it", "   ", "so sad"]
    assert lines[1]["error"] == "blank text"
    for line in (lines[0], lines[2]):
        assert line["sentiment"] == LABELS[line["label"]] and line["confidence"] == max(line["scores"].values())


def test_predicting_a_text_loads_neither_ray_nor_torch(tiny_model_dir, tmp_path):
    """What keeps `sam predict TEXT` and its errors quick: the command and its ONNX runtime import no Ray and no torch."""
    script = without_modules("ray", "torch", "pandas") + "from sam.cli import main\nsys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, "predict", "--model", str(tiny_model_dir), "I love it"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["sentiment"] in LABELS
    missing = subprocess.run([sys.executable, "-c", script, "predict", "--model", str(tmp_path / "none"), "hi"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert missing.returncode == 2 and missing.stderr == f"sam predict: error: {tmp_path / 'none'}: no such model directory\n"


def test_tokenizer_train_writes_a_hf_directory(ray_session, tweets_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    assert main(["tokenizer", "train", "--data", str(tweets_dir), "--vocab-size", "250", "--output", str(tmp_path / "tok")]) == 0
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tok")) <= 250


def test_broken_model_directory_is_one_clear_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = run_sam("evaluate", "--model", str(tmp_path), "--data", str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip() == f"sam evaluate: error: {tmp_path}: missing the weights (model.safetensors or pytorch_model.bin)"


def test_data_without_valid_rows_names_the_file(ray_session, tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "", "label": 0}])
    assert main(["tokenizer", "train", "--data", str(tmp_path), "--output", str(tmp_path / "tok")]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path}: no valid rows" in error and "train.jsonl:1 blank text" in error


def test_predict_data_scores_and_rejects_in_one_pass(ray_session, tiny_model_dir, tmp_path, capsys, caplog):
    import logging

    import pandas as pd

    from sam.predict import Predictor

    rows = [{"id": f"t{i}", "text": f"{row['text']} #{i}"} for i, row in enumerate(tweet_rows() * 6)]  # 270 rows
    bad = [{"id": "blank", "text": "  "}, {"id": "none"}, {"id": "long", "text": "x" * 10_001}]
    lines = [json.dumps(r) for r in rows[:100] + bad + rows[100:]] + ["{not json"]
    (tmp_path / "in").mkdir()
    for part in range(3):
        (tmp_path / "in" / f"tweets-{part}.jsonl").write_text("\n".join(lines[part * 92 : (part + 1) * 92]) + "\n")
    out = tmp_path / "out"
    ray_data_log = logging.getLogger("ray.data")  # Ray's loggers do not propagate to pytest's
    ray_data_log.addHandler(caplog.handler)
    try:
        assert main(["predict", "--model", str(tiny_model_dir), "--data", str(tmp_path / "in"), "--output", str(out),
                     "--actors", "2"]) == 0
    finally:
        ray_data_log.removeHandler(caplog.handler)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 270 and sum(summary["rejected"].values()) == 4
    assert sum(summary["rows_per_actor"].values()) == 270 and summary["steady_rows_per_s"] is not None
    # Ray Data's progress, as shown when the output is not a terminal (repeated every few seconds while it runs):
    # one dataset run, scored and rejected together.
    assert len(set(re.findall(r"Running Dataset: (\S+)", caplog.text))) == 1

    predictions = pd.read_parquet(out / "predictions")
    rejects = pd.concat(pd.read_json(file, lines=True) for file in (out / "rejects").glob("*.json*"))
    assert sorted(predictions["id"]) == sorted(r["id"] for r in rows)  # every valid row once, no rejected one
    assert sorted(rejects["id"].fillna("")) == ["", "blank", "long", "none"] and set(rejects["id"]).isdisjoint(predictions["id"])
    assert set(predictions.columns) == {"id", "text", "sentiment", "label", "confidence", "scores"}
    sample = predictions.sample(5, random_state=0)
    expected = Predictor(tiny_model_dir).predict(sample["text"].tolist())
    assert sample["label"].tolist() == [e["label"] for e in expected]  # the same answers as the model alone
    assert sorted(rejects["problem"]) == ["blank text", "missing text", "not JSON", "text over 10000 characters"]
    assert "tweets-1.jsonl:9 blank text" in {f"{w} {p}" for w, p in zip(rejects["where"], rejects["problem"])}

    for stale in (tmp_path / "in").iterdir():
        stale.unlink()
    (tmp_path / "in" / "tweets.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # fixed, rerun
    assert main(["predict", "--model", str(tiny_model_dir), "--data", str(tmp_path / "in"), "--output", str(out)]) == 0
    assert len(pd.read_parquet(out / "predictions")) == 270 and not (out / "rejects").exists()  # replaced, not added to


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def user_error(args):
        raise SamError("tweets.csv:3: no text column")

    monkeypatch.setattr(sam.cli, "cmd_predict", user_error)
    assert main(["predict", "hello"]) == 2
    assert capsys.readouterr().err == "sam predict: error: tweets.csv:3: no text column\n"

    def bug(args):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(sam.cli, "cmd_predict", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["predict", "hello"])
