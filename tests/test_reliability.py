"""Faults survived and hostile input refused: the training and data side. (Serving's side is in test_serve_reliability.py.)"""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sam.predict import Predictor
from sam.runtimes import ModelDirError
import sam.train
from sam.train import steps_per_epoch, train
from tests.helpers import ROOT, tiny_config, tweet_rows
from tests.faults import exit_at_step

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


def test_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(ray_session, tweets_dir, tmp_path, monkeypatch, tracking):
    config = tiny_config(tweets_dir, num_workers=2, epochs=3, patience=5)
    per_epoch = steps_per_epoch(config, n_train=72)  # 90 fixture rows less the 20 % validation
    monkeypatch.setattr(sam.train, "train_func", exit_at_step(per_epoch + 2))  # the last worker exits inside epoch 2
    metrics = train(config, tmp_path / "model", storage=str(tmp_path / "runs"), max_failures=1, tracked=tracking)

    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["restored_from_epoch"] == 0
    assert history[1]["restored_from_epoch"] == 1 and history[2]["restored_from_epoch"] == 1  # restored, not restarted
    Predictor(tmp_path / "model").predict(["back to work"])
    # The restarted worker continued the same MLflow run: one run, each epoch once.
    runs = MlflowClient(tracking.uri).search_runs([tracking.experiment_id()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(tracking.uri).get_metric_history(runs[0].info.run_id, "restored_from_epoch")]
    assert steps == [1, 2, 3]


def test_malformed_rows_are_skipped_and_counted_and_the_rest_trains(ray_session, tmp_path):
    good = [json.dumps(row) for row in tweet_rows()] * 2
    bad = [
        json.dumps({"text": "   ", "label": 1}), json.dumps({"text": None, "label": 0}),
        json.dumps({"text": "who knows", "label": 5}), json.dumps({"text": "x" * 1_000_000, "label": 2}),
        json.dumps({"text": "no label"}),
    ]
    body = "\n".join(good[:40] + bad + good[40:]).encode() + b'\n{"text": "caf\xe9 latin-1", "label": 2}\n{"text": "truncat'
    (tmp_path / "train.jsonl").write_bytes(body)
    metrics = train(tiny_config(tmp_path, epochs=1), tmp_path / "model", storage=str(tmp_path / "runs"))
    assert metrics["dropped_rows"] == {
        "blank text": 1, "missing text": 1, "unknown label": 1, "text over 10000 characters": 1,
        "missing label": 1, "not UTF-8": 1, "not JSON": 1,
    }
    assert metrics["n_train"] + metrics["n_val"] == len(good)


def test_a_file_without_valid_rows_is_a_clear_cli_error(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'{"text": "", "label": 1}\n\xff\xfe\n')
    result = subprocess.run([sys.executable, "-m", "sam.cli", "train", "--data", str(tmp_path / "train.jsonl")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "train.jsonl: no valid rows" in result.stderr and "train.jsonl:2 not UTF-8" in result.stderr


def _break(directory: Path, how: str) -> None:
    """Broken for every runtime: the torch weights and the ONNX files alike."""
    if how == "missing weights":
        (directory / "model.safetensors").unlink()
        shutil.rmtree(directory / "onnx")
    elif how == "corrupt weights":
        for weights in ("model.safetensors", "onnx/model.onnx", "onnx/model_int8.onnx"):
            (directory / weights).write_bytes(b"\x00garbage" * 100)
    else:
        config = json.loads((directory / "config.json").read_text())
        config["id2label"] = {"0": "bad", "1": "good"}
        config["label2id"] = {"bad": 0, "good": 1}
        (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("how", ["missing weights", "corrupt weights", "wrong label count"])
def test_broken_model_directory_is_refused_in_one_line(tiny_model_dir, tmp_path, how):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    _break(broken, how)
    for runtime in ("torch", "onnx", "onnx-int8"):
        with pytest.raises(ModelDirError):
            Predictor(broken, runtime=runtime)
    result = subprocess.run([sys.executable, "-m", "sam.cli", "evaluate", "--model", str(broken), "--data", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and str(broken) in result.stderr


def test_weights_are_never_unpickled():
    """safetensors only; every torch.load call, however it is written, must refuse pickled code."""
    loads = 0
    for path in [*ROOT.glob("sam/*.py"), *ROOT.glob("bench/*.py"), ROOT / "serve_app.py"]:
        tree = ast.parse(path.read_text())
        assert not any(isinstance(node, (ast.Import, ast.ImportFrom)) and "pickle" in ast.dump(node) for node in ast.walk(tree)), path
        for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "load" and ast.unparse(call.func.value) == "torch":
                loads += 1
                keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
                assert keywords.get("weights_only") == "True", (path, call.lineno)
    assert loads >= 1  # the checkpoint's training state: the check must see at least that one
