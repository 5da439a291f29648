import argparse
import json

import pytest

from sam.config import CONFIG_FILE, START_KNOBS, Config, ConfigError, add_config_arguments, given_knobs
from sam.resolve import resolve_config
from tests.helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures"


def test_round_trip_through_dict_and_directory(tmp_path):
    config = Config().with_flat(lr=1e-3, num_layers=6, source="x.jsonl")
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
    args = parser.parse_args(["--lr", "2e-4", "--num-layers", "6", "--arch", "bert", "--limit-train", "100"])
    config = resolve_config(given_knobs(args))
    assert (config.train.lr, config.model.num_layers, config.model.arch, config.data.limit_train) == (2e-4, 6, "bert", 100)
    assert resolve_config(given_knobs(parser.parse_args([]))) == Config()
    assert resolve_config(given_knobs(parser.parse_args(["--use-gpu"]))).scale.use_gpu is True
    with pytest.raises(ConfigError, match=r"^train\.lr: Input should be a valid number.*\(got 'fast'\)$"):
        resolve_config(given_knobs(parser.parse_args(["--lr", "fast"])))
    with pytest.raises(SystemExit):  # a choice the config allows none of is argparse's usage error
        parser.parse_args(["--pooling", "max"])


def test_local_paths_become_absolute_and_hub_names_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tweets").mkdir()
    config = Config().with_flat(source="tweets", tokenizer="bert-base-cased").with_absolute_paths()
    assert config.data.source == str(tmp_path / "tweets")
    assert config.start.tokenizer == "bert-base-cased" and config.start.init is None


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
    config = Config().with_flat(source="shards/*.jsonl.gz", init="s3://bucket/encoder").with_absolute_paths()
    assert config.data.source == str(tmp_path / "shards/*.jsonl.gz") and config.start.init == "s3://bucket/encoder"


@pytest.mark.parametrize("name, arch", [("layered_student", "albert"), ("modernbert", "modernbert"), ("minilm_init", "bert")])
def test_a_config_saved_before_arch_and_the_start_section_still_loads(name, arch, tmp_path):
    """sam_config.json as the code before `arch`, `start` and `source` wrote it (tests/fixtures, written at b80d828)."""
    saved = json.loads((FIXTURES / f"{name}.sam_config.json").read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    config = Config.load(tmp_path)
    assert config.model.arch == arch and config.data.source == saved["data"]["data"]
    assert {knob: getattr(config.start, knob) for knob in START_KNOBS} == {knob: saved["data"][knob] for knob in START_KNOBS}
    assert (config.model.embedding_size, config.model.pooling) == (saved["model"]["embedding_size"], saved["model"]["pooling"])
    config.save(tmp_path)
    assert Config.load(tmp_path) == config and "norm_first" not in json.loads((tmp_path / CONFIG_FILE).read_text())["model"]


def test_the_family_is_one_knob_and_each_refuses_what_it_cannot_build():
    assert Config().model.arch == "bert"
    with pytest.raises(ConfigError, match="embedding_size 16 needs arch albert"):
        Config().with_flat(embedding_size=16)
    with pytest.raises(ConfigError, match="arch albert needs an embedding_size"):
        Config().with_flat(arch="albert")
    assert Config().with_flat(arch="albert", embedding_size=16).model.embedding_size == 16


def test_hidden_states_are_learned_only_by_a_layered_student_of_a_teacher():
    with pytest.raises(ConfigError, match="hidden_weight 1.0 needs a teacher and a layered student"):
        Config().with_flat(hidden_weight=1.0)
    with pytest.raises(ConfigError, match="needs a teacher and a layered student"):
        Config().with_flat(teacher="t", student="scratch", hidden_weight=1.0)
    assert Config().with_flat(teacher="t", hidden_weight=1.0).distill.hidden_weight == 1.0


def test_folds_and_an_ensemble_of_teachers_are_checked_where_they_are_given():
    assert Config().with_flat(teacher="a", ensemble="b, c").distill.teachers == ["a", "b", "c"]
    for bad in ({"folds": 1}, {"folds": 2, "fold": 2}, {"fold": 1}):
        with pytest.raises(ValueError, match="give folds of at least 2 and a fold from 0 to folds - 1"):
            Config().with_flat(**bad)
    with pytest.raises(ValueError, match="ensemble and cross_fit need a teacher"):
        Config().with_flat(ensemble="b")
    with pytest.raises(ValueError, match="cross_fit needs an ensemble"):
        Config().with_flat(teacher="a", cross_fit=True)
    with pytest.raises(ValueError, match="a student learns from every training row"):
        Config().with_flat(teacher="a", folds=2)
    with pytest.raises(ValueError, match="cannot be taught out of fold"):
        Config().with_flat(teacher="a", ensemble="b", cross_fit=True, hidden_weight=1.0)
