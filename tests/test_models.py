import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from sam import LABELS, SamError
from sam.config import Config, ConfigError, ModelConfig
from sam.batching import pad_batch
from sam.encoding import encode
from sam.tokenizer import train_wordpiece
from sam.models import build_model, check_embeddings_source, start_from_embeddings, summary
from tests.helpers import best_rank_geometry, tweet_rows

SMALL = ModelConfig(num_layers=2, num_heads=2, d_model=32, d_ff=64, max_length=32)


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece([row["text"] for row in tweet_rows()], vocab_size=300)


@pytest.mark.parametrize("arch, pooling, embedding_size", [("bert", "cls", 0), ("modernbert", "cls", 0), ("modernbert", "mean", 0), ("albert", "cls", 8)])
def test_logits_shape_and_saved_directory_loads_in_plain_transformers(tokenizer, tmp_path, arch, pooling, embedding_size):
    shape = {**SMALL.__dict__, "arch": arch, "pooling": pooling, "embedding_size": embedding_size}
    model = build_model(ModelConfig(**shape), tokenizer).eval()
    batch = pad_batch(encode(tokenizer, ["I love it", "so sad today, hate it"], 32), tokenizer.pad_token_id)
    logits = model(**batch).logits
    assert logits.shape == (2, len(LABELS))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    torch.testing.assert_close(reloaded(**batch).logits, logits)


def test_position_table_covers_max_length(tokenizer):
    model = build_model(SMALL, tokenizer).eval()
    long = pad_batch(encode(tokenizer, ["love " * 100], SMALL.max_length), tokenizer.pad_token_id)
    assert long["input_ids"].shape[1] == SMALL.max_length
    assert model(**long).logits.shape == (1, 3)


def test_mean_pooling_ignores_padding(tokenizer):
    model = build_model(ModelConfig(**{**SMALL.__dict__, "arch": "modernbert", "pooling": "mean"}), tokenizer).eval()
    alone = pad_batch(encode(tokenizer, ["so sad today"], 32), tokenizer.pad_token_id)
    padded = pad_batch(encode(tokenizer, ["so sad today", "I love this phone more than anything else"], 32), tokenizer.pad_token_id)
    torch.testing.assert_close(model(**padded).logits[:1], model(**alone).logits)


def test_factorized_embedding_holds_a_large_vocabulary_in_fewer_parameters(tokenizer):
    def parameters(**shape):
        return sum(p.numel() for p in build_model(ModelConfig(**{**SMALL.__dict__, **shape}), tokenizer).parameters())

    model = build_model(ModelConfig(**{**SMALL.__dict__, "arch": "albert", "embedding_size": 8}), tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 8)
    full, factorized = parameters(), sum(p.numel() for p in model.parameters())
    assert full - factorized > (len(tokenizer) - 32) * (32 - 8)  # 8 weights a token instead of 32, less one 8 x 32 projection
    with_more_layers = parameters(arch="albert", embedding_size=8, num_layers=3)
    assert with_more_layers - factorized == parameters(num_layers=3) - full  # each added layer has weights of its own


@pytest.mark.parametrize("shape, problem", [
    ({"embedding_size": 16, "arch": "modernbert"}, "needs arch albert"),
    ({"d_model": 30, "num_heads": 4}, "must divide"),
    ({"pooling": "max"}, "Input should be 'cls' or 'mean'"),
    ({"pooling": "mean", "arch": "bert"}, "needs arch modernbert"),
])
def test_invalid_shapes_are_refused_when_the_config_is_built(shape, problem):
    with pytest.raises(ValueError, match=problem):
        ModelConfig(**shape)


def test_summary_counts_every_parameter(tokenizer):
    model = build_model(SMALL, tokenizer)
    assert f"{sum(p.numel() for p in model.parameters()):,}" in summary(model).splitlines()[-1]


def test_a_narrower_model_starts_from_the_principal_components_of_pretrained_embeddings(tokenizer, tmp_path):
    pretrained = build_model(SMALL, tokenizer)
    pretrained.save_pretrained(tmp_path / "pretrained")
    student = build_model(ModelConfig(**{**SMALL.__dict__, "arch": "albert", "embedding_size": 8}), tokenizer)
    start_from_embeddings(student, str(tmp_path / "pretrained"))

    started = student.get_input_embeddings().weight.detach()
    expected = best_rank_geometry(pretrained.get_input_embeddings().weight.detach(), 8)
    torch.testing.assert_close(started @ started.T, expected, atol=1e-4, rtol=1e-4)


def test_pretrained_embeddings_of_another_vocabulary_or_width_are_refused(tokenizer, tmp_path):
    build_model(SMALL, tokenizer).save_pretrained(tmp_path / "pretrained")
    other = train_wordpiece([row["text"] for row in tweet_rows()], vocab_size=200)
    for student in (build_model(SMALL, other), build_model(ModelConfig(**{**SMALL.__dict__, "d_model": 64}), tokenizer)):
        with pytest.raises(SamError, match=r"init_embeddings .*pretrained: its \d+ token embeddings of 32 cannot start"):
            start_from_embeddings(student, str(tmp_path / "pretrained"))
    factorized = tmp_path / "factorized"  # its token embeddings are 8 wide, its hidden size 32
    build_model(ModelConfig(**{**SMALL.__dict__, "arch": "albert", "embedding_size": 8}), tokenizer).save_pretrained(factorized)
    from_factorized = Config().with_flat(tokenizer="t", init_embeddings=str(factorized), arch="albert", embedding_size=8)
    check_embeddings_source(from_factorized, len(tokenizer))
    with pytest.raises(SamError, match=r"its \d+ token embeddings of 8 cannot start \d+ of 16"):
        check_embeddings_source(from_factorized.with_flat(embedding_size=16), len(tokenizer))
    with pytest.raises(ConfigError, match="init_embeddings .* needs the tokenizer of the same vocabulary"):
        Config().with_flat(init_embeddings=str(tmp_path / "pretrained"))


def test_a_student_started_from_its_teachers_layers_computes_what_the_teacher_does_without_the_others(tokenizer, tmp_path):
    """At the teacher's width the only difference left is where the embeddings are normalized (before the map up
    to d_model, not after), so every hidden state points where the teacher's, with layers 1 and 3 left out, does."""
    teacher = build_model(ModelConfig(**{**SMALL.__dict__, "num_layers": 5}), tokenizer).eval()
    with torch.no_grad():  # freshly initialized layers barely change their input: these do (a student's own layers score 0.3-0.4)
        for weight in (p for p in teacher.bert.encoder.parameters() if p.dim() == 2):
            weight.mul_(10)
    teacher.save_pretrained(tmp_path / "teacher")
    student = build_model(ModelConfig(**{**SMALL.__dict__, "num_layers": 3, "arch": "albert", "embedding_size": 32}), tokenizer)
    start_from_embeddings(student, str(tmp_path / "teacher"), layers=True)
    assert student.training  # still trains with dropout after the fit

    shortened = copy.deepcopy(teacher)
    shortened.bert.encoder.layer = torch.nn.ModuleList(shortened.bert.encoder.layer[i] for i in (0, 2, 4))
    batch = pad_batch(encode(tokenizer, [row["text"] for row in tweet_rows()][:20], 32), tokenizer.pad_token_id)
    with torch.no_grad():
        started, expected = student.eval()(**batch, output_hidden_states=True), shortened(**batch, output_hidden_states=True)
    for mine, theirs in zip(started.hidden_states, expected.hidden_states, strict=True):
        assert torch.nn.functional.cosine_similarity(mine.flatten(), theirs.flatten(), dim=0) > 0.98
    for group, kept in zip(student.albert.encoder.albert_layer_groups, (0, 2, 4), strict=True):
        torch.testing.assert_close(group.albert_layers[0].attention.query.weight, teacher.bert.encoder.layer[kept].attention.self.query.weight)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)
    torch.testing.assert_close(student.albert.pooler.weight, teacher.bert.pooler.dense.weight)


def test_layers_of_another_shape_or_too_few_are_refused_before_any_worker_starts(tokenizer, tmp_path):
    build_model(ModelConfig(**{**SMALL.__dict__, "num_layers": 2}), tokenizer).save_pretrained(tmp_path / "teacher")
    student = Config().with_flat(tokenizer="t", init_embeddings=str(tmp_path / "teacher"), init_layers=True, num_layers=2,
                                 num_heads=2, d_model=32, d_ff=64, arch="albert", embedding_size=16, max_length=32)
    check_embeddings_source(student, len(tokenizer))
    for change in ({"d_ff": 128}, {"num_heads": 4}, {"num_layers": 3}, {"arch": "bert", "embedding_size": 0}, {"max_length": 64}):
        with pytest.raises(SamError, match=r"init_layers from .*teacher: a bert encoder of 2 layers \(d_model 32, d_ff 64, 2 heads, gelu, layer norm eps 1e-12, 32 positions\)"):
            check_embeddings_source(student.with_flat(**change), len(tokenizer))
    with pytest.raises(ConfigError, match="init_layers needs init_embeddings"):
        Config().with_flat(init_layers=True)
