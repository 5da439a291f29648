"""The model directory as a predictor: input order kept, and the int8 option close to fp32."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sam.cli import main
from sam.predict import ModelDirError, Predictor
from tests.helpers import NEGATIVE, NEUTRAL, POSITIVE


TEXTS = NEGATIVE[:3] + NEUTRAL[:3] + POSITIVE[:3] + ["ok"]


def test_scores_keep_input_order_whatever_the_batching(tiny_model_dir):
    predictor = Predictor(tiny_model_dir)
    alone = torch.cat([predictor.scores([text]) for text in TEXTS])
    # Batches are sorted by length inside; rows must still come back in the caller's order, unchanged.
    assert torch.allclose(predictor.scores(TEXTS, max_tokens=32), alone, atol=1e-5)


def test_quantized_predictor_swaps_linear_layers_and_stays_close(tiny_model_dir):
    exact, quantized = Predictor(tiny_model_dir), Predictor(tiny_model_dir, quantize=True)
    assert quantized.quantized and not exact.quantized
    assert not any(type(module) is torch.nn.Linear for module in quantized.model.modules())
    assert torch.allclose(quantized.scores(TEXTS), exact.scores(TEXTS), atol=0.05)


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


def plain_hf_directory(sam_model, directory, order: list[int], safetensors: bool = True):
    """`sam_model` as another tool would save it: no sam_config.json or metrics.json, its labels named in its own
    order (the head's rows permuted to match, so it is the same model)."""
    model = AutoModelForSequenceClassification.from_pretrained(sam_model)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order])
        model.classifier.bias.copy_(model.classifier.bias[order])
    names = ["negative", "neutral", "positive"]
    model.config.id2label = {i: names[label] for i, label in enumerate(order)}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    model.save_pretrained(directory, safe_serialization=safetensors)
    AutoTokenizer.from_pretrained(sam_model).save_pretrained(directory)
    return directory


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
