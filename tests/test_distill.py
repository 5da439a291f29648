"""Distillation: seeded label-keeping augmentation, a transfer set scored once by a teacher actor pool, the
loss at its two ends, and a student that is a standard model directory."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sam.cli import main
from sam.config import Config
from sam.augment import MASK, _with_augmented_copies
from sam.learner import distillation_loss
from sam.scoring import SCORER
from tests.helpers import TINY_OPTIONS, tiny_config, tweet_rows, write_jsonl

TINY = [*TINY_OPTIONS, "--epochs", "1", "--embedding-size", "16"]


WORDS = ["apple", "banana", "cherry"]


def test_augmentation_is_seeded_and_keeps_labels():
    batch = pd.DataFrame(tweet_rows())
    once = _with_augmented_copies(batch, copies=3, seed=7, words=WORDS)
    assert once.equals(_with_augmented_copies(batch, copies=3, seed=7, words=WORDS))
    assert len(once) == 4 * len(batch)
    assert once["label"].tolist() == [label for label in batch["label"] for _ in range(4)]
    assert once["text"].tolist()[::4] == batch["text"].tolist()  # each original, then its copies
    copies = [t for i, t in enumerate(once["text"]) if i % 4]
    assert any(MASK in t for t in copies) and any(w in t for t in copies for w in WORDS)
    assert sum(t not in set(batch["text"]) for t in copies) > len(copies) / 2
    # A row's copies depend on its text and the seed alone, not on its neighbours in the block.
    for row in (0, 17, 44):
        alone = _with_augmented_copies(batch.iloc[[row]], copies=3, seed=7, words=WORDS)
        assert alone["text"].tolist() == once["text"].tolist()[4 * row : 4 * row + 4]
    assert not once.equals(_with_augmented_copies(batch, copies=3, seed=8, words=WORDS))


def test_loss_is_cross_entropy_at_alpha_0_and_the_softened_kl_at_alpha_1():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    cross_entropy = torch.nn.CrossEntropyLoss()
    assert torch.isclose(distillation_loss(student, teacher, labels, cross_entropy, 0.0, 2.0), cross_entropy(student, labels))
    p, q = torch.softmax(teacher / 2, -1), torch.softmax(student / 2, -1)
    by_hand = 4 * (p * (p.log() - q.log())).sum(-1).mean()  # T^2 * KL(teacher || student) per row, averaged
    assert torch.isclose(distillation_loss(student, teacher, labels, cross_entropy, 1.0, 2.0), by_hand)


def test_the_student_may_not_replace_its_teacher(tiny_model_dir, tweets_dir, capsys):
    assert main(["distill", "--teacher", str(tiny_model_dir), "--data", str(tweets_dir), "--output", str(tiny_model_dir)]) == 2
    assert capsys.readouterr().err.strip() == f"sam distill: error: --output {tiny_model_dir} is the teacher: the student would replace it"


def test_teacher_from_another_split_is_refused(tiny_model_dir, tweets_dir):
    from sam.distill import check_teacher_split

    config = tiny_config(tweets_dir).with_flat(teacher=str(tiny_model_dir))
    check_teacher_split(config)
    with pytest.raises(ValueError, match="never trained on this run's validation rows"):
        check_teacher_split(config.with_flat(seed=1))
    with pytest.raises(ValueError, match="holdout_fraction"):  # the teacher trained on the rows the two are compared on
        check_teacher_split(config.with_flat(holdout_fraction=0.1))


def test_a_layered_student_takes_its_teachers_tokenizer_and_shape_and_a_scratch_one_its_own(tiny_model_dir, tweets_dir):
    from sam.resolve import resolve_config

    config = Config().with_flat(source=str(tweets_dir), teacher=str(tiny_model_dir), num_layers=1, arch="albert", embedding_size=16)
    layered = resolve_config(config)
    teacher = Config.load(tiny_model_dir).model
    assert (layered.start.tokenizer, layered.start.init_embeddings, layered.start.init_layers) == (str(tiny_model_dir),) * 2 + (True,)
    assert (layered.model.d_model, layered.model.num_heads, layered.model.d_ff) == (teacher.d_model, teacher.num_heads, teacher.d_ff)
    assert (layered.model.num_layers, layered.model.embedding_size) == (1, 16)  # as configured
    scratch = config.with_flat(student="scratch")
    assert resolve_config(scratch) == scratch and resolve_config(Config()) == Config()


@pytest.mark.slow
def test_distill_scores_the_transfer_set_once_and_exports_a_standard_directory(
        ray_session, tiny_model_dir, tweets_dir, tmp_path, monkeypatch, capsys):
    import ray

    from sam import distill

    transfer, output = tmp_path / "transfer", tmp_path / "student"
    command = ["distill", "--teacher", str(tiny_model_dir), "--data", str(tweets_dir), "--augment", "2",
               "--transfer", str(transfer), "--output", str(output), "--storage", str(tmp_path / "runs"),
               "--actors", "2", *TINY]
    assert main(command) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scored = ray.data.read_parquet(str(transfer), file_extensions=["parquet"]).to_pandas()
    assert len(scored) == metrics["n_train"] == 3 * 72  # 72 training rows, each with 2 augmented copies
    assert np.stack(scored["teacher_logits"]).shape == (len(scored), 3)
    teacher_scores = np.stack(scored["teacher_logits"][:2])
    assert not np.allclose(teacher_scores[0], teacher_scores[1])
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.num_labels == 3 and Config.load(output).distill.teacher == str(tiny_model_dir)
    # By default the student is the teacher with layers left out: its tokenizer, in a factorized encoder.
    assert model.config.model_type == "albert" and model.config.embedding_size == 16
    assert AutoTokenizer.from_pretrained(output).get_vocab() == AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()

    monkeypatch.setattr(distill, "score_rows", lambda *args, **kwargs: pytest.fail("the transfer set was scored again"))
    assert main(command) == 0  # reused: no scoring
    capsys.readouterr()
    assert main([*command, "--augment", "1"]) == 2  # the same directory, another set: refused, not silently reused
    assert "a transfer set for another augment" in capsys.readouterr().err


@pytest.mark.slow
def test_a_transfer_set_from_one_file_keeps_every_teacher_replica_busy(ray_session, tiny_model_dir, tmp_path, monkeypatch):
    import ray

    import sam.scoring
    from sam.distill import prepare_distilled

    monkeypatch.setattr(sam.scoring, "SCORING_BLOCK_BYTES", 4 << 10)  # blocks of about 20 tweets, as 1 MiB holds 5,000
    rows = [{**row, "text": f"{row['text']} #{i}"} for i, row in enumerate(tweet_rows() * 4)]
    write_jsonl(tmp_path / "train.jsonl", rows)  # one file: one block as read
    config = tiny_config(tmp_path).with_flat(teacher=str(tiny_model_dir), augment=2)
    prepared = prepare_distilled(config, transfer=str(tmp_path / "transfer"), actors=2)
    per_replica = ray.data.read_parquet(str(tmp_path / "transfer"), file_extensions=["parquet"]).to_pandas()[SCORER].value_counts()
    assert len(per_replica) == 2 and per_replica.sum() == prepared.n_train
