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


def test_a_scoring_pool_spreads_a_multi_block_source_over_every_actor(ray_session, tiny_model_dir, tmp_path):
    import ray.data

    from sam.predict import ScoredSink, score_rows, scoring_job

    texts = [f"{text} #{i}" for i, text in enumerate(TEXTS * 60)]  # 600 rows, 6 blocks
    with scoring_job():
        rows = ray.data.from_items([{"id": str(i), "text": t, "problem": "", "where": ""} for i, t in enumerate(texts)],
                                   override_num_blocks=6)
        sink = ScoredSink("texts", str(tmp_path / "predictions"), str(tmp_path / "rejects"))
        score_rows(rows, tiny_model_dir, actors=2).write_datasink(sink, ray_remote_args={"num_cpus": 0})
    assert len(sink.report.per_actor) == 2 and all(n > 0 for n in sink.report.per_actor.values())
    assert sink.report.rows.kept == sum(sink.report.per_actor.values()) == len(texts)
