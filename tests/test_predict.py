"""The model directory as a predictor: input order kept, and the int8 option close to fp32."""

import torch

from sam.predict import Predictor
from conftest import NEGATIVE, NEUTRAL, POSITIVE

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
