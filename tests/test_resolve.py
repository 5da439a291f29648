"""From what the user gave to the config that trains: the recipes, a Tune sample, a teacher's and a pretrained
encoder's shape, in one documented order."""

import argparse

import pytest

from sam.config import Config, add_config_arguments, given_knobs
from sam.resolve import resolve_config
from tests.helpers import encoder_dir, tiny_config


def parsed(*flags, sections=("model", "start", "train", "data", "scale")) -> dict:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, sections=sections)
    return given_knobs(parser.parse_args(list(flags)))


def test_init_takes_the_fine_tuning_recipe_unless_a_knob_is_given_and_the_encoders_shape(tmp_path):
    encoder = encoder_dir(tmp_path / "encoder")  # 1 layer of 32, 2 heads
    tuned = resolve_config(parsed("--init", str(encoder), "--lr", "3e-5", "--num-layers", "4"))
    assert (tuned.train.lr, tuned.train.warmup_steps, tuned.train.epochs, tuned.train.batch_size) == (3e-5, 100, 2, 32)
    assert not tuned.train.class_weights and tuned.train.label_smoothing == 0.0
    assert (tuned.model.arch, tuned.model.num_layers, tuned.model.d_model, tuned.model.num_heads) == ("bert", 1, 32, 2)
    assert tuned.model.max_length == Config().model.max_length  # the run's, not the encoder's
    assert resolve_config(parsed()).train.lr == 5e-4  # from scratch: the defaults
    # bf16 autocast only for pretrained encoders, whose matmuls are big enough to gain from it
    assert resolve_config(parsed()).scale.bf16 is False and tuned.scale.bf16 is True
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert "with --init: 5e-05" in parser.format_help()


def test_a_teacher_takes_the_layered_students_recipe_unless_scratch_or_a_knob_is_given(tmp_path):
    teacher = str(encoder_dir(tmp_path / "teacher", tiny_config(tmp_path)))
    sections = ("distill", "model", "start", "train", "data")
    layered = resolve_config(parsed("--teacher", teacher, "--num-layers", "3", sections=sections))
    assert (layered.distill.student, layered.model.num_layers, layered.model.embedding_size, layered.train.lr) == ("layers", 3, 128, 1e-4)
    assert (layered.model.arch, layered.start.tokenizer, layered.start.init_embeddings, layered.start.init_layers) == ("albert", teacher, teacher, True)
    scratch = resolve_config(parsed("--teacher", teacher, "--student", "scratch", sections=sections))
    assert scratch == Config().with_flat(teacher=teacher, student="scratch")  # the from-scratch defaults
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, sections=sections)
    assert "a layered student's: 0.0001" in " ".join(parser.format_help().split())


def test_a_search_resolves_its_base_once_and_each_trial_that_base_with_its_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tweets.jsonl").write_text("")
    base = resolve_config({"source": "tweets.jsonl", "d_ff": "512"}, search=True, gpus_per_trial=0.5)
    assert base.data.source == str(tmp_path / "tweets.jsonl")  # trials run in directories of their own
    assert (base.scale.torch_threads, base.scale.use_gpu, base.scale.gpus_per_worker) == (1, True, 0.5)
    assert resolve_config(base, search=True) == base
    assert resolve_config(base, {"d_model": 128}, fixed=("d_ff",)).model.d_ff == 512
    assert resolve_config(base, {"d_model": 128}).model.d_ff == 4 * 128  # not given by hand: follows the width


def test_the_teachers_shape_wins_over_a_sample(tmp_path):
    teacher = str(encoder_dir(tmp_path / "teacher", tiny_config(tmp_path)))
    base = resolve_config({"teacher": teacher, "source": str(tmp_path)})
    trial = resolve_config(base, {"d_model": 128, "lr": 1e-3})
    assert (trial.model.d_model, trial.model.d_ff, trial.train.lr) == (32, 64, 1e-3)


def test_a_teacher_that_is_not_bert_is_refused_naming_the_scratch_student(tmp_path):
    saved = tiny_config(tmp_path).with_flat(arch="modernbert")
    teacher = encoder_dir(tmp_path / "pre_norm", saved)
    with pytest.raises(ValueError, match=f"teacher {teacher}: a modernbert encoder, whose layers cannot start .*--student scratch"):
        resolve_config({"teacher": str(teacher)})
