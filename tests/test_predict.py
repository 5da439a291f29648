"""The model directory as a predictor: input order kept, the same answers on torch and ONNX Runtime, int8 close to
fp32, and the ONNX runtimes without torch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sam import SamError
from sam.cli import main
from sam.predict import Predictor
from sam.runtimes import ModelDirError
from tests.helpers import NEGATIVE, NEUTRAL, POSITIVE, ROOT, plain_hf_directory, without_modules


TEXTS = NEGATIVE[:3] + NEUTRAL[:3] + POSITIVE[:3] + ["ok"]


@pytest.mark.parametrize("runtime", ["torch", "onnx", "onnx-int8"])
def test_scores_keep_input_order_whatever_the_batching(tiny_model_dir, runtime):
    predictor = Predictor(tiny_model_dir, runtime=runtime)
    alone = np.concatenate([predictor.scores([text]) for text in TEXTS])
    # Batches are sorted by length inside; rows must still come back in the caller's order, unchanged.
    np.testing.assert_allclose(predictor.scores(TEXTS, max_tokens=32), alone, atol=1e-5 if runtime != "onnx-int8" else 0.02)


def test_onnx_answers_as_torch_does_and_int8_stays_close(tiny_model_dir):
    torch_scores = Predictor(tiny_model_dir, runtime="torch").scores(TEXTS)
    fp32, int8 = Predictor(tiny_model_dir), Predictor(tiny_model_dir, quantize=True)
    assert (fp32.runtime, int8.runtime, int8.quantized) == ("onnx", "onnx-int8", True)  # ONNX fp32 is the CPU default
    np.testing.assert_allclose(fp32.scores(TEXTS), torch_scores, atol=1e-5)
    np.testing.assert_allclose(int8.scores(TEXTS), torch_scores, atol=0.05)


def test_a_corrupt_onnx_file_is_refused_in_one_line(tiny_model_dir, tmp_path, capsys):
    broken = Path(shutil.copytree(tiny_model_dir, tmp_path / "broken"))
    (broken / "onnx" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelDirError, match="cannot load the ONNX model"):
        Predictor(broken)
    assert main(["predict", "--model", str(broken), "I love this"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sam predict: error: ") and "model.onnx" in error and error.count("\n") == 1
    assert Predictor(broken, runtime="torch").predict(["I love this"])[0]["sentiment"] in ("Negative", "Neutral", "Positive")


# Imports that fail as they would where torch is not installed: torch, and transformers' model classes.
TORCH_FREE = without_modules("torch", "transformers.models") + """
from sam.predict import Predictor
predictor = Predictor(sys.argv[1], runtime=sys.argv[2])
print(predictor.runtime, predictor.predict(["I love this"])[0]["sentiment"])
"""


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_the_onnx_runtimes_predict_without_torch(tiny_model_dir, runtime):
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, str(tiny_model_dir), runtime], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == runtime
    blocked = subprocess.run([sys.executable, "-c", TORCH_FREE, str(tiny_model_dir), "torch"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert "blocked: torch" in blocked.stderr  # the block works: the torch runtime cannot load


def test_a_scoring_pool_spreads_a_multi_block_source_over_every_actor(ray_session, tiny_model_dir, tmp_path):
    import ray.data

    from sam.scoring import ScoredSink, score_rows

    texts = [f"{text} #{i}" for i, text in enumerate(TEXTS * 60)]  # 600 rows, 6 blocks
    rows = ray.data.from_items([{"id": str(i), "text": t, "problem": "", "where": ""} for i, t in enumerate(texts)],
                               override_num_blocks=6)
    sink = ScoredSink("texts", str(tmp_path / "predictions"), str(tmp_path / "rejects"))
    score_rows(rows, tiny_model_dir, actors=2).write_datasink(sink, ray_remote_args={"num_cpus": 0})
    assert len(sink.report.per_actor) == 2 and all(n > 0 for n in sink.report.per_actor.values())
    assert sink.report.rows.kept == sum(sink.report.per_actor.values()) == len(texts)


def test_a_scoring_pool_grows_to_what_the_cluster_holds_unless_sized(ray_session):
    from sam.scoring import scoring_pool

    assert (scoring_pool(None).min_size, scoring_pool(None).max_size) == (1, 4)  # the session's 4 CPUs
    assert scoring_pool(None, gpus_per_actor=0.5).max_size == 1  # no GPU yet: one, for which an autoscaler adds a node
    assert scoring_pool(3).min_size == scoring_pool(3).max_size == 3
    with pytest.raises(SamError, match="--actors must be at least 1"):
        scoring_pool(0)


@pytest.mark.parametrize("safetensors", [True, False])
def test_any_hugging_face_classifier_with_the_three_labels_is_served_alike(tiny_model_dir, tmp_path, safetensors):
    plain = Predictor(plain_hf_directory(tiny_model_dir, tmp_path / "plain", order=[2, 0, 1], safetensors=safetensors))
    ours = Predictor(tiny_model_dir)
    assert plain.config is None and plain.max_length == ours.max_length == 32  # from its tokenizer and config.json
    assert plain.shape == ours.shape | {"max_length": 32} and plain.shape["num_layers"] == 1
    for mine, theirs in zip(plain.predict(TEXTS), ours.predict(TEXTS)):
        assert mine["sentiment"] == theirs["sentiment"]
        assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-4)


def test_labels_that_are_not_the_three_sentiments_are_refused(tiny_model_dir, tmp_path):
    directory = plain_hf_directory(tiny_model_dir, tmp_path / "plain", order=[0, 1, 2])
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {"0": "sad", "1": "meh", "2": "glad"}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"labels \['sad', 'meh', 'glad'\] are not Negative, Neutral, Positive"):
        Predictor(directory)


def test_a_plain_directory_is_evaluated_like_its_sam_original(ray_session, tiny_model_dir, tweets_dir, tmp_path, capsys):
    plain = plain_hf_directory(tiny_model_dir, tmp_path / "plain", order=[1, 2, 0])
    results = []
    for model in (tiny_model_dir, plain):
        assert main(["evaluate", "--model", str(model), "--data", str(tweets_dir), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"] and results[1]["n"] == 45
