import numpy as np
import pytest
import torch

from sam.config import ModelConfig, TrainConfig
from sam.batching import collate
from sam.encoding import encode
from sam.tokenizer import train_wordpiece
from sam.learner import (
    Predictions, class_weights, make_averaged, make_loss, make_optimizer, make_scheduler, train_step,
)
from sam.models import build_model
from tests.conftest import tweet_rows


def test_schedule_peaks_at_the_configured_lr_then_decays_to_zero():
    # The seed's Noam schedule never rose above 7.6e-8: the peak must be the configured rate.
    for schedule in ("linear", "cosine", "inverse_sqrt", "constant"):
        config = TrainConfig(lr=3e-4, warmup_steps=50, schedule=schedule)
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
        scheduler = make_scheduler(optimizer, config, total_steps=200)
        rates = []
        for _ in range(200):
            optimizer.step()
            scheduler.step()
            rates.append(scheduler.get_last_lr()[0])
        assert abs(max(rates) - 3e-4) < 1e-12, schedule
        assert rates.index(max(rates)) == 49, schedule
        if schedule == "linear":
            assert rates[-1] == 0.0


def test_no_weight_decay_on_norms_and_biases():
    model = build_model(ModelConfig(num_layers=1, num_heads=2, d_model=16, d_ff=32), train_wordpiece(["a b c"] * 5, 50))
    decayed, undecayed = make_optimizer(model, TrainConfig(weight_decay=0.01)).param_groups
    assert decayed["weight_decay"] == 0.01 and all(p.ndim == 2 for p in decayed["params"])
    assert undecayed["weight_decay"] == 0.0 and all(p.ndim == 1 for p in undecayed["params"])


def test_weight_average_is_a_bias_corrected_exponential_average():
    weight = torch.nn.Linear(1, 1, bias=False)
    assert make_averaged(weight, 0.0) is None
    averaged, moment = make_averaged(weight, 0.9), 0.0
    with torch.no_grad():
        for step, value in enumerate((1.0, 2.0, 3.0, 5.0), start=1):
            weight.weight.fill_(value)
            averaged.update_parameters(weight)
            moment = 0.9 * moment + 0.1 * value
            assert averaged.module.weight.item() == pytest.approx(moment / (1 - 0.9**step))  # no pull toward 0 or step 1


def test_class_weights_are_inverse_frequency():
    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]))
    assert np.allclose(weights, [6 / 9, 2.0, 1.0])


def test_train_steps_reduce_the_loss():
    torch.manual_seed(0)
    rows = tweet_rows()
    tokenizer = train_wordpiece([r["text"] for r in rows], 300)
    column = np.empty(len(rows), dtype=object)
    column[:] = encode(tokenizer, [r["text"] for r in rows], 32)
    batch = collate({"input_ids": column, "labels": np.array([r["label"] for r in rows])}, tokenizer.pad_token_id)
    model = build_model(ModelConfig(num_layers=1, num_heads=2, d_model=32, d_ff=64, dropout=0.0), tokenizer)
    config = TrainConfig(lr=3e-3, warmup_steps=1)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, total_steps=30)
    loss_fn = make_loss(config, class_weights(batch["labels"].numpy()), torch.device("cpu"))
    losses = [train_step(model, batch, loss_fn, optimizer, scheduler, grad_clip=1.0) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.7


def test_predictions_merge_and_metrics():
    a, b = Predictions(), Predictions()
    a.add(torch.tensor([[5.0, 0, 0], [0, 5.0, 0]]), torch.tensor([0, 1]))
    b.add(torch.tensor([[0, 0, 5.0]]), torch.tensor([0]))
    metrics = Predictions.merged([a, b]).metrics()
    assert metrics["n"] == 3 and abs(metrics["accuracy"] - 2 / 3) < 1e-9
