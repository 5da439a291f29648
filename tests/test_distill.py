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
from tests.helpers import TINY_OPTIONS, encoder_dir, tiny_config, tweet_rows, write_jsonl

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


def test_augmented_copies_carry_the_fold_of_their_original():
    from sam.data import fold_of, split_bins

    batch = pd.DataFrame(tweet_rows())
    rows = _with_augmented_copies(batch, copies=2, seed=7, words=WORDS, folds=3)
    assert rows["fold"].tolist() == [fold for fold in fold_of(split_bins(batch["text"], 7), 3) for _ in range(3)]
    assert set(rows["fold"]) == {0, 1, 2} and "fold" not in _with_augmented_copies(batch, 2, 7, WORDS)


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
    assert capsys.readouterr().err.strip() == f"sam distill: error: --output {tiny_model_dir} is a teacher: the student would replace it"
    assert main(["distill", "--teacher", "elsewhere", "--student", "scratch", "--ensemble", str(tiny_model_dir), "--data", str(tweets_dir),
                 "--output", str(tiny_model_dir)]) == 2  # any teacher of an ensemble
    assert capsys.readouterr().err.strip() == f"sam distill: error: --output {tiny_model_dir} is a teacher: the student would replace it"


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
    # The same set teaches hidden states too: with a heavy hidden-state loss the student's layers end nearer the
    # teacher layers they started as than without it, even given a tenfold lr and three times the steps to drift.
    assert main([*command, "--hidden-weight", "1000", "--lr", "1e-3", "--epochs", "3", "--output", str(tmp_path / "hidden")]) == 0
    capsys.readouterr()
    assert Config.load(tmp_path / "hidden").distill.hidden_weight == 1000
    assert hidden_distance(tmp_path / "hidden", tiny_model_dir) < hidden_distance(output, tiny_model_dir)
    assert main([*command, "--augment", "1"]) == 2  # the same directory, another set: refused, not silently reused
    assert "a transfer set for another augment" in capsys.readouterr().err


def teachers(tweets_dir, tmp_path, *knobs: dict) -> list[str]:
    """Small untrained teachers, one per knobs (their saved config: the split, and a fold), each its own weights."""
    made = []
    for number, flat in enumerate(knobs):
        torch.manual_seed(number)
        made.append(str(encoder_dir(tmp_path / f"teacher{number}", tiny_config(tweets_dir, **flat))))
    return made


def scored_transfer(config, tmp_path) -> pd.DataFrame:
    from sam.data import train_and_validation
    from sam.distill import build_transfer_set

    split = train_and_validation(config)
    return build_transfer_set(config, split, str(tmp_path / "transfer"), actors=1).rows.to_pandas()


def test_an_ensembles_transfer_set_holds_the_mean_of_its_teachers_logits(ray_session, tweets_dir, tmp_path):
    from sam.predict import Predictor

    first, second = teachers(tweets_dir, tmp_path, {}, {})
    scored = scored_transfer(tiny_config(tweets_dir, teacher=first, ensemble=second, augment=1), tmp_path)
    own = [Predictor(teacher).logits(scored["text"].tolist()) for teacher in (first, second)]
    assert not np.allclose(own[0], own[1], atol=1e-3)  # two teachers, not one twice
    assert np.allclose(np.stack(scored["teacher_logits"]), (own[0] + own[1]) / 2, atol=1e-5)


def test_cross_fitted_teachers_score_only_the_rows_they_never_trained_on(ray_session, tweets_dir, tmp_path):
    from sam.data import train_and_validation
    from sam.distill import check_teacher_split
    from sam.predict import Predictor

    fold1, fold0 = teachers(tweets_dir, tmp_path, {"folds": 2, "fold": 1}, {"folds": 2, "fold": 0})
    config = tiny_config(tweets_dir, teacher=fold1, ensemble=fold0, cross_fit=True, augment=0)
    assert check_teacher_split(config) == [fold0, fold1]  # in fold order, whatever order they were given in
    scored = scored_transfer(config, tmp_path)
    training = train_and_validation(config).train.to_pandas()["text"]
    assert sorted(scored["text"]) == sorted(training)  # every training row scored, once
    for fold, teacher in enumerate((fold0, fold1)):
        mine = scored[scored["fold"] == fold]
        learned = set(train_and_validation(Config.load(teacher)).train.to_pandas()["text"])
        assert len(mine) and not set(mine["text"]) & learned
        assert np.allclose(np.stack(mine["teacher_logits"]), Predictor(teacher).logits(mine["text"].tolist()), atol=1e-5)
    # Not one teacher per fold: refused, naming the teacher.
    other_folds, same_fold = teachers(tweets_dir, tmp_path / "more", {"folds": 3, "fold": 0}, {"folds": 2, "fold": 1})
    with pytest.raises(ValueError, match=f"teacher {other_folds} was trained with folds 3"):
        check_teacher_split(config.with_flat(ensemble=other_folds))
    with pytest.raises(ValueError, match=r"leave out folds \[1, 1\]"):
        check_teacher_split(config.with_flat(ensemble=same_fold))


def hidden_distance(student_dir, teacher_dir) -> float:
    """The hidden-state loss of a student against its teacher over the fixture tweets."""
    from sam.learner import hidden_state_loss

    tokens = AutoTokenizer.from_pretrained(teacher_dir)([row["text"] for row in tweet_rows()], padding=True, return_tensors="pt")
    states = lambda directory: AutoModelForSequenceClassification.from_pretrained(directory).eval()(  # noqa: E731
        **tokens, output_hidden_states=True).hidden_states
    with torch.no_grad():
        return hidden_state_loss(states(student_dir), states(teacher_dir), tokens["attention_mask"]).item()


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
