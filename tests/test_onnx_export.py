"""ONNX beside every model: exported and checked at training's end, int8 left out when it keeps too little of
fp32, an older directory exported once into the node's cache, `sam export-onnx` for any classifier directory."""

import json
import logging
import shutil

import numpy as np
import pytest

from sam.cli import main
from sam.onnx_export import export_onnx, synthetic_rows
from sam.predict import Predictor
from tests.helpers import NEGATIVE, POSITIVE, plain_hf_directory

TEXTS = NEGATIVE[:4] + POSITIVE[:4]


def test_a_trained_model_carries_both_onnx_files_checked_on_its_validation_split(tiny_model_dir):
    assert (tiny_model_dir / "onnx" / "model.onnx").is_file() and (tiny_model_dir / "onnx" / "model_int8.onnx").is_file()
    metrics = json.loads((tiny_model_dir / "metrics.json").read_text())
    figures = metrics["onnx"]
    assert figures["check_rows"] == metrics["n_val"] and figures["int8"] is True
    assert figures["fp32_max_abs_diff"] <= 1e-4 and figures["int8_agreement"] >= 0.99
    assert figures["accuracy"]["onnx"] == figures["accuracy"]["torch"] == metrics["val_accuracy"]


def test_int8_that_keeps_too_little_of_fp32_is_left_out_and_fp32_kept(tiny_model_dir, tmp_path, caplog):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    with caplog.at_level(logging.WARNING, logger="sam"):
        figures = export_onnx(model, synthetic_rows(200, 32), min_int8_agreement=1.01)  # more than every row: never met
    assert figures["int8"] is False and "agree with fp32's on" in figures["int8_refused"]
    assert [r.getMessage() for r in caplog.records] == [f"{model}: no int8 ONNX model: {figures['int8_refused']}"]
    assert (model / "onnx" / "model.onnx").is_file() and not (model / "onnx" / "model_int8.onnx").exists()
    assert json.loads((model / "metrics.json").read_text())["onnx"] == figures
    assert Predictor(model, runtime="onnx-int8").runtime == "onnx"  # asked for int8, answered by fp32, and says so


def test_a_directory_without_onnx_files_is_exported_once_into_the_cache(tiny_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SAM_CACHE_DIR", str(tmp_path / "cache"))
    older = shutil.copytree(tiny_model_dir, tmp_path / "older", ignore=shutil.ignore_patterns("onnx"))
    with caplog.at_level(logging.INFO, logger="sam"):
        first, second = Predictor(older), Predictor(older, runtime="onnx-int8")
    # Once for both; int8 may be left out, judged on random rows of a barely trained model (then fp32 answers).
    exports = [r.getMessage() for r in caplog.records if "has no ONNX files" in r.getMessage()]
    assert exports == [f"{older} has no ONNX files: exporting them once into this node's model cache"]
    assert not (older / "onnx").exists() and len(list((tmp_path / "cache").glob("older-onnx-*/onnx/model.onnx"))) == 1
    exact = Predictor(older, runtime="torch").scores(TEXTS)
    np.testing.assert_allclose(first.scores(TEXTS), exact, atol=1e-5)
    np.testing.assert_allclose(second.scores(TEXTS), exact, atol=0.05)


def test_export_onnx_adds_checked_files_to_a_plain_hugging_face_directory(ray_session, tiny_model_dir, tweets_dir, tmp_path, capsys):
    plain = plain_hf_directory(tiny_model_dir, tmp_path / "plain", order=[2, 0, 1])
    assert main(["export-onnx", str(plain), "--data", str(tweets_dir)]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["check_rows"] == 90 and figures["fp32_max_abs_diff"] <= 1e-4  # every row of train.jsonl
    assert json.loads((plain / "metrics.json").read_text()) == {"onnx": figures}
    for theirs, ours in zip(Predictor(plain).predict(TEXTS), Predictor(tiny_model_dir).predict(TEXTS)):  # one model, relabelled
        assert theirs["sentiment"] == ours["sentiment"] and theirs["scores"] == pytest.approx(ours["scores"], abs=1e-4)
