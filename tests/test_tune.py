"""Hyperparameter search: the space, an end-to-end tiny search through ASHA to an exported model, and resume."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam.config import Config
from sam.prepare import prepare, preparation_key
from sam.resolve import resolve_config
from sam.tune import D_MODELS, NUM_HEADS, RESULTS_FILE, fitted_space, preparation_samples, search_space
from tests.helpers import ROOT, TINY_OPTIONS, own_ray_env, tiny_config, tweet_rows, write_jsonl


@pytest.fixture(scope="module")
def many_tweets(tmp_path_factory):
    """The fixture tweets 48 times over: enough steps per epoch (216) that a good lr is past chance after the first
    epoch while a useless one stays at it, which makes ASHA's decision below deterministic (at chance both, a tie
    stops nothing)."""
    directory = tmp_path_factory.mktemp("many_tweets")
    write_jsonl(directory / "train.jsonl", tweet_rows() * 48)
    return directory


def test_space_keys_are_config_knobs_and_every_shape_is_valid():
    for pretrained, distilling in ((False, False), (True, False), (False, True)):
        for _ in range(20):  # any sample is a valid config: a key that is not a knob, or a value it refuses, raises
            resolve_config(Config(), {k: domain.sample() for k, domain in search_space(pretrained, distilling).items()})
    assert set(search_space(pretrained=True)) == {"lr", "warmup_steps", "weight_decay", "batch_size"}
    for d_model in D_MODELS:
        for heads in NUM_HEADS:
            config = resolve_config(Config(), {"d_model": d_model, "num_heads": heads})
            assert config.model.d_model % config.model.num_heads == 0
            assert config.model.d_ff == 4 * d_model


def test_knobs_given_by_hand_stay_as_given():
    base = Config().with_flat(num_heads=8, d_ff=512)
    space = fitted_space(search_space(), base, fixed=("num_heads", "d_ff"))
    assert "num_heads" not in space and set(space["d_model"].categories) == {64, 128, 192, 256}
    assert resolve_config(base, {"d_model": 128}, fixed=("d_ff",)).model.d_ff == 512
    assert resolve_config(base, {"d_model": 128}).model.d_ff == 4 * 128  # not given by hand: follows the width
    three_heads = fitted_space(search_space(), Config().with_flat(num_heads=3, d_model=192), fixed=("num_heads",))
    assert set(three_heads["d_model"].categories) == {192}
    assert {"alpha", "temperature", "augment"} <= set(search_space(distilling=True))


def test_a_search_prepares_once_per_distinct_data_its_space_can_draw():
    from ray import tune

    assert preparation_samples(search_space()) == [{}]  # the default space changes no data: one preparation
    assert preparation_samples(search_space(distilling=True)) == [{"augment": 0}, {"augment": 1}, {"augment": 2}]
    both = preparation_samples({"vocab_size": tune.grid_search([1000, 2000]), "max_length": tune.choice([32, 64]), "lr": tune.uniform(0, 1)})
    assert len(both) == 4 and {"vocab_size": 2000, "max_length": 32} in both
    assert preparation_samples({"max_length": tune.randint(16, 64)}) is None  # drawn by each trial: they prepare their own
    base = Config()
    trials = [resolve_config(base, {k: domain.sample() for k, domain in search_space().items()}) for _ in range(5)]
    assert {preparation_key(trial) for trial in trials} == {preparation_key(base)}
    assert preparation_key(base.with_flat(vocab_size=2000)) != preparation_key(base)


@pytest.mark.slow
def test_a_reused_search_name_is_refused_and_resume_keeps_its_settings(ray_session, many_tweets, tmp_path, capsys):
    from sam.cli import main
    from sam.tune import SearchSpec, _write_spec, experiment_path

    storage = str(tmp_path / "storage")
    _write_spec(experiment_path(storage, "taken"), SearchSpec(base=tiny_config(many_tweets).to_dict(), num_samples=2))
    assert main(["tune", "--storage", storage, "--name", "taken", "--data", str(many_tweets)]) == 2
    assert "search 'taken' exists" in capsys.readouterr().err
    assert main(["tune", "--storage", storage, "--name", "taken", "--resume", "--lr", "1e-7"]) == 2
    assert "lr: 0.003 -> 1e-07" in capsys.readouterr().err
    assert main(["tune", "--storage", storage, "--name", "none", "--resume"]) == 2
    assert "no search 'none'" in capsys.readouterr().err


def test_sam_tune_and_tune_search_py_are_one_command():
    helps = [subprocess.run(command + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
             for command in ([sys.executable, "tune/search.py"], [sys.executable, "-m", "sam.cli", "tune"])]
    assert helps[0] == helps[1]
    for flag in ("--bf16", "--num-workers", "--gpus-per-worker", "--gpus-per-trial", "--epochs", "--num-samples", "--output"):
        assert flag in helps[0]


def test_search_flags_reach_the_trials_config():
    from sam.cli import build_parser, search_config

    args = build_parser().parse_args(["tune", "--gpus-per-trial", "0.5", "--num-workers", "2", "--bf16", "false", "--lr", "1e-3"])
    config = search_config(args)
    assert (config.scale.use_gpu, config.scale.gpus_per_worker, config.scale.bf16, config.train.lr) == (True, 0.25, False, 1e-3)
    assert search_config(build_parser().parse_args(["tune"])) == Config()


@pytest.mark.slow
def test_search_stops_weak_trials_and_exports_the_best(remove_new_placement_groups, many_tweets, tmp_path, monkeypatch, tracking):
    from mlflow import MlflowClient
    from ray import tune
    from transformers import AutoModelForSequenceClassification

    from sam.predict import Predictor
    from sam.tracking import DECISION_TAG, record_decisions, trial_logger
    from sam.tune import export_best, is_complete, run_search, leaderboard_rows

    import sam.tune

    # The data given relative to the caller's directory, as users type it: trials run in directories of their own.
    monkeypatch.chdir(many_tweets.parent)
    preparations = []  # on this process, the search's driver: trials run elsewhere and would prepare in their own
    monkeypatch.setattr(sam.tune, "prepare", lambda *args: preparations.append(args) or prepare(*args))
    base = tiny_config(Path(many_tweets.name)).with_flat(epochs=3, patience=10)
    # One good lr first, then a useless one, one trial at a time: the first trial sets ASHA's bar at epoch 1 and
    # the second falls below it, whatever the timing (grace 1, reduction factor 2, max 3 epochs).
    results, spec = run_search(base, str(tmp_path / "storage"), "tiny", num_samples=1, grace_period=1,
                               reduction_factor=2, max_concurrent=1,
                               space={"lr": tune.grid_search([3e-3, 1e-7])},
                               callbacks=[trial_logger(tracking, parent := tracking.start("tiny", {}, {}))])
    assert is_complete(results, spec)
    assert len(preparations) == 1 and spec.preparations == [{}]  # two trials, one preparation
    rows = leaderboard_rows(results, spec)
    record_decisions(tracking, parent, rows)
    export = tmp_path / "best"
    metrics = export_best(rows, export, str(tmp_path / "storage"), "tiny")

    saved = json.loads((export / RESULTS_FILE).read_text())
    assert len(saved) == 2 and all(row["status"] == "TERMINATED" for row in saved)
    assert {"config", "val_accuracy", "epochs", "status", "stopped_early"} <= set(saved[0])
    by_lr = sorted(saved, key=lambda row: -row["config"]["lr"])
    assert by_lr[0]["epochs"] == 3 and not by_lr[0]["stopped_early"]
    assert by_lr[1]["stopped_by"] == "asha" and by_lr[1]["epochs"] < 3
    assert metrics["trial_id"] == by_lr[0]["trial_id"] == saved[0]["trial_id"]  # the best is exported

    assert (export / "learning_curves.png").stat().st_size > 0
    model = AutoModelForSequenceClassification.from_pretrained(export)
    assert model.config.num_labels == 3
    predictions = Predictor(export).predict(["I love this", "I hate this"])
    assert {p["sentiment"] for p in predictions} <= {"Negative", "Neutral", "Positive"}
    assert list((tmp_path / "storage" / "tiny").glob("run_trial_*/events.out.tfevents.*"))  # TensorBoard logs

    # MLflow: the search's run has a child run per trial, its knobs, every epoch, and how it ended.
    client = MlflowClient(tracking.uri)
    children = client.search_runs([tracking.experiment_id()], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    by_trial = {next(row for row in saved if run.data.tags["trial_name"].endswith(row["trial_id"]))["trial_id"]: run for run in children}
    assert len(children) == 2 and len(by_trial) == 2
    for row in saved:
        run = by_trial[row["trial_id"]]
        assert float(run.data.params["lr"]) == row["config"]["lr"]
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == row["epochs"]
        ended = "stopped by ASHA" if row["stopped_by"] == "asha" else "finished"
        assert run.data.tags[DECISION_TAG] == f"{ended} at epoch {row['epochs']}"
    assert [a.path for a in client.list_artifacts(parent, "leaderboard")] == ["leaderboard/leaderboard.json"]


def _finished_trials(experiment: Path) -> dict[str, int]:
    """Trial id -> lines in its result.json, for the trials Tune's saved state records as finished."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        trials = [json.loads(trial[0]) for trial in json.loads(states[-1].read_text())["trial_data"]]
    except (json.JSONDecodeError, KeyError):  # caught mid-write
        return {}
    finished = {}
    for trial in trials:
        if trial["status"] == "TERMINATED":
            result_file = next(experiment.glob(f"run_trial_{trial['trial_id']}_*/result.json"))
            finished[trial["trial_id"]] = len(result_file.read_text().splitlines())
    return finished


@pytest.mark.slow
@pytest.mark.reliability
def test_killed_search_resumes_without_rerunning_finished_trials(many_tweets, tmp_path):
    storage, export = tmp_path / "storage", tmp_path / "best"
    command = [sys.executable, str(ROOT / "tune" / "search.py"), "--storage", str(storage), "--name", "resumable",
               "--output", str(export)]
    # Its own local Ray (with the dashboard, which Train's placement-group cleaner needs), started from an
    # environment without the RAY_* variables this session's in-process Ray set; Tune saves its state every
    # second so the test sees a finished trial before the search ends.
    env = own_ray_env(HF_HUB_OFFLINE="1", TUNE_GLOBAL_CHECKPOINT_S="1")
    env.pop("PYTHONBREAKPOINT", None)
    first = subprocess.Popen(
        command + ["--data", str(many_tweets), "--num-samples", "2", "--epochs", "1", "--max-concurrent", "1",
                   *TINY_OPTIONS],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (finished := _finished_trials(storage / "resumable")) and first.poll() is None:
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(1)
        first.kill()  # SIGKILL: no chance to save anything; the resume has only what Tune saved as it went
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert not export.exists()  # an interrupted search exports nothing
    finished = _finished_trials(storage / "resumable")  # what the saved state says was done when it stopped

    try:
        resumed = subprocess.run(command + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as timeout:
        stderr = timeout.stderr.decode(errors="replace") if isinstance(timeout.stderr, bytes) else timeout.stderr or ""
        pytest.fail(f"the resumed search did not finish in 300 s; its stderr ends:\n{stderr[-3000:]}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    saved = json.loads((export / RESULTS_FILE).read_text())
    assert len(saved) == 2 and all(row["status"] == "TERMINATED" for row in saved)
    # A rerun trial would have appended results to its result.json; the finished ones have none added.
    for trial_id, lines in finished.items():
        result_file = next((storage / "resumable").glob(f"run_trial_{trial_id}_*/result.json"))
        assert len(result_file.read_text().splitlines()) == lines
    assert (export / "config.json").is_file() and (export / "learning_curves.png").is_file()
