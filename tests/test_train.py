"""Ray Train end to end: DDP over gloo on the fixture, and a short run on the real tweets when they are here."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from sam.batching import collate, training_batches
from sam.cli import main
from sam.config import Config
from sam.learner import EpochStats, Predictions
from sam.predict import Predictor
from sam.train import eval_step, scaling_config, train, train_step
from tests.helpers import REAL_DATA, best_rank_geometry, own_ray_env, require, tiny_config, tiny_learner, tweet_rows



def plain_epoch(learner, columns, pad_id, window: int, batch_size: int, seed: int, step=train_step) -> EpochStats:
    """An epoch as the plain-loop benchmark runs one: `train_step` over `training_batches`."""
    stats = EpochStats()
    windows = ({k: v[start : start + window] for k, v in columns.items()} for start in range(0, len(columns["labels"]), window))
    for batch in stats.timed(training_batches(windows, batch_size, pad_id, seed=seed)):
        stats.add(step(learner, batch), len(batch["labels"]))
    return stats


def test_train_steps_reduce_the_loss_and_eval_steps_score_every_row():
    rows = tweet_rows()
    learner, columns, pad_id = tiny_learner(rows, lr=1e-2)
    losses = []
    for epoch in range(10):
        stats = plain_epoch(learner, columns, pad_id, window=32, batch_size=16, seed=epoch)
        assert stats.samples == len(rows) and stats.steps == 3  # a window of 32 rows in 2 batches, then 13 rows in 1
        losses.append(stats.loss)
    assert losses[-1] < losses[0] * 0.8
    batch, predictions = collate(columns, pad_id), Predictions()
    predictions.add(eval_step(learner, batch), batch["labels"])
    assert predictions.metrics()["n"] == len(rows) and predictions.metrics()["accuracy"] > 0.6


def test_a_step_keeps_its_loss_on_the_device_until_it_is_read():
    """On a GPU each read of a tensor's value waits for the device: steps hand back their loss as a tensor and the
    epoch sums it there, so only a log line or the summary reads it."""
    learner, columns, pad_id = tiny_learner(tweet_rows())
    losses = []
    stats = plain_epoch(learner, columns, pad_id, window=16, batch_size=8, seed=0,
                        step=lambda learner, batch: losses.append(train_step(learner, batch)) or losses[-1])
    assert stats.steps == len(losses) == 6
    assert all(isinstance(loss, torch.Tensor) and loss.ndim == 0 and not loss.requires_grad for loss in losses)
    assert isinstance(stats.loss_sum, torch.Tensor)
    assert stats.loss == pytest.approx(float(stats.loss_sum) / stats.samples)

@pytest.mark.slow
def test_two_cpu_workers_train_and_export_a_standard_directory(ray_session, tweets_dir, tmp_path):
    output = tmp_path / "model"
    metrics = train(tiny_config(tweets_dir, num_workers=2, epochs=3), output, storage=str(tmp_path / "runs"))

    history = metrics["history"]
    assert metrics["epochs_run"] == 3 and [h["epoch"] for h in history] == [1, 2, 3]
    best = max(h["val_accuracy"] for h in history)  # the exported epoch: the best by validation accuracy
    assert metrics["val_accuracy"] == history[metrics["best_epoch"] - 1]["val_accuracy"] == best
    assert metrics["peak_lr"] == pytest.approx(3e-3)
    assert json.loads((output / "metrics.json").read_text())["val_accuracy"] == metrics["val_accuracy"]
    assert {p.name for p in output.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                                   "sam_config.json", "metrics.json", "profile.json", "onnx"}
    # (training state stays in the checkpoints)
    model = AutoModelForSequenceClassification.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert model(**tokenizer(["I love it"], return_tensors="pt", return_token_type_ids=False)).logits.shape == (1, 3)
    prediction = Predictor(output).predict(["I love this song, amazing"])[0]
    assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_a_student_starts_from_a_trained_models_embeddings_and_layers(ray_session, tweets_dir, tiny_model_dir, tmp_path):
    """Through Ray Train: with a learning rate too small to move them, the exported student's token embeddings
    keep the teacher's geometry, projected onto its 8 widest directions, and its layer and head are the teacher's."""
    config = tiny_config(tweets_dir, tokenizer=str(tiny_model_dir), init_embeddings=str(tiny_model_dir), init_layers=True,
                         arch="albert", embedding_size=8, epochs=1, lr=1e-12)
    train(config, tmp_path / "student", storage=str(tmp_path / "runs"))
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    embeddings = teacher.get_input_embeddings().weight.detach(), student.get_input_embeddings().weight.detach()
    assert embeddings[1].shape == (embeddings[0].shape[0], 8)
    torch.testing.assert_close(embeddings[1] @ embeddings[1].T, best_rank_geometry(embeddings[0], 8), atol=1e-3, rtol=1e-3)
    layer = student.albert.encoder.albert_layer_groups[0].albert_layers[0]
    torch.testing.assert_close(layer.ffn.weight, teacher.bert.encoder.layer[0].intermediate.dense.weight)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)


def test_fractional_gpus_become_ray_worker_resources():
    shared = scaling_config(Config().with_flat(use_gpu=True, num_workers=2, gpus_per_worker=0.5, cpus_per_worker=2).scale)
    assert (shared.num_workers, shared.use_gpu, shared.resources_per_worker) == (2, True, {"CPU": 2, "GPU": 0.5})
    cpu = scaling_config(Config().scale)
    assert (cpu.use_gpu, cpu.resources_per_worker) == (False, {"CPU": 1})


@pytest.mark.slow
def test_short_real_training_learns_well_above_chance(ray_session, tmp_path):
    require(REAL_DATA.is_dir(), "the real train split", f"put the tweet_sentiment_extraction train.jsonl in {REAL_DATA}")
    # The seed sat at 37 % (chance): a small model on 6,000 real tweets must clear 55 % in one short run.
    config = tiny_config(REAL_DATA, limit_train=6000, num_layers=2, num_heads=4, d_model=64, d_ff=256,
                         vocab_size=3000, max_length=64, epochs=4, batch_size=32, warmup_steps=30, lr=1e-3,
                         val_fraction=0.15)
    metrics = train(config, tmp_path / "model", storage=str(tmp_path / "runs"))
    assert metrics["val_accuracy"] >= 0.55, metrics


@pytest.mark.slow
def test_two_workers_holding_every_cpu_still_get_their_data(tweets_dir, tmp_path):
    """Data tasks reserve no CPU: with both CPUs of a 2-CPU Ray held by training workers, a task that waited for
    one would hang the run forever."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = (
        "import ray, sys; from sam.train import train; from tests.conftest import tiny_config\n"
        "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        f"metrics = train(tiny_config({str(tweets_dir)!r}, num_workers=2, epochs=1), {str(tmp_path / 'model')!r}, "
        f"storage={str(tmp_path / 'runs')!r})\n"
        "print('epochs', metrics['epochs_run'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=own_ray_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epochs 1" in result.stdout


@pytest.mark.slow
def test_init_fine_tunes_the_pretrained_encoder_with_its_recipe_and_records_its_shape(ray_session, tiny_model_dir, tweets_dir,
                                                                                     tmp_path, capsys):
    """The fixture's trained model stands in for a pretrained encoder such as MiniLM."""
    output = tmp_path / "tuned"
    assert main(["train", "--init", str(tiny_model_dir), "--data", str(tweets_dir), "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.2",
                 "--max-length", "32", "--output", str(output), "--storage", str(tmp_path / "runs")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved, pretrained = Config.load(output), AutoConfig.from_pretrained(tiny_model_dir)
    shape = (saved.model.num_layers, saved.model.num_heads, saved.model.d_model, saved.model.d_ff, saved.model.vocab_size)
    assert shape == (pretrained.num_hidden_layers, pretrained.num_attention_heads, pretrained.hidden_size,
                     pretrained.intermediate_size, pretrained.vocab_size) != (4, 4, 256, 1024, 4000)  # not the defaults
    assert saved.train.lr == metrics["peak_lr"] == pytest.approx(5e-5)  # the fine-tuning recipe
    assert AutoTokenizer.from_pretrained(output).get_vocab() == AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()
    tuned, start = (AutoModelForSequenceClassification.from_pretrained(d).bert.embeddings.word_embeddings.weight
                    for d in (output, tiny_model_dir))
    assert 0 < (tuned - start).abs().max() < 1e-2  # moved a little from the pretrained weights, not trained anew

