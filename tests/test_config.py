import argparse

import pytest

from sam.config import Config, ConfigError, add_config_arguments, config_from_args


def test_round_trip_through_dict_and_directory(tmp_path):
    config = Config().with_flat(lr=1e-3, num_layers=6, data="x.jsonl")
    assert Config.from_dict(config.to_dict()) == config
    config.save(tmp_path)
    assert Config.load(tmp_path) == config


def test_unknown_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        Config().with_flat(learning_rate=1e-3)
    with pytest.raises(ConfigError, match=r"^unknown setting model\.layers$"):
        Config.from_dict({"model": {"layers": 4}})


def test_cli_options_come_from_the_config_models():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--lr", "2e-4", "--num-layers", "6", "--norm-first", "false", "--limit-train", "100"])
    config = config_from_args(args)
    assert (config.train.lr, config.model.num_layers, config.model.norm_first, config.data.limit_train) == (2e-4, 6, False, 100)
    assert config_from_args(parser.parse_args([])) == Config()
    assert config_from_args(parser.parse_args(["--use-gpu"])).scale.use_gpu is True
    with pytest.raises(ConfigError, match=r"^train\.lr: Input should be a valid number.*\(got 'fast'\)$"):
        config_from_args(parser.parse_args(["--lr", "fast"]))
    with pytest.raises(SystemExit):  # a choice the config allows none of is argparse's usage error
        parser.parse_args(["--pooling", "max"])


def test_local_paths_become_absolute_and_hub_names_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tweets").mkdir()
    config = Config().with_flat(data="tweets", tokenizer="bert-base-cased").with_absolute_paths()
    assert config.data.data == str(tmp_path / "tweets")
    assert config.data.tokenizer == "bert-base-cased" and config.data.init is None


def test_backend_is_gloo_where_nccl_cannot_run():
    def backend(**scale):
        return Config().with_flat(**scale).scale.torch_backend

    assert backend() == "gloo"  # CPU
    assert backend(use_gpu=True) == "nccl"
    assert backend(use_gpu=True, num_workers=4) == "nccl"  # a GPU each
    assert backend(use_gpu=True, num_workers=2, gpus_per_worker=0.5) == "gloo"  # NCCL refuses two ranks on one GPU
    assert backend(use_gpu=True, gpus_per_worker=0.25) == "nccl"  # one worker: no peer to share with
    assert backend(use_gpu=True, num_workers=2, gpus_per_worker=0.5, backend="nccl") == "nccl"  # the user's choice wins
    with pytest.raises(ConfigError, match="scale.backend: Input should be 'auto', 'nccl' or 'gloo' \\(got 'mpi'\\)"):
        Config().with_flat(backend="mpi")
    with pytest.raises(ConfigError, match="scale.gpus_per_worker: Input should be greater than 0"):
        Config().with_flat(gpus_per_worker=0)


def test_init_takes_the_fine_tuning_recipe_unless_a_knob_is_given():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    tuned = config_from_args(parser.parse_args(["--init", "some/encoder", "--lr", "3e-5"]))
    assert (tuned.train.lr, tuned.train.warmup_steps, tuned.train.epochs, tuned.train.batch_size) == (3e-5, 100, 2, 32)
    assert not tuned.train.class_weights and tuned.train.label_smoothing == 0.0
    assert config_from_args(parser.parse_args([])).train.lr == 5e-4  # from scratch: the defaults
    assert "with --init: 5e-05" in parser.format_help()
    # bf16 autocast only for pretrained encoders, whose matmuls are big enough to gain from it
    assert config_from_args(parser.parse_args([])).scale.bf16 is False and tuned.scale.bf16 is True


def test_a_teacher_takes_the_layered_students_recipe_unless_scratch_or_a_knob_is_given():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, sections=("distill", "model", "train", "data"))
    layered = config_from_args(parser.parse_args(["--teacher", "models/minilm", "--num-layers", "3"]))
    assert (layered.distill.student, layered.model.num_layers, layered.model.embedding_size, layered.train.lr) == ("layers", 3, 128, 1e-4)
    scratch = config_from_args(parser.parse_args(["--teacher", "models/minilm", "--student", "scratch"]))
    assert scratch == Config().with_flat(teacher="models/minilm", student="scratch")  # the from-scratch defaults
    assert "a layered student's: 0.0001" in " ".join(parser.format_help().split())


@pytest.mark.parametrize("knob, value", [("val_fraction", 1.0), ("val_fraction", 0.0), ("batch_size", 0), ("epochs", 0),
                                         ("seed", -1), ("num_workers", 0), ("limit_train", 1), ("alpha", 1.5),
                                         ("num_heads", 3), ("warmup_share", 0.0)])
def test_settings_that_cannot_train_are_refused_where_the_config_is_built(knob, value):
    with pytest.raises(ConfigError, match=knob):
        Config().with_flat(**{knob: value})


def test_validation_and_held_out_parts_must_leave_training_rows():
    with pytest.raises(ConfigError, match="val_fraction 0.5 and holdout_fraction 0.5 leave no training rows"):
        Config().with_flat(val_fraction=0.5, holdout_fraction=0.5)
    assert Config().data.holdout_fraction == 0  # a model directory saved before the setting existed held nothing out


def test_a_saved_config_with_a_bad_value_names_it(tmp_path):
    (tmp_path / "sam_config.json").write_text('{"model": {"dropout": 1.5}}')
    with pytest.raises(ConfigError, match=r"model\.dropout: Input should be less than 1 \(got 1\.5\)"):
        Config.load(tmp_path)


def test_relative_paths_and_globs_become_absolute_for_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config().with_flat(data="shards/*.jsonl.gz", init="s3://bucket/encoder").with_absolute_paths()
    assert config.data.data == str(tmp_path / "shards/*.jsonl.gz") and config.data.init == "s3://bucket/encoder"
